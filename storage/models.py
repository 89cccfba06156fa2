"""The tables of a RewardLab store.

One data model serves the three jobs:

* labeling reads ``Prompt``, ``Completion`` and ``Comparison`` and writes ``Label``;
* training reads labels through the export path and writes ``TrainingJob``, ``TrainingMetric``
  and ``RegisteredModel``;
* inspection and scoring read ``RegisteredModel`` (the table keeps its first name, ``rewardmodel``).

Content is addressed by hash (``Prompt.content_hash``, ``Completion.content_hash``) so that
importing the same rows twice adds nothing, and uniqueness lives in constraints rather than in
application checks: one label per (comparison, annotator), one comparison per pair of completions.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, CheckConstraint, Column, DateTime, Index, Text, TypeDecorator, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A point in time, always read back as an aware UTC ``datetime`` on either database.

    PostgreSQL stores it as ``timestamptz``; SQLite has no time zones, so the value is converted to
    UTC before it is written and marked UTC when read. A naive value is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: RewardLab stores aware UTC times (use utc_now())")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Choice(str, enum.Enum):
    """What an annotator said about a comparison, in stored order (A = ``completion_a``)."""

    A = "a"
    B = "b"
    TIE = "tie"
    BOTH_BAD = "both_bad"
    SKIP = "skip"
    # A ranking of a ranking item's completions; the order itself is in ``Label.ranking``.
    RANKED = "ranked"
    # Marks on a reasoning trace's steps (a steps dataset); the marks themselves are in ``Label.steps``.
    STEPS = "steps"


class Role(str, enum.Enum):
    ANNOTATOR = "annotator"
    ENGINEER = "engineer"
    ADMIN = "admin"
    # Imported labels are attributed to a source user (``import:<file name>``) that cannot log in.
    SOURCE = "source"


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


def _one_of(column: str, values: type[enum.Enum]) -> str:
    # Enums are stored as their string values with a CHECK, not as SQLAlchemy Enum columns:
    # those store member *names* and become native ENUM types on PostgreSQL, awkward to migrate.
    allowed = ", ".join(f"'{member.value}'" for member in values)
    return f"{column} IN ({allowed})"


class PromptKind(str, enum.Enum):
    TEXT = "text"
    CHAT = "chat"


class Question(str, enum.Enum):
    """What a dataset asks its annotators."""

    PAIRWISE = "pairwise"  # which of two completions is better
    RANKING = "ranking"  # order 3 to 9 completions best to worst (ties share a place)
    STEPS = "steps"  # mark each step of one reasoning trace correct, neutral or wrong (process supervision)


class Dataset(SQLModel, table=True):
    """A named unit of labeling work (a project): its comparisons, who labels them and how.

    ``prompt_kind`` is fixed by the first import (NULL until then): a dataset holds text prompts or
    chat prompts, never both, so everything trained or exported from it has one shape.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    prompt_kind: Optional[str] = Field(default=None, max_length=10, description="'text' or 'chat'; NULL while empty")
    question: str = Field(default=Question.PAIRWISE.value, max_length=10,
                          description="'pairwise', 'ranking' or 'steps', fixed when the dataset is made")
    step_separator: Optional[str] = Field(
        default=None, max_length=200,
        description="a steps dataset's split rule, fixed when it is made: NULL = blank-line paragraphs of the thinking, "
                    "then the answer; 'text:SEP' = split at the string SEP; 'regex:PATTERN' = split at the pattern")
    guidelines: str = Field(default="", sa_column=Column(Text, nullable=False))
    overlap: int = Field(default=1, description="how many annotators label each comparison (1 to 10)")
    lease_seconds: int = Field(default=900, description="how long a comparison handed out stays reserved")
    default_priority: int = Field(default=0, description="priority of comparisons imported without one")
    open_to_all: bool = Field(default=True, description="every annotator may label it; else only its members")
    archived: bool = Field(default=False, description="archived datasets hand out nothing and are hidden from Label")
    # --- the active-learning loop (core.loop)
    queue_order: str = Field(default="priority", max_length=12,
                             description="'priority' (then import order) or 'uncertainty' (then the model's margin)")
    queue_model: Optional[str] = Field(default=None, max_length=200,
                                       description="registered model that orders the queue; 'latest' = the promoted one")
    random_fraction: float = Field(default=0.1, description="share of items served in random order (the control arm)")
    retrain_every: Optional[int] = Field(default=None, description="queue a training job after this many new human labels")
    retrain_config: Optional[dict[str, Any]] = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True),
        description="the training config the loop retrains with (the dataset's last training job's)")
    labels_at_retrain: int = Field(default=0, description="human labels in the dataset when the loop last queued a job")
    promoted_model: Optional[str] = Field(default=None, max_length=200, description="the loop's current model")
    promotion_tolerance: float = Field(default=0.02, description="a new version is promoted unless its held-out "
                                                                 "accuracy is lower than the current one's by more")
    min_heldout_pairs: int = Field(default=30, description="held-out pairs both models must score before the loop "
                                                           "judges a new version (fewer: the current model is kept)")
    uncertainty: str = Field(default="margin", max_length=12,
                             description="'margin' (the model's |r(a) - r(b)|) or 'ensemble' (bootstrap heads' disagreement)")
    ensemble_size: int = Field(default=5, description="heads in the ensemble (2 to 16)")
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)

    __table_args__ = (
        CheckConstraint("queue_order IN ('priority', 'uncertainty')", name="dataset_queue_order_known"),
        CheckConstraint("random_fraction BETWEEN 0 AND 1", name="dataset_random_fraction_range"),
        CheckConstraint("uncertainty IN ('margin', 'ensemble')", name="dataset_uncertainty_known"),
        CheckConstraint("ensemble_size BETWEEN 2 AND 16", name="dataset_ensemble_size_range"),
        CheckConstraint("prompt_kind IS NULL OR prompt_kind IN ('text', 'chat')", name="dataset_prompt_kind_known"),
        CheckConstraint(_one_of("question", Question), name="dataset_question_known"),
        CheckConstraint("overlap BETWEEN 1 AND 10", name="dataset_overlap_range"),
        CheckConstraint("lease_seconds BETWEEN 10 AND 86400", name="dataset_lease_range"),
    )


class DatasetMember(SQLModel, table=True):
    """An annotator named to label a dataset that is not open to all."""

    dataset_id: int = Field(foreign_key="dataset.id", primary_key=True)
    user_id: int = Field(foreign_key="user.id", primary_key=True, index=True)


class Prompt(SQLModel, table=True):
    """A prompt: plain text (``text``) or chat messages (``messages``), never both."""

    id: Optional[int] = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, description="sha256 of the content")
    text: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    messages: Optional[list[dict[str, Any]]] = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)

    __table_args__ = (
        CheckConstraint("(text IS NULL) <> (messages IS NULL)", name="prompt_text_xor_messages"),
    )


class Completion(SQLModel, table=True):
    """One response to a prompt, with the model or source that produced it."""

    id: Optional[int] = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    content_hash: str = Field(max_length=64, description="sha256 of the text (unique per prompt)")
    text: str = Field(sa_column=Column(Text, nullable=False))
    model: Optional[str] = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("prompt_id", "content_hash", name="completion_once_per_prompt"),)


class Comparison(SQLModel, table=True):
    """Two completions of one prompt, to be labeled, in one dataset. Stored with
    ``completion_a_id < completion_b_id`` so that a pair has exactly one row per dataset whichever
    order it arrived in. A steps item (a steps dataset) is one completion whose steps are marked: it names
    that completion on both sides, so leases, overlap, priority and archiving work as for pairs."""

    id: Optional[int] = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    completion_a_id: int = Field(foreign_key="completion.id")
    completion_b_id: int = Field(foreign_key="completion.id")
    priority: int = Field(default=0, description="higher is labeled first")
    source: str = Field(default="", max_length=300, description="where the pair came from")
    label_count: int = Field(default=0, description="labels other than skip, kept by storage.queue")
    extra_labels: int = Field(default=0, description="labels wanted beyond the overlap (sent back for review)")
    done: bool = Field(default=False, description="label_count has reached the dataset's overlap + extra_labels")
    archived: bool = Field(default=False, description="set aside by an engineer: never handed out, never exported")
    # Written by the loop's scoring job, never by a labeling request:
    model_margin: Optional[float] = Field(default=None, description="|r(a) - r(b)| under the dataset's queue model "
                                                                    "(a ranking item: its smallest gap)")
    queue_key: Optional[float] = Field(default=None, description="order among equal priorities, 0 first; NULL = 0")
    arm: Optional[str] = Field(default=None, max_length=12, description="'uncertainty' or 'random' (the control arm)")
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)

    __table_args__ = (
        CheckConstraint("arm IS NULL OR arm IN ('uncertainty', 'random')", name="comparison_arm_known"),
        UniqueConstraint("dataset_id", "completion_a_id", "completion_b_id", name="comparison_once_per_pair"),
        CheckConstraint("completion_a_id <= completion_b_id", name="comparison_pair_ordered"),
        # The queue reads open comparisons in this order and stops at the first it may hand out,
        # so finished ones never have to be scanned past.
        Index("comparison_queue_order", "done", text("priority DESC"), text("coalesce(queue_key, 0)"), "id"),
    )


class RankingSlot(SQLModel, table=True):
    """One of the completions of a ranking item (a ``Comparison`` in a ranking dataset).

    A ranking item's comparison row names its lowest and highest completion ids as ``completion_a_id``
    and ``completion_b_id`` (so leases, overlap, priority and archiving work as for pairs); the whole
    set, in the order the file gave it, is here.
    """

    comparison_id: int = Field(foreign_key="comparison.id", primary_key=True)
    completion_id: int = Field(foreign_key="completion.id", primary_key=True)
    position: int = Field(description="place in the imported row, from 0")


class TraceStep(SQLModel, table=True):
    """One step of a steps item's completion, as a span of its text: ``text[char_start:char_end]`` is the
    step, and the separator after it runs to the next step's ``char_start`` (the text's end for the last), so
    the prefix a process reward model scores for step k is ``text[:next start]``. Spans keep the stored text the
    one truth: the steps always join back into exactly what was imported."""

    __tablename__ = "trace_step"
    comparison_id: int = Field(foreign_key="comparison.id", primary_key=True)
    position: int = Field(primary_key=True, description="step number, from 0")
    char_start: int
    char_end: int
    in_answer: bool = Field(default=False, description="the step is (in) the final answer, after the last </think>")

    __table_args__ = (CheckConstraint("0 <= char_start AND char_start < char_end", name="trace_step_span"),)


class Lease(SQLModel, table=True):
    """A comparison reserved for one annotator until ``expires_at``, so that two people are not
    handed the same item beyond the overlap. An expired lease frees it."""

    comparison_id: int = Field(foreign_key="comparison.id", primary_key=True)
    annotator_id: int = Field(foreign_key="user.id", primary_key=True, index=True)
    expires_at: datetime = Field(sa_type=UtcDateTime)


class User(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    role: str = Field(default=Role.ANNOTATOR.value, max_length=20)
    password_hash: Optional[str] = Field(default=None, max_length=300)
    disabled_at: Optional[datetime] = Field(default=None, sa_type=UtcDateTime, description="login disabled (labels kept)")
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)

    __table_args__ = (
        CheckConstraint(_one_of("role", Role), name="user_role_known"),
        # Active login names are unique whatever their case ("ADM" and "adm" would be two people to the queue
        # and one to a reader); import sources (no password) may differ by case, as file names do.
        Index("uq_login_name_lower", text("lower(name)"), unique=True,
              sqlite_where=text("password_hash IS NOT NULL AND disabled_at IS NULL"),
              postgresql_where=text("password_hash IS NOT NULL AND disabled_at IS NULL")),
    )


class LoginSession(SQLModel, table=True):
    """A logged-in browser or script: kept in the store, so a restart of the app logs nobody out, and an
    admin's password reset, role change or disable ends every session of that user at its next request.
    Only a hash of the token is stored: a copy of the store logs nobody in."""

    __tablename__ = "login_session"
    id: Optional[int] = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, description="sha256 of the cookie's token, hex")
    user_id: int = Field(foreign_key="user.id", index=True)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    ended_at: Optional[datetime] = Field(default=None, sa_type=UtcDateTime, description="logged out or revoked")


class Label(SQLModel, table=True):
    """One annotator's judgement of one comparison (at most one, by constraint)."""

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", index=True)
    annotator_id: int = Field(foreign_key="user.id")
    choice: str = Field(max_length=10, description="a Choice value")
    strength: Optional[int] = Field(default=None, description="1 = slightly better, 2 = clearly better")
    margin: Optional[float] = Field(default=None, description="margin given by an imported source")
    shown_left: Optional[str] = Field(default=None, max_length=1, description="'a' or 'b': the side shown left")
    comment: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    seconds_spent: Optional[float] = None
    ranking: Optional[dict[str, Any]] = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True),
        description='a ranked label: {"groups": [[completion ids], ...] best first, ties in one group, '
                    '"shown": [completion ids in the order shown], "all_bad": bool}',
    )
    steps: Optional[dict[str, Any]] = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True),
        description='marks on a steps item: {"marks": ["+", "0", "-" or null (unreviewed), one per step], '
                    '"final": "correct", "wrong" or null}',
    )
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)

    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id", name="label_once_per_annotator"),
        CheckConstraint("(choice = 'ranked') = (ranking IS NOT NULL)", name="label_ranking_iff_ranked"),
        CheckConstraint("(choice = 'steps') = (steps IS NOT NULL)", name="label_steps_iff_steps"),
        # An annotator's history, undo and progress read their labels newest first.
        Index("label_history_order", "annotator_id", "updated_at", "id"),
        CheckConstraint(_one_of("choice", Choice), name="label_choice_known"),
        CheckConstraint("strength IS NULL OR strength IN (1, 2)", name="label_strength_known"),
        CheckConstraint("shown_left IS NULL OR shown_left IN ('a', 'b')", name="label_shown_left_known"),
    )


class TrainingJob(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    status: str = Field(default=JobStatus.QUEUED.value, max_length=20, index=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    pid: Optional[int] = None
    heartbeat_at: Optional[datetime] = Field(default=None, sa_type=UtcDateTime)
    log_path: Optional[str] = None
    output_dir: Optional[str] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    current_step: int = 0
    total_steps: Optional[int] = None
    cancel_requested: bool = False
    resume: bool = Field(default=False, description="continue from the last complete checkpoint")
    reward_model_name: Optional[str] = None
    kind: str = Field(default="train", max_length=12, description="'train', or 'rescore' (the loop's queue scoring)")
    note: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True),
                                description="what the loop decided when the job ended (promoted or not, and why)")
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    started_at: Optional[datetime] = Field(default=None, sa_type=UtcDateTime)
    finished_at: Optional[datetime] = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (CheckConstraint(_one_of("status", JobStatus), name="job_status_known"),)


class TrainingMetric(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="trainingjob.id", index=True)
    step: int
    name: str = Field(max_length=100)
    value: float

    __table_args__ = (UniqueConstraint("job_id", "step", "name", name="metric_once_per_step"),)


class RegisteredModel(SQLModel, table=True):
    """A trained reward model that Inspect, ``score`` and ``eval`` load by name."""

    __tablename__ = "rewardmodel"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    path: str
    base_model: Optional[str] = None
    job_id: Optional[int] = Field(default=None, foreign_key="trainingjob.id")
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_hash: Optional[str] = Field(default=None, max_length=64)
    n_pairs: Optional[int] = None
    eval_accuracy: Optional[float] = None
    eval_margin: Optional[float] = None
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class LoopEvaluation(SQLModel, table=True):
    """How one model version of a dataset's loop does on the dataset's labeled pairs, by arm, and
    its calibration: written by the loop's scoring job after the version is promoted (or set)."""

    id: Optional[int] = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    model_name: str = Field(max_length=200)
    labels: int = Field(description="human labels in the dataset when the model's training data was taken")
    heldout_accuracy: Optional[float] = None
    arms: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False),
                                 description='{"uncertainty": {"pairs", "accuracy"}, "random": {...}}')
    calibration: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False),
                                              description="bins of sigma(r_chosen - r_rejected) against human agreement")
    human_ceiling: Optional[float] = Field(default=None, description="agreement between humans on pairs with 2+ labels")
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class Setting(SQLModel, table=True):
    """Store-wide settings that admins change at run time (per-dataset ones live on ``Dataset``)."""

    key: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_column=Column(Text, nullable=False))
