"""The record browser's queries: one dataset's comparisons, filtered and paged on the server, one
comparison with all its labels, and bulk changes (send back, priority, archive)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, cast, exists, func, or_, select, update
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.bulk import chunked
from storage.models import Comparison, Completion, Label, Prompt, Role, User
from storage.queries import prompt_excerpt

RECORD_STATUSES = ("any", "waiting", "labeled", "done", "archived")


@dataclass(frozen=True)
class RecordFilter:
    """What the browser shows; empty fields do not filter."""

    status: str = "any"  # waiting: still wants labels · labeled: has a non-skip label · done: has all it needs
    annotator: str = ""  # has a label by this user name
    source: str = ""  # came from this source (exact)
    disagreement: bool = False  # its non-skip labels do not all agree
    has_comment: bool = False
    text: str = ""  # appears in the prompt or either completion (case-insensitive)


@dataclass(frozen=True)
class RecordRow:
    comparison_id: int
    prompt_excerpt: str
    status: str
    votes: str  # "ann: a · bob: b"
    comments: int
    source: str
    priority: int
    created_at: datetime


@dataclass(frozen=True)
class RecordPage:
    rows: list[RecordRow]
    total: int  # matching comparisons, all pages
    page: int
    page_size: int


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _status_of(done: bool, archived: bool, label_count: int) -> str:
    if archived:
        return "archived"
    if done:
        return "done"
    return "labeled" if label_count else "waiting"


def _matching(dataset_id: int, record_filter: RecordFilter):  # noqa: ANN202
    conditions = [Comparison.dataset_id == dataset_id]
    status = record_filter.status
    if status == "archived":
        conditions.append(Comparison.archived.is_(True))
    elif status in ("waiting", "labeled", "done"):
        conditions.append(Comparison.archived.is_(False))
        if status == "waiting":
            conditions.append(Comparison.done.is_(False))
        elif status == "labeled":
            conditions.append(Comparison.label_count > 0)
        else:
            conditions.append(Comparison.done.is_(True))
    if record_filter.annotator:
        conditions.append(exists().where(
            Label.comparison_id == Comparison.id, Label.annotator_id == User.id, User.name == record_filter.annotator))
    if record_filter.source:
        conditions.append(Comparison.source == record_filter.source)
    if record_filter.has_comment:
        conditions.append(exists().where(Label.comparison_id == Comparison.id, Label.comment.is_not(None)))
    if record_filter.disagreement:
        distinct_votes = (
            select(func.count(func.distinct(Label.choice)))
            .where(Label.comparison_id == Comparison.id, Label.choice != "skip")
            .correlate(Comparison)
            .scalar_subquery()
        )
        conditions.append(distinct_votes > 1)
    if record_filter.text:
        pattern = f"%{_escape_like(record_filter.text.lower())}%"
        a, b, prompt = aliased(Completion), aliased(Completion), aliased(Prompt)
        in_prompt = exists().where(
            prompt.id == Comparison.prompt_id,
            or_(func.lower(prompt.text).like(pattern, escape="\\"),
                func.lower(cast(prompt.messages, String)).like(pattern, escape="\\")),
        ).correlate(Comparison)
        in_a = exists().where(a.id == Comparison.completion_a_id, func.lower(a.text).like(pattern, escape="\\"))
        in_b = exists().where(b.id == Comparison.completion_b_id, func.lower(b.text).like(pattern, escape="\\"))
        conditions.append(or_(in_prompt, in_a, in_b))
    return conditions


def browse_records(session: Session, dataset_id: int, record_filter: RecordFilter, *, page: int,
                   page_size: int) -> RecordPage:
    """One page (from 1) of the dataset's comparisons that match ``record_filter``, newest first."""
    conditions = _matching(dataset_id, record_filter)
    total = session.execute(select(func.count()).select_from(Comparison).where(*conditions)).scalar_one()
    found = session.execute(
        select(Comparison.id, Comparison.done, Comparison.archived, Comparison.label_count, Comparison.source,
               Comparison.priority, Comparison.created_at, Prompt.text, Prompt.messages)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .where(*conditions)
        .order_by(Comparison.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    ).all()
    ids = [row.id for row in found]
    votes: dict[int, list[str]] = {}
    comments: dict[int, int] = {}
    if ids:
        for comparison_id, name, choice, comment in session.execute(
            select(Label.comparison_id, User.name, Label.choice, Label.comment)
            .join(User, User.id == Label.annotator_id)
            .where(Label.comparison_id.in_(ids))
            .order_by(Label.comparison_id, User.name)
        ):
            votes.setdefault(comparison_id, []).append(f"{name}: {choice}")
            comments[comparison_id] = comments.get(comparison_id, 0) + (comment is not None)
    rows = [
        RecordRow(row.id, prompt_excerpt(row.text, row.messages, 100), _status_of(row.done, row.archived, row.label_count),
                  " · ".join(votes.get(row.id, [])), comments.get(row.id, 0), row.source, row.priority, row.created_at)
        for row in found
    ]
    return RecordPage(rows, total, page, page_size)


@dataclass(frozen=True)
class RecordLabel:
    annotator: str
    is_source: bool  # an import source, not a person
    choice: str  # a / b / tie / both_bad / skip, in stored sides
    strength: int | None
    comment: str | None
    seconds_spent: float | None
    shown_left: str | None  # which stored side this annotator saw on the left
    updated_at: datetime


def record_labels(session: Session, comparison_id: int) -> list[RecordLabel]:
    return [
        RecordLabel(name, role == Role.SOURCE.value, choice, strength, comment, seconds, shown_left, updated_at)
        for name, role, choice, strength, comment, seconds, shown_left, updated_at in session.execute(
            select(User.name, User.role, Label.choice, Label.strength, Label.comment, Label.seconds_spent,
                   Label.shown_left, Label.updated_at)
            .join(User, User.id == Label.annotator_id)
            .where(Label.comparison_id == comparison_id)
            .order_by(Label.updated_at, User.name)
        )
    ]


def comparison_state(session: Session, comparison_id: int) -> tuple[str, int, int] | None:
    """(status, priority, dataset id) of a comparison, or None when it does not exist."""
    row = session.execute(
        select(Comparison.done, Comparison.archived, Comparison.label_count, Comparison.priority, Comparison.dataset_id)
        .where(Comparison.id == comparison_id)
    ).first()
    return None if row is None else (_status_of(row.done, row.archived, row.label_count), row.priority, row.dataset_id)


def ids_in_dataset(session: Session, dataset_id: int, comparison_ids: list[int]) -> list[int]:
    """Those of ``comparison_ids`` that are in the dataset (bulk actions never reach another one)."""
    found: list[int] = []
    for chunk in chunked(sorted(set(comparison_ids)), 1):
        found += session.execute(
            select(Comparison.id).where(Comparison.id.in_(chunk), Comparison.dataset_id == dataset_id)
        ).scalars().all()
    return found


def set_priority(session: Session, comparison_ids: list[int], priority: int) -> int:
    changed = 0
    for chunk in chunked(sorted(set(comparison_ids)), 1):
        changed += session.execute(update(Comparison).where(Comparison.id.in_(chunk)).values(priority=priority)).rowcount
    return changed


def set_archived(session: Session, comparison_ids: list[int], archived: bool) -> int:
    changed = 0
    for chunk in chunked(sorted(set(comparison_ids)), 1):
        changed += session.execute(update(Comparison).where(Comparison.id.in_(chunk)).values(archived=archived)).rowcount
    return changed
