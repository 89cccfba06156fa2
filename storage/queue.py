"""The labeling queue: who gets which comparison next, and storing what they said.

* A comparison is **open** while fewer than its dataset's ``overlap`` people have labeled it
  (skips do not count: a skip asks someone else to judge). ``Comparison.label_count`` and
  ``Comparison.done`` keep that state so the queue never scans finished items (``storage.queue_counts``).
* ``claim_next_comparison`` hands an annotator the highest-priority open comparison they have not
  labeled and that is not reserved by enough others, and reserves it for them with a lease. Among
  equal priorities, a dataset ordered by uncertainty serves the lowest ``queue_key`` first (written
  by the loop's scoring job: the model's least certain items, with a random control arm mixed in);
  otherwise import order. A
  refresh returns the same item while the lease holds; an expired lease frees it.
* ``submit_label`` is idempotent (the same label twice changes nothing) and refuses a new label on
  a comparison that already has its labels, so an expired lease can never produce a twin.

Every function runs inside the caller's write transaction (``BEGIN IMMEDIATE`` on SQLite), so a
claim's read and write are one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, exists, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from storage.bulk import chunked, dialect_insert
from storage.labels import LabelInput, upsert_label
from storage.datasets import labelable_dataset_ids
from storage.models import Comparison, Dataset, Label, Lease, Prompt, utc_now
from storage.queries import prompt_excerpt
from storage.queue_counts import labels_needed, refresh_comparison_counts


# How long a claim that found only comparisons other transactions hold waits for one of them (PostgreSQL).
MAX_CLAIM_LOCK_WAIT_MS = 500


class QueueError(ValueError):
    """A label the queue cannot take; the message says why and what to do."""


def _lease_seconds_of(session: Session, comparison_id: int) -> int:
    return session.execute(
        select(Dataset.lease_seconds).join(Comparison, Comparison.dataset_id == Dataset.id)
        .where(Comparison.id == comparison_id)
    ).scalar_one()


def _lease(session: Session, comparison_id: int, annotator_id: int, expires_at: datetime) -> None:
    statement = dialect_insert(session)(Lease).values(
        comparison_id=comparison_id, annotator_id=annotator_id, expires_at=expires_at
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["comparison_id", "annotator_id"], set_={"expires_at": statement.excluded.expires_at}
        )
    )


def _labeled_by(annotator_id: int):  # noqa: ANN202
    return exists().where(Label.comparison_id == Comparison.id, Label.annotator_id == annotator_id)


def claim_next_comparison(
    session: Session, *, annotator_id: int, dataset_id: int | None = None, now: datetime | None = None
) -> int | None:
    """Reserve and return the id of the next comparison for this annotator, from dataset
    ``dataset_id`` or from any dataset they may label, or None when none is left."""
    now = now or utc_now()
    session.execute(delete(Lease).where(Lease.expires_at <= now))
    allowed = Comparison.dataset_id.in_(labelable_dataset_ids(annotator_id, dataset_id)) & Comparison.archived.is_(False)

    held = session.execute(
        select(Lease.comparison_id)
        .join(Comparison, Comparison.id == Lease.comparison_id)
        .where(Lease.annotator_id == annotator_id, ~_labeled_by(annotator_id), allowed)
        .order_by(Lease.comparison_id)
        .limit(1)
    ).scalar()
    if held is not None:
        _lease(session, held, annotator_id, now + timedelta(seconds=_lease_seconds_of(session, held)))
        return held

    # A lease counts only while its holder has not labeled the comparison yet: after a submit, the holder's lease
    # lasts until their next claim, and counting it then took the room of the comparison's last label away.
    reserved_by_others = (
        select(func.count())
        .where(Lease.comparison_id == Comparison.id, Lease.annotator_id != annotator_id,
               ~exists().where(Label.comparison_id == Lease.comparison_id, Label.annotator_id == Lease.annotator_id))
        .correlate(Comparison)
        .scalar_subquery()
    )
    has_room = Comparison.label_count + reserved_by_others < labels_needed()
    passed_over: list[int] = []
    wait_for_locked = False
    while True:
        # On PostgreSQL, FOR UPDATE SKIP LOCKED lets concurrent claims pass over a comparison that
        # another annotator is claiming or labeling this instant instead of queueing behind it.
        # SQLite ignores the clause: BEGIN IMMEDIATE already runs one claim at a time.
        candidates = select(Comparison.id).where(
            Comparison.done.is_(False), allowed, ~_labeled_by(annotator_id), has_room
        )
        if passed_over:
            candidates = candidates.where(Comparison.id.not_in(passed_over))
        candidates = candidates.order_by(
            Comparison.done, Comparison.priority.desc(), func.coalesce(Comparison.queue_key, 0), Comparison.id
        ).limit(1)
        if wait_for_locked:
            next_id = _wait_for_locked_candidate(session, candidates)
        else:
            next_id = session.execute(candidates.with_for_update(of=Comparison, skip_locked=True)).scalar()
        if next_id is None and not wait_for_locked and session.get_bind().dialect.name != "sqlite":
            # Skipped rows may be all that is left for this annotator (the last item of a queue, which another
            # annotator is labeling this instant): "nothing left" would be wrong, so wait for them briefly.
            wait_for_locked = True
            continue
        if next_id is None or _still_has_room(session, next_id, has_room):
            break
        passed_over.append(next_id)
    session.execute(delete(Lease).where(Lease.annotator_id == annotator_id))
    if next_id is not None:
        _lease(session, next_id, annotator_id, now + timedelta(seconds=_lease_seconds_of(session, next_id)))
    return next_id


def _wait_for_locked_candidate(session: Session, candidates):  # noqa: ANN001, ANN202
    """The first candidate, waiting at most ``MAX_CLAIM_LOCK_WAIT_MS`` for a row another transaction holds; None if
    none is left or the wait ran out. The wait is shorter than PostgreSQL's ``deadlock_timeout`` (1 s by default),
    so a claim that gives up never makes the server abort the other transaction (a label being submitted) as a
    deadlock; it runs in a savepoint, so a timeout leaves this transaction usable."""
    try:
        with session.begin_nested():
            previous = session.execute(text("SELECT current_setting('lock_timeout')")).scalar()
            session.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": f"{MAX_CLAIM_LOCK_WAIT_MS}ms"})
            next_id = session.execute(candidates.with_for_update(of=Comparison)).scalar()
            session.execute(text("SELECT set_config('lock_timeout', :previous, true)"), {"previous": previous})
            return next_id
    except OperationalError:  # lock_timeout: the other transaction still holds it
        return None


def _still_has_room(session: Session, comparison_id: int, has_room) -> bool:  # noqa: ANN001
    """Check again, in a new statement, a comparison just locked. Under PostgreSQL's READ COMMITTED
    the locking SELECT judged the row by a snapshot taken before the lock was granted, so it may have
    missed the lease of a claim that committed while we waited; a new statement sees it. On SQLite
    this is always true (the claim holds the write lock throughout)."""
    if session.get_bind().dialect.name == "sqlite":
        return True
    return bool(session.execute(select(has_room).where(Comparison.id == comparison_id)).scalar())


def requeue_comparisons(session: Session, comparison_ids: list[int], *, priority: int) -> int:
    """Ask for one more label on each comparison (a second opinion: its earlier annotators are not
    asked again) and raise it to at least ``priority``. Returns how many comparisons exist."""
    found = 0
    for chunk in chunked(sorted(set(comparison_ids)), 1):
        found += session.execute(
            update(Comparison)
            .where(Comparison.id.in_(chunk))
            .values(extra_labels=Comparison.extra_labels + 1,
                    priority=case((Comparison.priority < priority, priority), else_=Comparison.priority))
        ).rowcount
    refresh_comparison_counts(session, list(comparison_ids))
    return found


def reserve_for(session: Session, *, annotator_id: int, comparison_id: int, now: datetime | None = None) -> None:
    """Reserve one comparison for this annotator (after undo, or to change a label from history)."""
    now = now or utc_now()
    session.execute(delete(Lease).where(Lease.annotator_id == annotator_id))
    _lease(session, comparison_id, annotator_id, now + timedelta(seconds=_lease_seconds_of(session, comparison_id)))


@dataclass(frozen=True)
class SubmitResult:
    label_id: int
    changed: bool  # False for a repeated identical submit


def submit_label(session: Session, label: LabelInput, *, now: datetime | None = None) -> SubmitResult:
    """Store ``label`` for its annotator, update the comparison's counts and release the lease.

    Raises ``QueueError`` for an unknown comparison, or for a new label on a comparison that
    already has the labels its dataset's overlap asks for (or is reserved by others up to that number).
    """
    now = now or utc_now()
    # Lock the comparison (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers) so that
    # two annotators' submits for one comparison are judged one after the other, never both as "room left".
    comparison = session.get(Comparison, label.comparison_id, with_for_update=True)
    if comparison is None:
        raise QueueError(f"comparison {label.comparison_id} does not exist")
    mine = session.execute(
        select(Label).where(Label.comparison_id == label.comparison_id, Label.annotator_id == label.annotator_id)
    ).scalar_one_or_none()
    if mine is not None and (mine.choice, mine.strength, mine.comment, mine.shown_left, mine.ranking, mine.steps) == (
        label.choice,
        label.strength,
        label.comment,
        label.shown_left,
        label.ranking,
        label.steps,
    ):
        return SubmitResult(mine.id, changed=False)
    # Every label that adds a person to a comparison (a new label, skip included, or a skip turned
    # into a vote) needs room: the comparison must still want labels, counting reservations by others
    # unless this annotator holds one. Changing one's own vote (a to b) adds nobody.
    adds_a_voter = mine is None or (mine.choice == "skip" and label.choice != "skip")
    if adds_a_voter:
        needed = session.execute(select(labels_needed()).where(Comparison.id == label.comparison_id)).scalar_one()
        i_hold_lease = session.execute(
            select(Lease.comparison_id).where(
                Lease.comparison_id == label.comparison_id,
                Lease.annotator_id == label.annotator_id,
                Lease.expires_at > now,
            )
        ).first() is not None
        others = session.execute(
            select(func.count()).where(
                Lease.comparison_id == label.comparison_id,
                Lease.annotator_id != label.annotator_id,
                Lease.expires_at > now,
            )
        ).scalar_one()
        taken = comparison.label_count + (0 if i_hold_lease else others)
        if taken >= needed:
            raise QueueError(
                f"comparison {label.comparison_id} already has the {needed} label(s) it needs"
                + ("" if comparison.label_count >= needed else " reserved by other annotators")
                + ". Take the next one."
            )
    label_id = upsert_label(session, label)
    session.execute(delete(Lease).where(Lease.annotator_id == label.annotator_id, Lease.comparison_id == label.comparison_id))
    refresh_comparison_counts(session, [label.comparison_id])
    return SubmitResult(label_id, changed=True)


def undo_last_label(session: Session, *, annotator_id: int) -> int | None:
    """Delete this annotator's most recent label, reserve that comparison for them again, and
    return its id (None when they have no label)."""
    last = session.execute(
        select(Label.id, Label.comparison_id)
        .where(Label.annotator_id == annotator_id)
        .order_by(Label.updated_at.desc(), Label.id.desc())
        .limit(1)
    ).first()
    if last is None:
        return None
    session.execute(delete(Label).where(Label.id == last.id))
    refresh_comparison_counts(session, [last.comparison_id])
    reserve_for(session, annotator_id=annotator_id, comparison_id=last.comparison_id)
    return last.comparison_id


def label_of(session: Session, *, annotator_id: int, comparison_id: int) -> Label | None:
    return session.execute(
        select(Label).where(Label.annotator_id == annotator_id, Label.comparison_id == comparison_id)
    ).scalar_one_or_none()


@dataclass(frozen=True)
class HistoryItem:
    comparison_id: int
    choice: str
    strength: int | None
    shown_left: str | None
    comment: str | None
    updated_at: datetime
    prompt_excerpt: str
    ranking: dict | None = None  # a ranked label's order: {"groups", "shown", "all_bad"} (storage.ranking)
    steps: dict | None = None  # step marks: {"marks", "final"} (storage.steps)


def label_history(session: Session, *, annotator_id: int, limit: int = 50) -> list[HistoryItem]:
    """This annotator's labels, most recent first."""
    rows = session.execute(
        select(Label.comparison_id, Label.choice, Label.strength, Label.shown_left, Label.comment, Label.updated_at,
               Prompt.text, Prompt.messages, Label.ranking, Label.steps)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .where(Label.annotator_id == annotator_id)
        .order_by(Label.updated_at.desc(), Label.id.desc())
        .limit(limit)
    ).all()
    return [
        HistoryItem(comparison_id, choice, strength, shown_left, comment, updated_at, prompt_excerpt(text, messages),
                    ranking, steps)
        for comparison_id, choice, strength, shown_left, comment, updated_at, text, messages, ranking, steps in rows
    ]


@dataclass(frozen=True)
class Progress:
    labeled_by_me: int
    open_comparisons: int  # still wanting labels, open to this annotator and not yet labeled by them


def progress_of(session: Session, *, annotator_id: int, dataset_id: int | None = None) -> Progress:
    """This annotator's label count (in ``dataset_id``, or in all datasets) and the comparisons still
    open to them: wanting labels, not archived, not yet labeled by them, in the datasets they may
    label (in ``dataset_id`` alone when given)."""
    mine = select(func.count()).select_from(Label).join(Comparison, Comparison.id == Label.comparison_id).where(
        Label.annotator_id == annotator_id)
    if dataset_id is not None:
        mine = mine.where(Comparison.dataset_id == dataset_id)
    allowed = Comparison.dataset_id.in_(labelable_dataset_ids(annotator_id, dataset_id)) & Comparison.archived.is_(False)
    open_count = session.execute(
        select(func.count()).where(Comparison.done.is_(False), allowed, ~_labeled_by(annotator_id))
    ).scalar_one()
    return Progress(session.execute(mine).scalar_one(), open_count)
