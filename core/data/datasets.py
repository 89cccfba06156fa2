"""Datasets as users see them: listing with counts, creating, changing settings. Every function checks
the actor's permission first. (Which datasets an export or a training covers:
``core.preferences.pairs.resolve_datasets``.)"""

from __future__ import annotations

from core.accounts import Actor, Permission
from storage.datasets import (
    DEFAULT_DATASET,
    DatasetError,
    DatasetSettings,
    DatasetSummary,
    change_dataset,
    fix_question,
    get_or_create_dataset,
    summarize_datasets,
)
from storage.engine import Store

__all__ = ["DEFAULT_DATASET", "DatasetError", "DatasetSettings", "DatasetSummary", "change_dataset_settings",
           "create_dataset", "datasets_for", "datasets_to_label"]


def datasets_for(store: Store, actor: Actor) -> list[DatasetSummary]:
    """The datasets this actor works on: all of them for whoever sees the team's work, else those
    the actor may label (open to all or naming them, not archived)."""
    with store.read() as session:
        if actor.can(Permission.VIEW_TEAM):
            return summarize_datasets(session)
        actor.require(Permission.LABEL)
        return summarize_datasets(session, annotator_id=actor.user_id)


def datasets_to_label(store: Store, actor: Actor) -> list[DatasetSummary]:
    """The datasets this actor may label now, whatever their role: open to all or naming them, not archived."""
    actor.require(Permission.LABEL)
    with store.read() as session:
        return summarize_datasets(session, annotator_id=actor.user_id)


def create_dataset(store: Store, actor: Actor, name: str, question: str | None = None) -> DatasetSummary:
    """Make an empty dataset asking ``question`` (pairwise by default; its prompt kind is fixed by
    its first import). An existing dataset is left as it is, unless it is empty and asked to change question."""
    actor.require(Permission.IMPORT)
    with store.write() as session:
        dataset = get_or_create_dataset(session, name, question)
        if question is not None:
            fix_question(session, dataset, question, what=f"--question {question}")
    return next(summary for summary in datasets_for(store, actor) if summary.name == name)


def change_dataset_settings(store: Store, actor: Actor, name: str, settings: DatasetSettings) -> DatasetSummary:
    """Change a dataset's settings; guidelines alone need the guidelines permission, anything else
    the settings permission. Raising the overlap reopens its comparisons that people label (never
    imported labeled pairs); lowering it closes them."""
    others = DatasetSettings(**{**settings.__dict__, "guidelines": None})
    if others != DatasetSettings() or settings.guidelines is None:  # nothing to change is still a settings call
        actor.require(Permission.CHANGE_SETTINGS)
    if settings.guidelines is not None:
        actor.require(Permission.EDIT_GUIDELINES)
    with store.write() as session:
        change_dataset(session, name, settings)
    return next(summary for summary in datasets_for(store, actor) if summary.name == name)
