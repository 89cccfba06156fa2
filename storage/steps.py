"""Steps items: one reasoning trace whose steps annotators mark (process supervision).

A steps item is a ``Comparison`` row in a steps dataset that names its one completion on both sides
(``completion_a_id == completion_b_id``), so the queue, leases, overlap, priority, archiving and sending back
work exactly as for pairs, and the pair constraint keeps one item per completion within a dataset. Its steps
are spans of the completion's text in ``TraceStep``; a label is a ``Label`` with choice ``steps`` and the marks
in ``Label.steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select, tuple_
from sqlmodel import Session

from storage.bulk import chunked, insert_ignoring_conflicts
from storage.models import Comparison, Completion, Dataset, Label, Prompt, Role, TraceStep, User
from storage.queue_counts import refresh_comparison_counts


class StepItemRecord(NamedTuple):
    """One trace to import: its prompt and completion (by content hash), its step spans (start, end, in answer)
    and, for a labeled row, one mark per step."""

    prompt_hash: str
    completion_hash: str
    spans: tuple[tuple[int, int, bool], ...]
    marks: tuple[str, ...] | None = None


def write_step_items(session: Session, items: list[StepItemRecord], *, dataset_id: int, priority: int, source: str,
                     created_at: datetime, source_user_id: int | None) -> None:
    """Add the steps items of ``items`` to dataset ``dataset_id`` (prompts and completions are already written).
    A completion that is already an item of the dataset keeps its steps; labeled rows add the source's label
    (``source_user_id``) once."""
    wanted = sorted({(item.prompt_hash, item.completion_hash) for item in items})
    ids: dict[tuple[str, str], tuple[int, int]] = {}
    for chunk in chunked(wanted, 2):
        rows = session.execute(
            select(Prompt.content_hash, Completion.content_hash, Prompt.id, Completion.id)
            .join(Completion, Completion.prompt_id == Prompt.id)
            .where(tuple_(Prompt.content_hash, Completion.content_hash).in_(list(chunk)))
        ).all()
        ids.update({(p, c): (prompt_id, completion_id) for p, c, prompt_id, completion_id in rows})
    first: dict[int, StepItemRecord] = {}  # the first row of each completion wins, as for pairs
    prompt_of: dict[int, int] = {}
    for item in items:
        prompt_id, completion_id = ids[(item.prompt_hash, item.completion_hash)]
        first.setdefault(completion_id, item)
        prompt_of[completion_id] = prompt_id
    insert_ignoring_conflicts(
        session, Comparison,
        [{"dataset_id": dataset_id, "prompt_id": prompt_of[completion_id], "completion_a_id": completion_id,
          "completion_b_id": completion_id, "priority": priority, "source": source, "created_at": created_at,
          "label_count": 0, "extra_labels": 0, "done": False, "archived": False} for completion_id in first],
        conflict_columns=["dataset_id", "completion_a_id", "completion_b_id"],
    )
    item_of: dict[int, int] = {}
    for chunk in chunked(sorted(first), 1):
        item_of.update(dict(session.execute(
            select(Comparison.completion_a_id, Comparison.id)
            .where(Comparison.dataset_id == dataset_id, Comparison.completion_a_id.in_(chunk),
                   Comparison.completion_b_id == Comparison.completion_a_id)).all()))
    has_steps = set()
    for chunk in chunked(sorted(item_of.values()), 1):
        has_steps.update(session.execute(select(TraceStep.comparison_id).where(TraceStep.comparison_id.in_(chunk))
                                         .group_by(TraceStep.comparison_id)).scalars())
    new_steps, labels = [], []
    for completion_id, item in first.items():
        item_id = item_of[completion_id]
        if item_id not in has_steps:
            new_steps.extend({"comparison_id": item_id, "position": position, "char_start": start, "char_end": end,
                              "in_answer": in_answer} for position, (start, end, in_answer) in enumerate(item.spans))
        if item.marks is not None and source_user_id is not None:
            labels.append({"comparison_id": item_id, "annotator_id": source_user_id, "choice": "steps",
                           "steps": {"marks": list(item.marks), "final": None},
                           "created_at": created_at, "updated_at": created_at})
    insert_ignoring_conflicts(session, TraceStep, new_steps, conflict_columns=["comparison_id", "position"])
    if labels:
        insert_ignoring_conflicts(session, Label, labels, conflict_columns=["comparison_id", "annotator_id"])
        refresh_comparison_counts(session, labeled_by=source_user_id)


@dataclass(frozen=True)
class StoredStep:
    position: int
    start: int
    end: int
    in_answer: bool


def steps_of(session: Session, item_id: int) -> list[StoredStep]:
    """The steps of one item, in order (empty: not a steps item)."""
    return [StoredStep(*row) for row in session.execute(
        select(TraceStep.position, TraceStep.char_start, TraceStep.char_end, TraceStep.in_answer)
        .where(TraceStep.comparison_id == item_id).order_by(TraceStep.position)).all()]


def is_steps_item(session: Session, item_id: int) -> bool:
    return session.execute(select(TraceStep.comparison_id).where(TraceStep.comparison_id == item_id).limit(1)).first() \
        is not None


@dataclass(frozen=True)
class StepTrace:
    """A steps item with its content, its steps and every annotator's marks (by user name)."""

    item_id: int
    dataset: str
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    completion: str
    steps: list[StoredStep]
    votes: dict[str, dict[str, Any]]  # annotator name -> {"marks": [...], "final": ...}
    archived: bool


def step_traces(session: Session, dataset_ids: list[int], *, annotators: list[str] | None = None,
                since: datetime | None = None, include_archived: bool = False,
                people_only: bool = False) -> list[StepTrace]:
    """Every steps item of the datasets with its marks (skips are not marks), in item order; ``people_only`` leaves
    out the marks of import sources (not people)."""
    query = (select(Comparison.id, Dataset.name, Prompt.text, Prompt.messages, Completion.text, Comparison.archived)
             .join(Dataset, Dataset.id == Comparison.dataset_id)
             .join(Prompt, Prompt.id == Comparison.prompt_id)
             .join(Completion, Completion.id == Comparison.completion_a_id)
             .where(Comparison.dataset_id.in_(dataset_ids), Comparison.completion_a_id == Comparison.completion_b_id)
             .order_by(Comparison.id))
    if not include_archived:
        query = query.where(Comparison.archived.is_(False))
    items = session.execute(query).all()
    item_ids = [row[0] for row in items]
    steps: dict[int, list[StoredStep]] = {}
    votes: dict[int, dict[str, dict[str, Any]]] = {}
    for chunk in chunked(item_ids, 1):
        for item_id, *rest in session.execute(
                select(TraceStep.comparison_id, TraceStep.position, TraceStep.char_start, TraceStep.char_end,
                       TraceStep.in_answer).where(TraceStep.comparison_id.in_(chunk))
                .order_by(TraceStep.comparison_id, TraceStep.position)).all():
            steps.setdefault(item_id, []).append(StoredStep(*rest))
        label_query = (select(Label.comparison_id, User.name, Label.steps).join(User, User.id == Label.annotator_id)
                       .where(Label.comparison_id.in_(chunk), Label.choice == "steps"))
        if annotators:
            label_query = label_query.where(User.name.in_(annotators))
        if since is not None:
            label_query = label_query.where(Label.updated_at >= since)
        if people_only:
            label_query = label_query.where(User.role != Role.SOURCE.value)
        for item_id, name, marks in session.execute(label_query).all():
            votes.setdefault(item_id, {})[name] = marks
    return [StepTrace(item_id, dataset, text, messages, completion, steps.get(item_id, []), votes.get(item_id, {}),
                      archived)
            for item_id, dataset, text, messages, completion, archived in items]


def step_item_ids(session: Session, dataset_ids: list[int] | None) -> list[int]:
    """The steps items (not archived) of the datasets (all datasets when None)."""
    query = select(Comparison.id).where(Comparison.completion_a_id == Comparison.completion_b_id,
                                        Comparison.archived.is_(False))
    if dataset_ids is not None:
        query = query.where(Comparison.dataset_id.in_(dataset_ids))
    return list(session.execute(query).scalars())


def step_rule_of(session: Session, item_id: int) -> str | None:
    """The stored split rule of the dataset an item belongs to (None = paragraphs)."""
    return session.execute(select(Dataset.step_separator).join(Comparison, Comparison.dataset_id == Dataset.id)
                           .where(Comparison.id == item_id)).scalar()
