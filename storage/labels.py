"""Writing labels and the users who give them.

A label is an upsert on ``UNIQUE(comparison_id, annotator_id)``: submitting the same judgement
twice (a double click, a retried request) leaves one row, and changing one's mind updates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from storage.bulk import dialect_insert, insert_ignoring_conflicts
from storage.models import Choice, Label, Role, User, utc_now

VALID_CHOICES = tuple(choice.value for choice in Choice)


class LabelError(ValueError):
    """A label that cannot be stored; the message says which value is wrong."""


def ensure_user(session: Session, name: str, *, role: Role = Role.ANNOTATOR) -> int:
    """The id of user ``name``, created with ``role`` if missing (an existing user keeps its role)."""
    insert_ignoring_conflicts(
        session,
        User,
        [{"name": name, "role": role.value, "password_hash": None}],
        conflict_columns=["name"],
    )
    return session.execute(select(User.id).where(User.name == name)).scalar_one()


@dataclass(frozen=True)
class LabelInput:
    comparison_id: int
    annotator_id: int
    choice: str
    strength: int | None = None
    shown_left: str | None = None
    comment: str | None = None
    seconds_spent: float | None = None
    ranking: dict[str, Any] | None = None  # for choice "ranked": see Label.ranking
    steps: dict[str, Any] | None = None  # for choice "steps": see Label.steps

    def __post_init__(self) -> None:
        if (self.choice == "ranked") != (self.ranking is not None):
            raise LabelError("a ranking goes with choice 'ranked', and choice 'ranked' needs a ranking")
        if (self.choice == "steps") != (self.steps is not None):
            raise LabelError("step marks go with choice 'steps', and choice 'steps' needs step marks")
        if self.choice not in VALID_CHOICES:
            raise LabelError(f"choice must be one of {', '.join(VALID_CHOICES)}, got {self.choice!r}")
        if self.strength is not None and self.strength not in (1, 2):
            raise LabelError(f"strength must be 1 (slightly better) or 2 (clearly better), got {self.strength!r}")
        if self.strength is not None and self.choice not in ("a", "b"):
            raise LabelError(f"strength applies to a preference for a or b, not to {self.choice!r}")
        if self.shown_left not in (None, "a", "b"):
            raise LabelError(f"shown_left must be 'a' or 'b', got {self.shown_left!r}")
        if self.seconds_spent is not None and self.seconds_spent < 0:
            raise LabelError("seconds_spent cannot be negative")


def upsert_label(session: Session, label: LabelInput) -> int:
    """Store ``label`` (insert, or update the annotator's existing label) and return its id."""
    now = utc_now()
    values = {
        "comparison_id": label.comparison_id,
        "annotator_id": label.annotator_id,
        "choice": label.choice,
        "strength": label.strength,
        "margin": None,
        "shown_left": label.shown_left,
        "comment": label.comment,
        "seconds_spent": label.seconds_spent,
        "ranking": label.ranking,
        "steps": label.steps,
        "created_at": now,
        "updated_at": now,
    }
    statement = dialect_insert(session)(Label).values(values)
    changed = {key: statement.excluded[key] for key in ("choice", "strength", "shown_left", "comment", "seconds_spent", "ranking",
                                                     "steps", "updated_at")}
    statement = statement.on_conflict_do_update(
        index_elements=["comparison_id", "annotator_id"], set_=changed
    ).returning(Label.id)
    return session.execute(statement).scalar_one()
