"""Store-wide settings that admins change at run time, each declared once with its help."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from storage.models import Setting

MAX_GUIDELINES_CHARS = 100_000


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
            "labels_per_comparison", "1", "how many annotators label each comparison (overlap, 1 to 10)", int
        ),
        SettingSpec(
            "lease_seconds", "900", "how long a comparison handed to an annotator stays reserved for them", int
        ),
        SettingSpec(
            "annotators_may_inspect", "0",
            "1 lets annotators use the Inspect tab on text they paste, with registered models (never stored "
            "comparisons or diagnostics, which would show the model's opinion of their own queue); 0 (default) does not",
            int,
        ),
        SettingSpec(
            "guidelines",
            "Pick the response that better answers the prompt: correct first, then helpful, then clear.\n\n"
            "* **Tie**: both are equally good.\n* **Both bad**: neither is acceptable.\n"
            "* **Skip**: you cannot judge this one.\n\nJudge the *answer*; the thinking is shown for context.",
            "labeling guidelines shown to annotators (Markdown)",
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
    if key == "labels_per_comparison" and not 1 <= typed <= 10:
        raise SettingError("labels_per_comparison must be between 1 and 10")
    if key == "lease_seconds" and not 10 <= typed <= 86_400:
        raise SettingError("lease_seconds must be between 10 and 86400")
    if key == "annotators_may_inspect" and typed not in (0, 1):
        raise SettingError("annotators_may_inspect must be 0 (no) or 1 (yes)")
    if key == "guidelines" and len(typed) > MAX_GUIDELINES_CHARS:
        raise SettingError(f"the guidelines are {len(typed):,} characters; the limit is {MAX_GUIDELINES_CHARS:,}")
    session.merge(Setting(key=key, value=str(typed)))
    session.flush()
