"""Datasets: named units of labeling work, each with its own prompt kind, overlap, lease length,
default priority, guidelines, annotators and open/archived state.

Functions run inside the caller's transaction and raise ``DatasetError`` with a message that says
what to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import case, delete, func, select
from sqlmodel import Session

from storage.models import Comparison, Dataset, DatasetMember, Label, PromptKind, Question, Role, User
from storage.queue_counts import refresh_comparison_counts

DEFAULT_DATASET = "default"
# Bounds of dataset settings, enforced here and listed in core.limits.STORAGE_BOUNDS.
MAX_GUIDELINES_CHARS = 100_000
MIN_OVERLAP, MAX_OVERLAP = 1, 10  # annotators per comparison
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 10, 86_400  # how long a served comparison stays reserved
MAX_DEFAULT_PRIORITY = 1_000_000
DEFAULT_GUIDELINES = (
    "Pick the response that better answers the prompt: correct first, then helpful, then clear.\n\n"
    "* **Tie**: both are equally good.\n* **Both bad**: neither is acceptable.\n"
    "* **Skip**: you cannot judge this one.\n\nJudge the *answer*; the thinking is shown for context."
)
RANKING_GUIDELINES = (
    "Order the responses from best to worst: correct first, then helpful, then clear.\n\n"
    "* Responses that are equally good **share a place**.\n"
    "* Tick **All unacceptable** when none of them should be given to a user (still order them).\n"
    "* **Skip** when you cannot judge.\n\nJudge the *answer*; the thinking is shown for context."
)
STEPS_GUIDELINES = (
    "Mark each step of the reasoning: **correct** (1), **neutral** (2: true but does not move the solution on) or "
    "**wrong** (3: a mistake in fact, logic or arithmetic).\n\n"
    "* At the first wrong step, press **f** (*first wrong step here*): the later steps are left unreviewed.\n"
    "* Then say whether the **final answer** is correct.\n* **Skip** when you cannot judge."
)
GUIDELINES_BY_QUESTION = {Question.PAIRWISE.value: DEFAULT_GUIDELINES, Question.RANKING.value: RANKING_GUIDELINES,
                          Question.STEPS.value: STEPS_GUIDELINES}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DatasetError(ValueError):
    """A dataset that does not exist, or a change it cannot take; the message says what to do."""


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name[:64]) + ("..." if isinstance(name, str) and len(name) > 64 else "") if isinstance(name, str) \
            else repr(name)
        raise DatasetError(
            f"dataset name {shown} is not allowed: use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def dataset_by_name(session: Session, name: str) -> Dataset | None:
    return session.execute(select(Dataset).where(Dataset.name == name)).scalar_one_or_none()


def require_dataset(session: Session, name: str) -> Dataset:
    dataset = dataset_by_name(session, name)
    if dataset is None:
        known = ", ".join(session.execute(select(Dataset.name).order_by(Dataset.name)).scalars()) or "none yet"
        raise DatasetError(f"no dataset named {name!r} (datasets: {known})")
    return dataset


def get_or_create_dataset(session: Session, name: str, question: str | None = None) -> Dataset:
    """The dataset ``name``, made with default settings (asking ``question``, pairwise by default)
    when it does not exist yet."""
    check_dataset_name(name)
    dataset = dataset_by_name(session, name)
    if dataset is None:
        twin = session.execute(select(Dataset.name).where(func.lower(Dataset.name) == name.lower())).scalar()
        if twin is not None:
            raise DatasetError(f"a dataset named {twin!r} exists; names differing only in case are refused, "
                               f"so use {twin!r} or another name")
        question = Question(question or Question.PAIRWISE.value).value
        dataset = Dataset(name=name, question=question, guidelines=GUIDELINES_BY_QUESTION[question])
        session.add(dataset)
        session.flush()
    return dataset


def fix_prompt_kind(session: Session, dataset: Dataset, kind: str, *, what: str) -> None:
    """Fix an empty dataset's prompt kind, or refuse content of the other kind (``what`` names it)."""
    kind = PromptKind(kind).value
    if dataset.prompt_kind is None:
        dataset.prompt_kind = kind
        session.add(dataset)
        session.flush()
    elif dataset.prompt_kind != kind:
        raise DatasetError(
            f"dataset {dataset.name!r} holds {dataset.prompt_kind} prompts and {what} has {kind} prompts: one dataset "
            f"holds one kind, so that what is trained or exported from it has one shape. Import it into another "
            f"dataset, e.g. {dataset.name}-{kind} (--dataset on the command line, 'Into dataset' on the Data tab)"
        )


def fix_question(session: Session, dataset: Dataset, question: str, *, what: str) -> None:
    """Make an empty dataset ask ``question``, or refuse content for another question."""
    question = Question(question).value
    if dataset.question == question:
        return
    has_items = session.execute(select(Comparison.id).where(Comparison.dataset_id == dataset.id).limit(1)).first()
    if has_items is None:
        dataset.question = question
        if dataset.guidelines in GUIDELINES_BY_QUESTION.values():
            dataset.guidelines = GUIDELINES_BY_QUESTION[question]
        session.add(dataset)
        session.flush()
        return
    raise DatasetError(
        f"dataset {dataset.name!r} asks the {dataset.question} question and {what} is for the {question} question: "
        f"one dataset asks one question. Import it into another dataset, e.g. {dataset.name}-{question} "
        "(--dataset on the command line, 'Into dataset' on the Data tab)"
    )


@dataclass(frozen=True)
class DatasetSettings:
    """The changeable settings of a dataset; None leaves a setting as it is."""

    overlap: int | None = None
    lease_seconds: int | None = None
    default_priority: int | None = None
    guidelines: str | None = None
    archived: bool | None = None
    open_to_all: bool | None = None
    members: tuple[str, ...] | None = None  # annotator names; replaces the list


def change_dataset(session: Session, name: str, settings: DatasetSettings) -> Dataset:
    """Apply ``settings`` to dataset ``name``; all of them or, on a bad value, none."""
    dataset = require_dataset(session, name)
    if settings.overlap is not None and not MIN_OVERLAP <= settings.overlap <= MAX_OVERLAP:
        raise DatasetError(f"overlap must be between {MIN_OVERLAP} and {MAX_OVERLAP} annotators per comparison, "
                           f"got {settings.overlap}")
    if settings.lease_seconds is not None and not MIN_LEASE_SECONDS <= settings.lease_seconds <= MAX_LEASE_SECONDS:
        raise DatasetError(f"the lease must be between {MIN_LEASE_SECONDS} and {MAX_LEASE_SECONDS} seconds, "
                           f"got {settings.lease_seconds}")
    if settings.default_priority is not None and not abs(settings.default_priority) <= MAX_DEFAULT_PRIORITY:
        raise DatasetError(f"the default priority must be between -{MAX_DEFAULT_PRIORITY} and {MAX_DEFAULT_PRIORITY}, "
                           f"got {settings.default_priority}")
    if settings.guidelines is not None and len(settings.guidelines) > MAX_GUIDELINES_CHARS:
        raise DatasetError(
            f"the guidelines are {len(settings.guidelines):,} characters; the limit is {MAX_GUIDELINES_CHARS:,}"
        )
    member_ids: list[int] = []
    if settings.members is not None:
        for member in dict.fromkeys(settings.members):
            user = session.execute(select(User).where(User.name == member)).scalar_one_or_none()
            if user is None or user.role == Role.SOURCE.value:
                raise DatasetError(f"no user named {member!r} to add to dataset {name!r}: create them first (adduser)")
            member_ids.append(user.id)
    overlap_changed = settings.overlap is not None and settings.overlap != dataset.overlap
    for field in ("overlap", "lease_seconds", "default_priority", "guidelines", "archived", "open_to_all"):
        value = getattr(settings, field)
        if value is not None:
            setattr(dataset, field, value)
    session.add(dataset)
    if settings.members is not None:
        session.execute(delete(DatasetMember).where(DatasetMember.dataset_id == dataset.id))
        session.add_all(DatasetMember(dataset_id=dataset.id, user_id=user_id) for user_id in member_ids)
    session.flush()
    if overlap_changed:
        refresh_comparison_counts(session, dataset_id=dataset.id)
    return dataset


def member_names(session: Session, dataset_id: int) -> list[str]:
    return list(session.execute(
        select(User.name).join(DatasetMember, DatasetMember.user_id == User.id)
        .where(DatasetMember.dataset_id == dataset_id).order_by(User.name)
    ).scalars())


def may_label(annotator_id: int):  # noqa: ANN201
    """SQL condition on ``Dataset``: this annotator may be handed its comparisons."""
    member = select(DatasetMember.dataset_id).where(DatasetMember.user_id == annotator_id)
    return Dataset.archived.is_(False) & (Dataset.open_to_all.is_(True) | Dataset.id.in_(member))


def labelable_dataset_ids(annotator_id: int, dataset_id: int | None = None):  # noqa: ANN201
    """A SELECT of the ids of the datasets this annotator may label (only ``dataset_id`` when given)."""
    statement = select(Dataset.id).where(may_label(annotator_id))
    return statement if dataset_id is None else statement.where(Dataset.id == dataset_id)


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    prompt_kind: str | None
    question: str  # "pairwise" or "ranking"
    comparisons: int
    labeled: int  # comparisons with at least one label other than skip
    waiting: int  # comparisons that still want labels
    labels: int  # labels other than skip
    overlap: int
    lease_seconds: int
    default_priority: int
    open_to_all: bool
    archived: bool
    guidelines: str
    members: tuple[str, ...]


def summarize_datasets(session: Session, *, annotator_id: int | None = None) -> list[DatasetSummary]:
    """Every dataset with its counts, by name; only those ``annotator_id`` may label when given."""
    counts = (
        select(
            Comparison.dataset_id,
            func.count().label("comparisons"),
            func.coalesce(func.sum(case((Comparison.label_count > 0, 1), else_=0)), 0).label("labeled"),
            func.coalesce(func.sum(case((Comparison.done.is_(False), 1), else_=0)), 0).label("waiting"),
            func.coalesce(func.sum(Comparison.label_count), 0).label("labels"),
        )
        .group_by(Comparison.dataset_id)
        .subquery()
    )
    statement = select(Dataset, counts).outerjoin(counts, counts.c.dataset_id == Dataset.id).order_by(Dataset.name)
    if annotator_id is not None:
        statement = statement.where(may_label(annotator_id))
    summaries = []
    for row in session.execute(statement).all():
        dataset = row[0]
        summaries.append(DatasetSummary(
            dataset.name, dataset.prompt_kind, dataset.question, int(row.comparisons or 0), int(row.labeled or 0), int(row.waiting or 0),
            int(row.labels or 0), dataset.overlap, dataset.lease_seconds, dataset.default_priority, dataset.open_to_all,
            dataset.archived, dataset.guidelines,
            tuple(member_names(session, dataset.id)) if not dataset.open_to_all else (),
        ))
    return summaries


def open_dataset_ids(session: Session) -> list[int]:
    """Every dataset that is not archived: what "all datasets" means for export and training."""
    return list(session.execute(select(Dataset.id).where(Dataset.archived.is_(False)).order_by(Dataset.id)).scalars())


def dataset_ids_for(session: Session, names: list[str]) -> tuple[list[int], str | None]:
    """The ids of datasets ``names`` and their common prompt kind; refuses unknown names and a mix
    of kinds (a model is trained on one shape of prompt)."""
    datasets = [require_dataset(session, check_dataset_name(name)) for name in dict.fromkeys(names)]
    kinds = {dataset.prompt_kind for dataset in datasets if dataset.prompt_kind is not None}
    if len(kinds) > 1:
        by_kind = ", ".join(f"{dataset.name} ({dataset.prompt_kind})" for dataset in datasets)
        raise DatasetError(f"datasets of different prompt kinds cannot be combined: {by_kind}. Pick datasets of one kind")
    return [dataset.id for dataset in datasets], next(iter(kinds), None)


def may_label_comparison(session: Session, *, annotator_id: int, comparison_id: int) -> bool:
    """Whether this annotator may label this comparison (it is not archived, and its dataset is open
    to them and not archived).
    True for a comparison that does not exist, which the queue then refuses by name."""
    found = session.execute(select(Comparison.dataset_id, Comparison.archived).where(Comparison.id == comparison_id)).first()
    if found is None:
        return True
    if found.archived:
        return False
    return session.execute(labelable_dataset_ids(annotator_id, found.dataset_id)).first() is not None


def dataset_name_of(session: Session, comparison_id: int) -> str | None:
    return session.execute(
        select(Dataset.name).join(Comparison, Comparison.dataset_id == Dataset.id).where(Comparison.id == comparison_id)
    ).scalar()


def dataset_id_of(session: Session, comparison_id: int) -> int | None:
    return session.execute(select(Comparison.dataset_id).where(Comparison.id == comparison_id)).scalar()
