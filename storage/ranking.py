"""Ranking items: a prompt's 3 to 9 completions that annotators order best to worst.

A ranking item is a ``Comparison`` row in a ranking dataset, so that the queue, leases, overlap,
priority, archiving and sending back work exactly as for pairs. Its ``completion_a_id`` and
``completion_b_id`` are the lowest and highest ids of its completions (the pair constraint then
keeps one item per set within a dataset); the whole set is in ``RankingSlot``. A ranked label is a
``Label`` with choice ``ranked`` and the order in ``Label.ranking``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select, tuple_
from sqlmodel import Session

from storage.bulk import chunked, insert_ignoring_conflicts
from storage.models import Comparison, Completion, Dataset, Label, Prompt, RankingSlot, User

MIN_RANKED, MAX_RANKED = 3, 9


class RankingRecord(NamedTuple):
    """The completions (by content hash, in file order) of one prompt to be ranked."""

    prompt_hash: str
    completion_hashes: tuple[str, ...]


class RankingConflict(ValueError):
    """A ranking item that would share its stored pair of ids with a different set of completions."""


def write_ranking_items(session: Session, rankings: list[RankingRecord], *, dataset_id: int, priority: int,
                        source: str, created_at: datetime) -> None:
    """Add the ranking items of ``rankings`` to dataset ``dataset_id`` (prompts and completions are
    already written); an item whose completions are already an item of the dataset adds nothing."""
    wanted = {(r.prompt_hash, h) for r in rankings for h in r.completion_hashes}
    ids: dict[tuple[str, str], tuple[int, int]] = {}
    for chunk in chunked(sorted(wanted), 2):
        rows = session.execute(
            select(Prompt.content_hash, Completion.content_hash, Prompt.id, Completion.id)
            .join(Completion, Completion.prompt_id == Prompt.id)
            .where(tuple_(Prompt.content_hash, Completion.content_hash).in_(list(chunk)))
        ).all()
        ids.update({(p, c): (prompt_id, completion_id) for p, c, prompt_id, completion_id in rows})
    items: dict[tuple[int, int], tuple[int, list[int]]] = {}  # (low, high) -> (prompt id, completion ids in order)
    for ranking in rankings:
        completion_ids = [ids[(ranking.prompt_hash, h)][1] for h in ranking.completion_hashes]
        prompt_id = ids[(ranking.prompt_hash, ranking.completion_hashes[0])][0]
        key = (min(completion_ids), max(completion_ids))
        earlier = items.setdefault(key, (prompt_id, completion_ids))
        if set(earlier[1]) != set(completion_ids):
            raise RankingConflict(_conflict_message(session, prompt_id))
    insert_ignoring_conflicts(
        session, Comparison,
        [{"dataset_id": dataset_id, "prompt_id": prompt_id, "completion_a_id": low, "completion_b_id": high,
          "priority": priority, "source": source, "created_at": created_at, "label_count": 0, "extra_labels": 0,
          "done": False, "archived": False}
         for (low, high), (prompt_id, _) in items.items()],
        conflict_columns=["dataset_id", "completion_a_id", "completion_b_id"],
    )
    comparison_of: dict[tuple[int, int], int] = {}
    keys = list(items)
    for chunk in chunked(keys, 2):
        comparison_of.update({
            (a, b): comparison_id for comparison_id, a, b in session.execute(
                select(Comparison.id, Comparison.completion_a_id, Comparison.completion_b_id)
                .where(Comparison.dataset_id == dataset_id,
                       tuple_(Comparison.completion_a_id, Comparison.completion_b_id).in_(list(chunk)))
            ).all()
        })
    existing = slots_of(session, list(comparison_of.values()))
    new_slots = []
    for key, (prompt_id, completion_ids) in items.items():
        comparison_id = comparison_of[key]
        stored = existing.get(comparison_id)
        if stored is None:
            new_slots.extend({"comparison_id": comparison_id, "completion_id": completion_id, "position": position}
                             for position, completion_id in enumerate(completion_ids))
        elif set(stored) != set(completion_ids):
            raise RankingConflict(_conflict_message(session, prompt_id))
    insert_ignoring_conflicts(session, RankingSlot, new_slots, conflict_columns=["comparison_id", "completion_id"])


def _conflict_message(session: Session, prompt_id: int) -> str:
    from storage.queries import prompt_excerpt

    prompt = session.get(Prompt, prompt_id)
    return (f"prompt {prompt_excerpt(prompt.text, prompt.messages, 60)!r} already has a ranking item in this dataset "
            "with a different set of completions, and a prompt's completions are ranked as one set: put all of them "
            "in one row, or import this set into another dataset")


def slots_of(session: Session, comparison_ids: list[int]) -> dict[int, list[int]]:
    """The completion ids of each ranking item, in imported order (items without slots are absent)."""
    slots: dict[int, list[tuple[int, int]]] = {}
    for chunk in chunked(sorted(set(comparison_ids)), 1):
        for comparison_id, completion_id, position in session.execute(
            select(RankingSlot.comparison_id, RankingSlot.completion_id, RankingSlot.position)
            .where(RankingSlot.comparison_id.in_(chunk))
        ).all():
            slots.setdefault(comparison_id, []).append((position, completion_id))
    return {comparison_id: [c for _, c in sorted(pairs)] for comparison_id, pairs in slots.items()}


@dataclass(frozen=True)
class RankedCompletion:
    completion_id: int
    text: str
    model: str | None


def ranked_completions(session: Session, comparison_id: int) -> list[RankedCompletion]:
    """The completions of one ranking item with their texts, in imported order."""
    rows = session.execute(
        select(Completion.id, Completion.text, Completion.model)
        .join(RankingSlot, RankingSlot.completion_id == Completion.id)
        .where(RankingSlot.comparison_id == comparison_id)
        .order_by(RankingSlot.position)
    ).all()
    return [RankedCompletion(*row) for row in rows]


def completion_texts(session: Session, completion_ids: list[int]) -> dict[int, tuple[str, str | None]]:
    """(text, model) of each completion id."""
    found: dict[int, tuple[str, str | None]] = {}
    for chunk in chunked(sorted(set(completion_ids)), 1):
        found.update({completion_id: (text, model) for completion_id, text, model in session.execute(
            select(Completion.id, Completion.text, Completion.model).where(Completion.id.in_(chunk))
        ).all()})
    return found


def ranking_dataset_ids(session: Session, dataset_ids: list[int]) -> list[int]:
    """Those of ``dataset_ids`` that ask the ranking question."""
    return list(session.execute(
        select(Dataset.id).where(Dataset.id.in_(dataset_ids), Dataset.question == "ranking").order_by(Dataset.id)
    ).scalars())


@dataclass(frozen=True)
class StoredRanking:
    """One annotator's ranked label of one item."""

    comparison_id: int
    annotator: str
    groups: list[list[int]]  # completion ids, best group first
    shown: list[int]  # completion ids in the order they were shown
    all_bad: bool
    comment: str | None
    seconds_spent: float | None
    updated_at: datetime


def rankings_by_item(session: Session, dataset_ids: list[int], *, since: datetime | None = None,
                     annotators: list[str] | None = None) -> dict[int, list[StoredRanking]]:
    """The ranked labels of the non-archived items of these datasets, by item; ``since`` and
    ``annotators`` keep only labels changed at or after a time, or given by these users."""
    statement = (
        select(Label.comparison_id, User.name, Label.ranking, Label.comment, Label.seconds_spent, Label.updated_at)
        .join(User, User.id == Label.annotator_id)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .where(Label.choice == "ranked", Comparison.dataset_id.in_(dataset_ids), Comparison.archived.is_(False))
        .order_by(Label.comparison_id, User.name)
    )
    if since is not None:
        statement = statement.where(Label.updated_at >= since)
    if annotators:
        statement = statement.where(User.name.in_(annotators))
    found: dict[int, list[StoredRanking]] = {}
    for comparison_id, annotator, ranking, comment, seconds, updated_at in session.execute(statement).all():
        found.setdefault(comparison_id, []).append(StoredRanking(
            comparison_id, annotator, [list(group) for group in ranking["groups"]], list(ranking.get("shown") or []),
            bool(ranking.get("all_bad")), comment, seconds, updated_at,
        ))
    return found


def items_of(session: Session, dataset_ids: list[int]) -> list[tuple[int, int, str]]:
    """(item id, prompt id, dataset name) of the non-archived ranking items of these datasets."""
    return [tuple(row) for row in session.execute(
        select(Comparison.id, Comparison.prompt_id, Dataset.name)
        .join(Dataset, Dataset.id == Comparison.dataset_id)
        .where(Comparison.dataset_id.in_(dataset_ids), Comparison.archived.is_(False), Dataset.question == "ranking")
        .order_by(Comparison.id)
    ).all()]


def ranking_json(groups: list[list[int]], shown: list[int], all_bad: bool) -> dict[str, Any]:
    return {"groups": [list(group) for group in groups], "shown": list(shown), "all_bad": bool(all_bad)}
