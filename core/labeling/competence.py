"""Annotator competence for the Team tab: an annotator model fitted on demand over a dataset's labels.

The model and its flags are ``core.preferences.competence``'s (the same fit an export or a training run
with ``aggregate`` makes); this is the permission-checked entry point the page calls.
"""

from __future__ import annotations

from core.accounts import Actor, Permission
from core.preferences.competence import AGGREGATES, CompetenceFit, fit_store_competence, load_fit
from storage.datasets import DatasetError
from storage.engine import Store
from storage.settings import get_setting, set_setting

MODELS = AGGREGATES[1:]  # the annotator models (majority vote has no competence to show)


def annotator_competence(store: Store, actor: Actor, *, dataset: str | None = None,
                         method: str = "dawid-skene") -> CompetenceFit:
    """Fit ``method`` on the labels of ``dataset`` (each dataset not archived, separately, when None) and return
    each annotator's competence, sample size and flags. Raises ``PermissionDenied`` without VIEW_TEAM,
    ``DatasetError`` for an unknown dataset or method."""
    actor.require(Permission.VIEW_TEAM)
    if method not in MODELS:
        raise DatasetError(f"the annotator model is one of {', '.join(MODELS)}, got {method!r}")
    return fit_store_competence(store, datasets=[dataset] if dataset else None, method=method)


def last_competence_fit(store: Store, actor: Actor, *, dataset: str | None) -> dict | None:
    """The dataset's last fit kept by the background refit (``core.preferences.competence.load_fit``), or None
    (also for no dataset: fits are kept per dataset). Raises ``PermissionDenied`` without VIEW_TEAM."""
    actor.require(Permission.VIEW_TEAM)
    return load_fit(store, dataset) if dataset else None


def competence_refit_every(store: Store) -> int:
    """The store's background refit setting: every N new human labels (0 = on demand only)."""
    with store.read() as session:
        return get_setting(session, "competence_refit_every")


def set_competence_refit(store: Store, actor: Actor, every: int) -> None:
    """Refit each dataset's annotator model in a background job after every ``every`` new human labels (0: off).
    Raises ``PermissionDenied`` without CHANGE_SETTINGS, ``SettingError`` out of range."""
    actor.require(Permission.CHANGE_SETTINGS)
    with store.write() as session:
        set_setting(session, "competence_refit_every", every)
