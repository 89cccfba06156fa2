"""Store-wide settings that admins change at run time, each declared once with its help (overlap,
lease length and guidelines are per dataset: ``storage.datasets``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from storage.models import Setting

MAX_COMPETENCE_REFIT_EVERY = 1_000_000  # the background refit's "every N human labels"


@dataclass(frozen=True)
class SettingSpec:
    key: str
    default: str
    help: str
    kind: type = str


SETTINGS = {
    spec.key: spec
    for spec in (
        SettingSpec(
            "annotators_may_inspect", "0",
            "1 lets annotators use the Inspect tab on text they paste, with registered models (never stored "
            "comparisons or diagnostics, which would show the model's opinion of their own queue); 0 (default) does not",
            int,
        ),
        SettingSpec(
            "competence_refit_every", "0",
            "refit each dataset's annotator model (Dawid-Skene) in a background job after every N new human labels; "
            "0 (default) fits on demand only (Team tab)",
            int,
        ),
    )
}


class SettingError(ValueError):
    pass


def get_setting(session: Session, key: str):  # noqa: ANN201
    spec = SETTINGS[key]
    row = session.get(Setting, key)
    return spec.kind(row.value if row is not None else spec.default)


def set_setting(session: Session, key: str, value) -> None:  # noqa: ANN001
    if key not in SETTINGS:
        raise SettingError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}")
    spec = SETTINGS[key]
    try:
        typed = spec.kind(value)
    except (TypeError, ValueError):
        raise SettingError(f"setting {key!r} must be {spec.kind.__name__}: {spec.help}") from None
    if key == "annotators_may_inspect" and typed not in (0, 1):
        raise SettingError("annotators_may_inspect must be 0 (no) or 1 (yes)")
    if key == "competence_refit_every" and not 0 <= typed <= MAX_COMPETENCE_REFIT_EVERY:
        raise SettingError(f"refit every N labels needs N from 1 to {MAX_COMPETENCE_REFIT_EVERY:,} (0 turns it off), "
                           f"got {typed}")
    session.merge(Setting(key=key, value=str(typed)))
    session.flush()
