"""Which model a name means, for ``score``, ``eval`` and the Inspect tab, decided at once and offline.

A registered reference wins (``name@vN`` that version, a plain ``name`` its newest one: see
``storage.registry.find_model``); then an existing local folder; anything else is refused with the
registered names listed. The Hugging Face hub is never asked: a name it does not know made
transformers retry for ~50 s on a machine without network before failing, and a registry name that
was mistyped looked like a hub id. (Hub models: download them to a folder first.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.limits import MAX_NAMES_LISTED
from core.scoring.engine import ModelLoadError
from storage.engine import Store, default_db_url
from storage.registry import find_model, list_models, version_references



class UnknownModel(ModelLoadError):
    """A name that is neither a registered model nor a model folder; the message lists the registered names."""


def registry_store(db_url: str | None) -> Store | None:
    """The store whose registry ``score``/``eval`` look names up in: ``db_url``, else ``$REWARDLAB_DB``,
    else ``data/rewardlab.db`` only when that file exists (scoring a folder creates no store)."""
    url = db_url or default_db_url()
    if db_url is None and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    return Store(url)


def registered_references(store: Store | None) -> list[str]:
    """The names that each load one registered model, newest first."""
    if store is None:
        return []
    with store.read() as session:
        names = [model.name for model in list_models(session)]
    references = version_references(names)
    return [references[name] for name in names]


def recorded_max_length(config: dict | None) -> int | None:
    """The ``max_length`` a registry record's training config holds (None when it has none)."""
    value = (config or {}).get("max_length")
    return value if isinstance(value, int) and value > 0 else None


def trained_max_length(store: Store | None, name: str) -> int | None:
    """The ``max_length`` a registered model was trained with (its registry record), so scoring flags
    what training would have dropped; None for an unregistered folder or without a store."""
    if store is None:
        return None
    with store.read() as session:
        record = find_model(session, (name or "").strip())
    return recorded_max_length(record.config) if record is not None else None


def model_references(names: list[str]) -> dict[str, str]:
    """Stored name -> the name that loads that model alone (see ``storage.registry.version_references``)."""
    return version_references(names)


def model_folder_for(store: Store | None, name: str, *, local_folder: Callable[[str], Path | None]) -> str:
    """The folder to load for ``name``: the registered model it names, else ``local_folder(name)``.
    Raises ``UnknownModel`` (listing the registered names) without any network access."""
    name = (name or "").strip()
    if not name:
        raise UnknownModel("choose a registered model or give a model folder")
    if store is not None:
        with store.read() as session:
            record = find_model(session, name)
        if record is not None:
            return record.path
    folder = local_folder(name)
    if folder is not None:
        return str(folder)
    registered = registered_references(store)
    if store is None:
        known = "it is not a model folder, and no store was found to look registered names up in (pass --db URL)"
    elif not registered:
        known = f"it is neither a registered model nor a model folder, and no model is registered in {store.display_url}"
    else:
        shown = ", ".join(registered[:MAX_NAMES_LISTED]) + (", ..." if len(registered) > MAX_NAMES_LISTED else "")
        known = f"it is neither a registered model nor a model folder. Registered models: {shown}"
    raise UnknownModel(
        f"cannot load {name!r}: {known}. A plain name loads its newest version, name@vN an older one; "
        "a model on the Hugging Face hub must be downloaded to a folder first."
    )


def existing_folder(name: str) -> Path | None:
    """``name`` as a path when it is an existing folder (the command line's rule: any folder it can read)."""
    path = Path(name).expanduser()
    return path if path.is_dir() else None
