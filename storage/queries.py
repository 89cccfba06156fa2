"""Read queries shared by export, the Data tab and training: what is in the store, and the labels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.bulk import chunked
from storage.models import Comparison, Completion, Dataset, Label, Prompt, Role, User


@dataclass(frozen=True)
class StoreCounts:
    prompts: int
    completions: int
    comparisons: int
    labeled_comparisons: int
    labels: int
    annotators: int  # login accounts that may label (not import sources, not the local operator of a store without logins)


def store_counts(session: Session) -> StoreCounts:
    def count(statement) -> int:  # noqa: ANN001
        return session.execute(statement).scalar_one()

    return StoreCounts(
        prompts=count(select(func.count()).select_from(Prompt)),
        completions=count(select(func.count()).select_from(Completion)),
        comparisons=count(select(func.count()).select_from(Comparison)),
        labeled_comparisons=count(select(func.count(distinct(Label.comparison_id)))),
        labels=count(select(func.count()).select_from(Label)),
        annotators=count(select(func.count()).select_from(User).where(
            User.role != Role.SOURCE.value, User.password_hash.is_not(None), User.disabled_at.is_(None))),
    )


@dataclass(frozen=True)
class Vote:
    annotator: str
    choice: str
    strength: int | None
    margin: float | None
    comment: str | None = None
    seconds_spent: float | None = None
    updated_at: datetime | None = None
    shown_left: str | None = None


def votes_by_comparison(
    session: Session, *, since: datetime | None = None, annotators: Iterable[str] | None = None,
    dataset_ids: Iterable[int] | None = None, comparison_ids: Iterable[int] | None = None,
) -> dict[int, list[Vote]]:
    """Every label of a comparison that is not archived, grouped by comparison id, optionally only
    those updated since ``since``, given by the named annotators (user names, import sources
    included), or in the given datasets."""
    statement = (
        select(Label.comparison_id, User.name, Label.choice, Label.strength, Label.margin, Label.comment,
               Label.seconds_spent, Label.updated_at, Label.shown_left)
        .join(User, User.id == Label.annotator_id)
        .order_by(Label.comparison_id, User.name)
    )
    if since is not None:
        statement = statement.where(Label.updated_at >= since)
    if annotators is not None:
        statement = statement.where(User.name.in_(list(annotators)))
    statement = statement.join(Comparison, Comparison.id == Label.comparison_id).where(Comparison.archived.is_(False))
    if dataset_ids is not None:
        statement = statement.where(Comparison.dataset_id.in_(list(dataset_ids)))
    if comparison_ids is not None:
        statement = statement.where(Comparison.id.in_(list(comparison_ids)))
    votes: dict[int, list[Vote]] = {}
    for comparison_id, *fields in session.execute(statement):
        votes.setdefault(comparison_id, []).append(Vote(*fields))
    return votes


def count_comparisons(session: Session, dataset_ids: Iterable[int] | None = None, *, archived: bool = False) -> int:
    statement = select(func.count()).select_from(Comparison).where(Comparison.archived.is_(archived))
    if dataset_ids is not None:
        statement = statement.where(Comparison.dataset_id.in_(list(dataset_ids)))
    return session.execute(statement).scalar_one()


def dataset_names_of(session: Session, comparison_ids: list[int]) -> dict[int, str]:
    """The dataset name of each comparison."""
    names: dict[int, str] = {}
    for chunk in chunked(sorted(comparison_ids), 1):
        statement = (select(Comparison.id, Dataset.name).join(Dataset, Dataset.id == Comparison.dataset_id)
                     .where(Comparison.id.in_(chunk)))
        names.update({comparison_id: name for comparison_id, name in session.execute(statement)})
    return names


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
    dataset: str = ""
    source: str = ""


def comparison_contents(session: Session, comparison_ids: list[int]) -> dict[int, ComparisonContent]:
    a, b = aliased(Completion), aliased(Completion)
    contents: dict[int, ComparisonContent] = {}
    for chunk in chunked(sorted(comparison_ids), 1):
        statement = (
            select(Comparison.id, Prompt.text, Prompt.messages, a.text, a.model, b.text, b.model, Dataset.name,
                   Comparison.source)
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .join(Dataset, Dataset.id == Comparison.dataset_id)
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
    comment: str | None = None
    updated_at: datetime | None = None


def human_labels(session: Session, dataset_id: int | None = None) -> list[HumanLabel]:
    """Every label given by a person (not an import source), with a short prompt excerpt; of one
    dataset when ``dataset_id`` is given."""
    statement = (
        select(Label.comparison_id, User.name, Label.choice, Label.shown_left, Label.seconds_spent, Prompt.text,
               Prompt.messages, Label.comment, Label.updated_at)
        .join(User, User.id == Label.annotator_id)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .where(User.role != Role.SOURCE.value)
        .order_by(Label.comparison_id, User.name)
    )
    if dataset_id is not None:
        statement = statement.where(Comparison.dataset_id == dataset_id)
    return [
        HumanLabel(cid, name, choice, shown_left, seconds, prompt_excerpt(text, messages), comment, updated_at)
        for cid, name, choice, shown_left, seconds, text, messages, comment, updated_at in session.execute(statement)
    ]


def prompt_excerpt(text: str | None, messages: list[dict[str, Any]] | None, length: int = 120) -> str:
    if messages is not None:
        text = " / ".join(m["content"] for m in messages if m["role"] == "user")
    return text.strip()[:length]
