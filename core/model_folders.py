"""Where reward models live on disk, shared by training (which writes them) and scoring (which
loads them): ``models/`` beside the store, or ``$REWARDLAB_MODELS_ROOT``. A model a user names in
the app must be registered or lie under this folder: nobody loads an arbitrary server path."""

from __future__ import annotations

import os
from pathlib import Path

from storage.engine import Store

MODELS_ROOT_ENV = "REWARDLAB_MODELS_ROOT"


class UnsafeModelName(ValueError):
    pass


def models_folder(store: Store) -> Path:
    """The models folder (resolved, created)."""
    configured = os.environ.get(MODELS_ROOT_ENV, "").strip()
    root = (Path(configured).expanduser() if configured else store.data_dir / "models").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def model_folder(store: Store, name: str) -> Path:
    """The folder of the model called ``name``: refused unless it lies directly inside the models
    folder (names are checked where they are given; this is the second lock on the same door)."""
    root = models_folder(store)
    folder = (root / name).resolve()
    if folder.parent != root or not name.strip():
        raise UnsafeModelName(f"model name {name!r} would leave the models folder")
    return folder


def folder_under_models_root(store: Store, path: str) -> Path | None:
    """``path`` (absolute, or relative to the models folder) when it is an existing folder inside the
    models folder, else None: the caller says "not found" either way, so nothing tells whether a
    path outside exists."""
    root = models_folder(store)
    candidate = Path(path).expanduser()
    folder = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if folder == root or root not in folder.parents:
        return None
    return folder if folder.is_dir() else None
