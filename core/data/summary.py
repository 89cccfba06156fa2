"""What a store holds, for the Data tab: counts of prompts, completions, comparisons and labels."""

from __future__ import annotations

from core.accounts import Actor, Permission
from storage.engine import Store
from storage.queries import StoreCounts, store_counts

__all__ = ["StoreCounts", "store_summary"]


def store_summary(store: Store, actor: Actor) -> StoreCounts:
    """The store's counts; for the roles that may see the data as a whole (those who may export it).
    Raises ``PermissionDenied``."""
    actor.require(Permission.EXPORT)
    with store.read() as session:
        return store_counts(session)
