"""The record browser: a dataset's comparisons page by page with filters, one comparison with every
label as each annotator saw it, and bulk actions (send back to the queue, set priority, archive).

Reading needs the team-view permission; changing needs the requeue permission. Every request is
bounded: a page holds at most ``MAX_PAGE_SIZE`` rows, a search at most ``MAX_SEARCH_CHARS``
characters, a bulk action at most ``MAX_BULK_IDS`` comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.limits import MAX_BULK_IDS, MAX_PAGE_SIZE, MAX_PRIORITY, MAX_SEARCH_CHARS
from core.accounts import Actor, Permission
from storage.datasets import DatasetError, require_dataset
from storage.engine import Store
from storage.queries import ComparisonContent, load_comparison
from storage.queue import requeue_comparisons
from storage.records import (
    RECORD_STATUSES,
    RecordFilter,
    RecordLabel,
    RecordPage,
    browse_records,
    comparison_state,
    ids_in_dataset,
    record_labels,
    set_archived,
    set_priority,
)

__all__ = ["RECORD_STATUSES", "RecordFilter", "RecordDetail", "RecordError", "browse", "record_detail",
           "send_back", "change_priority", "archive_records"]



class RecordError(ValueError):
    """A request the record browser refuses; the message says what to change."""


def _check_filter(record_filter: RecordFilter) -> None:
    if record_filter.status not in RECORD_STATUSES:
        raise RecordError(f"status must be one of {', '.join(RECORD_STATUSES)}, got {record_filter.status!r}")
    for name in ("text", "annotator", "source"):
        value = getattr(record_filter, name)
        if len(value) > MAX_SEARCH_CHARS:
            raise RecordError(f"the {name} filter is {len(value):,} characters; the limit is {MAX_SEARCH_CHARS}")


def browse(store: Store, actor: Actor, dataset: str, record_filter: RecordFilter = RecordFilter(), *, page: int = 1,
           page_size: int = 25) -> RecordPage:
    """Page ``page`` (from 1) of dataset ``dataset``'s comparisons matching the filter, newest first."""
    actor.require(Permission.VIEW_TEAM)
    _check_filter(record_filter)
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise RecordError(f"page size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    if page < 1:
        raise RecordError(f"pages are numbered from 1, got {page}")
    with store.read() as session:
        try:
            dataset_id = require_dataset(session, dataset).id
        except DatasetError as error:
            raise RecordError(str(error)) from None
        return browse_records(session, dataset_id, record_filter, page=page, page_size=page_size)


@dataclass(frozen=True)
class RecordDetail:
    content: ComparisonContent
    status: str
    priority: int
    labels: list[RecordLabel]

    def side_seen_left(self, label: RecordLabel) -> str:
        """How this annotator saw the pair: "A left, B right", or "" for an imported label."""
        if label.shown_left is None:
            return ""
        return "A left, B right" if label.shown_left == "a" else "B left, A right"


def record_detail(store: Store, actor: Actor, comparison_id: Any) -> RecordDetail:
    """One comparison with every label (engineers and admins). Raises ``PermissionDenied`` first, then
    ``RecordError`` for an id that is not a stored comparison (or not a number at all)."""
    actor.require(Permission.VIEW_TEAM)
    try:
        comparison_id = int(comparison_id)
    except (TypeError, ValueError):
        raise RecordError(f"pick a comparison (a row of the table); {str(comparison_id)[:40]!r} is not one") from None
    with store.read() as session:
        content = load_comparison(session, int(comparison_id))
        state = comparison_state(session, int(comparison_id))
        if content is None or state is None:
            raise RecordError(f"there is no comparison {comparison_id}")
        status, priority, _ = state
        return RecordDetail(content, status, priority, record_labels(session, int(comparison_id)))


def _ids(session, dataset: str, comparison_ids: list[int]) -> list[int]:  # noqa: ANN001
    if not comparison_ids:
        raise RecordError("no comparisons selected: click rows to select them first (or type their ids)")
    if len(comparison_ids) > MAX_BULK_IDS:
        raise RecordError(f"{len(comparison_ids):,} comparisons selected; the limit is {MAX_BULK_IDS:,} per action")
    try:
        dataset_id = require_dataset(session, dataset).id
    except DatasetError as error:
        raise RecordError(str(error)) from None
    found = ids_in_dataset(session, dataset_id, [int(i) for i in comparison_ids])
    missing = sorted(set(int(i) for i in comparison_ids) - set(found))
    if missing:
        raise RecordError(f"comparison(s) {', '.join(map(str, missing[:10]))} are not in dataset {dataset!r}")
    return found


def send_back(store: Store, actor: Actor, dataset: str, comparison_ids: list[int], *, priority: int = 0) -> int:
    """Ask for one more human label on each comparison (its earlier annotators are not asked again)
    and raise it to at least ``priority``; all of them or, on a bad id, none."""
    actor.require(Permission.REQUEUE)
    _check_priority(priority)
    with store.write() as session:
        return requeue_comparisons(session, _ids(session, dataset, comparison_ids), priority=priority)


def change_priority(store: Store, actor: Actor, dataset: str, comparison_ids: list[int], priority: int) -> int:
    actor.require(Permission.REQUEUE)
    _check_priority(priority)
    with store.write() as session:
        return set_priority(session, _ids(session, dataset, comparison_ids), priority)


def archive_records(store: Store, actor: Actor, dataset: str, comparison_ids: list[int], *, archived: bool = True) -> int:
    """Archive (or restore) comparisons: an archived one is never handed out and never exported;
    its labels are kept."""
    actor.require(Permission.REQUEUE)
    with store.write() as session:
        return set_archived(session, _ids(session, dataset, comparison_ids), archived)


def _check_priority(priority: int) -> None:
    if not -MAX_PRIORITY <= int(priority) <= MAX_PRIORITY:
        raise RecordError(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, got {priority}")
