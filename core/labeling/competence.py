"""Annotator competence for the Team tab: an annotator model fitted on demand over a dataset's labels.

The model and its flags are ``core.preferences.competence``'s (the same fit an export or a training run
with ``aggregate`` makes); this is the permission-checked entry point the page calls.
"""

from __future__ import annotations

from core.accounts import Actor, Permission
from core.preferences.competence import AGGREGATES, CompetenceFit, fit_store_competence
from storage.datasets import DatasetError
from storage.engine import Store

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
