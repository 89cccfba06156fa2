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
            "loop_acquisition", "{}",
            "per dataset, which pair of a prompt's candidates the loop serves first (core.loop.acquisition): a JSON "
            "object of dataset name -> rule; a dataset not named serves every pair",
        ),
        SettingSpec(
            "loop_queue_encoder", "{}",
            "per dataset, the frozen encoder the loop's queue ranks with (core.loop.frozen_queue): a JSON object of "
            "dataset name -> {\"folder\": registered model or folder under the models folder, \"refit_every\": N}; "
            "a dataset not named ranks with its reward model",
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
    if key == "loop_acquisition" and not isinstance(_json_object(typed), dict):
        raise SettingError("loop_acquisition must be a JSON object of dataset name -> rule")
    if key == "loop_queue_encoder" and not isinstance(_json_object(typed), dict):
        raise SettingError("loop_queue_encoder must be a JSON object of dataset name -> {folder, refit_every}")
    if key == "competence_refit_every" and not 0 <= typed <= MAX_COMPETENCE_REFIT_EVERY:
        raise SettingError(f"refit every N labels needs N from 1 to {MAX_COMPETENCE_REFIT_EVERY:,} (0 turns it off), "
                           f"got {typed}")
    session.merge(Setting(key=key, value=str(typed)))
    session.flush()


def _json_object(text: str):  # noqa: ANN202
    import json

    try:
        return json.loads(text)
    except ValueError:
        return None


def acquisition_of(session: Session, dataset: str) -> str:
    """The dataset's acquisition rule (``loop_acquisition``), or "all"."""
    return _json_object(get_setting(session, "loop_acquisition")).get(dataset, "all")


def set_acquisition(session: Session, dataset: str, rule: str) -> None:
    """Set the dataset's acquisition rule ("all" removes it); the caller checks the rule's name."""
    import json

    rules = _json_object(get_setting(session, "loop_acquisition"))
    rules.pop(dataset, None)
    if rule != "all":
        rules[dataset] = rule
    set_setting(session, "loop_acquisition", json.dumps(rules, sort_keys=True))


def queue_encoders(session: Session) -> dict[str, dict]:
    """Per dataset with a queue encoder (``loop_queue_encoder``): {"folder": ..., "refit_every": N}."""
    return _json_object(get_setting(session, "loop_queue_encoder"))


def queue_encoder_of(session: Session, dataset: str) -> dict | None:
    """The dataset's queue encoder entry, or None (the queue ranks with its reward model)."""
    return queue_encoders(session).get(dataset)


def set_queue_encoder(session: Session, dataset: str, folder: str | None, refit_every: int | None) -> None:
    """Set the dataset's queue encoder; ``folder`` "" removes it, None keeps it; ``refit_every`` None keeps it.
    The caller checks the folder and the bound."""
    import json

    entries = queue_encoders(session)
    entry = dict(entries.get(dataset) or {})
    if folder is not None:
        entry["folder"] = folder
    if refit_every is not None:
        entry["refit_every"] = refit_every
    if not entry.get("folder"):
        entries.pop(dataset, None)
    else:
        entries[dataset] = {"folder": entry["folder"], "refit_every": int(entry.get("refit_every") or 0)}
    set_setting(session, "loop_queue_encoder", json.dumps(entries, sort_keys=True))
