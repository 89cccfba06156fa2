"""Read queries shared by export, the Data tab and training: what is in the store, and the labels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.bulk import chunked
from storage.models import Comparison, Completion, Label, Prompt, Role, User


@dataclass(frozen=True)
class StoreCounts:
    prompts: int
    completions: int
    comparisons: int
    labeled_comparisons: int
    labels: int
    annotators: int  # people, not import sources


def store_counts(session: Session) -> StoreCounts:
    def count(statement) -> int:  # noqa: ANN001
        return session.execute(statement).scalar_one()

    return StoreCounts(
        prompts=count(select(func.count()).select_from(Prompt)),
        completions=count(select(func.count()).select_from(Completion)),
        comparisons=count(select(func.count()).select_from(Comparison)),
        labeled_comparisons=count(select(func.count(distinct(Label.comparison_id)))),
        labels=count(select(func.count()).select_from(Label)),
        annotators=count(select(func.count()).select_from(User).where(User.role != Role.SOURCE.value)),
    )


@dataclass(frozen=True)
class Vote:
    annotator: str
    choice: str
    strength: int | None
    margin: float | None


def votes_by_comparison(
    session: Session, *, since: datetime | None = None, annotators: Iterable[str] | None = None
) -> dict[int, list[Vote]]:
    """Every label, grouped by comparison id, optionally only those updated since ``since`` or
    given by the named annotators (user names, import sources included)."""
    statement = (
        select(Label.comparison_id, User.name, Label.choice, Label.strength, Label.margin)
        .join(User, User.id == Label.annotator_id)
        .order_by(Label.comparison_id, User.name)
    )
    if since is not None:
        statement = statement.where(Label.updated_at >= since)
    if annotators is not None:
        statement = statement.where(User.name.in_(list(annotators)))
    votes: dict[int, list[Vote]] = {}
    for comparison_id, name, choice, strength, margin in session.execute(statement):
        votes.setdefault(comparison_id, []).append(Vote(name, choice, strength, margin))
    return votes


@dataclass(frozen=True)
class ComparisonContent:
    """What one comparison shows: its prompt and its two completions (with the models that wrote them)."""

    id: int
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    a_text: str
    a_model: str | None
    b_text: str
    b_model: str | None


def comparison_contents(session: Session, comparison_ids: list[int]) -> dict[int, ComparisonContent]:
    a, b = aliased(Completion), aliased(Completion)
    contents: dict[int, ComparisonContent] = {}
    for chunk in chunked(sorted(comparison_ids), 1):
        statement = (
            select(Comparison.id, Prompt.text, Prompt.messages, a.text, a.model, b.text, b.model)
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .join(a, a.id == Comparison.completion_a_id)
            .join(b, b.id == Comparison.completion_b_id)
            .where(Comparison.id.in_(chunk))
        )
        for row in session.execute(statement):
            contents[row[0]] = ComparisonContent(*row)
    return contents


def load_comparison(session: Session, comparison_id: int) -> ComparisonContent | None:
    return comparison_contents(session, [comparison_id]).get(comparison_id)


@dataclass(frozen=True)
class HumanLabel:
    comparison_id: int
    annotator: str
    choice: str
    shown_left: str | None
    seconds_spent: float | None
    prompt_excerpt: str


def human_labels(session: Session) -> list[HumanLabel]:
    """Every label given by a person (not an import source), with a short prompt excerpt."""
    rows = session.execute(
        select(Label.comparison_id, User.name, Label.choice, Label.shown_left, Label.seconds_spent, Prompt.text,
               Prompt.messages)
        .join(User, User.id == Label.annotator_id)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .where(User.role != Role.SOURCE.value)
        .order_by(Label.comparison_id, User.name)
    ).all()
    return [
        HumanLabel(cid, name, choice, shown_left, seconds, prompt_excerpt(text, messages))
        for cid, name, choice, shown_left, seconds, text, messages in rows
    ]


def prompt_excerpt(text: str | None, messages: list[dict[str, Any]] | None, length: int = 120) -> str:
    if messages is not None:
        text = " / ".join(m["content"] for m in messages if m["role"] == "user")
    return text.strip()[:length]
