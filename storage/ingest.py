"""Writing validated content into the store in one transaction.

The caller (``core.data.importer``) has already parsed and validated every row; this module only knows
records and constraints. All inserts are idempotent: ``INSERT ... ON CONFLICT DO NOTHING`` against
the content-hash and pair constraints, so a re-import adds nothing and a concurrent import of the
same file on PostgreSQL cannot create twins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Float, String, Text, bindparam, case, func, literal, select, true
from sqlalchemy.orm import aliased
from sqlmodel import Session, SQLModel

from storage.bulk import dialect_insert, execute_many, insert_ignoring_conflicts
from storage.models import Comparison, Completion, Label, Prompt, Role, User, utc_now
from storage.queue_counts import refresh_comparison_counts
from storage.ranking import RankingRecord, write_ranking_items
from storage.steps import StepItemRecord, write_step_items


class PromptRecord(NamedTuple):
    content_hash: str
    text: str | None
    messages: list[dict[str, Any]] | None


class CompletionRecord(NamedTuple):
    prompt_hash: str
    content_hash: str
    text: str
    model: str | None


class PairRecord(NamedTuple):
    """Two completions (by hash) of one prompt; ``first_wins`` when the source preferred the first
    (an imported chosen/rejected pair), else the pair waits to be labeled."""

    prompt_hash: str
    first_hash: str
    second_hash: str
    first_wins: bool = False
    margin: float | None = None


@dataclass
class IngestBatch:
    source: str
    prompts: dict[str, PromptRecord] = field(default_factory=dict)
    completions: dict[tuple[str, str], CompletionRecord] = field(default_factory=dict)
    pairs: list[PairRecord] = field(default_factory=list)
    rankings: list[RankingRecord] = field(default_factory=list)  # for a ranking dataset, instead of pairs
    steps: list[StepItemRecord] = field(default_factory=list)  # for a steps dataset, instead of pairs


@dataclass(frozen=True)
class IngestCounts:
    prompts_added: int
    completions_added: int
    comparisons_added: int
    labels_added: int
    comparisons_in_batch: int


def _count(session: Session, model: type[SQLModel]) -> int:
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def ensure_source_user(session: Session, name: str) -> int:
    """The id of the non-login user that imported labels are attributed to."""
    insert_ignoring_conflicts(
        session,
        User,
        [{"name": name, "role": Role.SOURCE.value, "password_hash": None}],
        conflict_columns=["name"],
    )
    return session.execute(select(User.id).where(User.name == name)).scalar_one()


def _pair_lookup():  # noqa: ANN202
    """A SELECT that finds, from bound hashes, the prompt and both completions of a pair, with the
    pair's ids in stored order (lower id first)."""
    first, second = aliased(Completion, name="first"), aliased(Completion, name="second")
    low = case((first.id < second.id, first.id), else_=second.id)
    high = case((first.id < second.id, second.id), else_=first.id)
    joined = (
        select(Prompt.id.label("prompt_id"), low.label("low"), high.label("high"), first.id.label("first_id"))
        .join(first, first.prompt_id == Prompt.id)
        .join(second, second.prompt_id == Prompt.id)
        .where(
            Prompt.content_hash == bindparam("prompt_hash", type_=String),
            first.content_hash == bindparam("first_hash", type_=String),
            second.content_hash == bindparam("second_hash", type_=String),
        )
    )
    return joined.subquery("pair")


def write_batch(session: Session, batch: IngestBatch, *, dataset_id: int, priority: int = 0) -> IngestCounts:
    """Write ``batch`` into dataset ``dataset_id`` inside the caller's (write) transaction and return
    what was new. Prompts and completions are shared by content across datasets; comparisons and
    their labels belong to the dataset.

    Ids are resolved by the database (``INSERT ... SELECT`` through the content-hash indexes), so
    no id travels back to Python. New comparisons get ``priority``; existing ones keep theirs.
    """
    insert = dialect_insert(session)
    before = {m: _count(session, m) for m in (Prompt, Completion, Comparison, Label)}
    now = utc_now()
    timestamp = bindparam("created_at", value=now, type_=Prompt.__table__.c.created_at.type)

    insert_ignoring_conflicts(
        session,
        Prompt,
        [{"content_hash": p.content_hash, "text": p.text, "messages": p.messages} for p in batch.prompts.values()],
        conflict_columns=["content_hash"],
    )

    completion_source = select(
        Prompt.id,
        bindparam("content_hash", type_=String),
        bindparam("text", type_=Text),
        bindparam("model", type_=String),
        timestamp,
    ).where(Prompt.content_hash == bindparam("prompt_hash", type_=String))
    execute_many(
        session,
        insert(Completion)
        .from_select(["prompt_id", "content_hash", "text", "model", "created_at"], completion_source, include_defaults=False)
        .on_conflict_do_nothing(index_elements=["prompt_id", "content_hash"]),
        [
            {"content_hash": c.content_hash, "text": c.text, "model": c.model, "prompt_hash": c.prompt_hash}
            for c in batch.completions.values()
        ],
    )

    pair_rows = [
        {"prompt_hash": pair.prompt_hash, "first_hash": pair.first_hash, "second_hash": pair.second_hash}
        for pair in batch.pairs
    ]
    pair = _pair_lookup()
    # SQLite needs a WHERE on an INSERT ... SELECT that has an ON CONFLICT clause, or it reads the
    # ON as a join constraint (https://www.sqlite.org/lang_upsert.html, "Parsing Ambiguity").
    comparison_source = select(
        literal(dataset_id), pair.c.prompt_id, pair.c.low, pair.c.high, literal(priority), literal(batch.source),
        timestamp, literal(0), literal(0), literal(False), literal(False),
    ).where(true())
    execute_many(
        session,
        insert(Comparison)
        .from_select(
            ["dataset_id", "prompt_id", "completion_a_id", "completion_b_id", "priority", "source", "created_at",
             "label_count", "extra_labels", "done", "archived"],
            comparison_source,
            include_defaults=False,
        )
        .on_conflict_do_nothing(index_elements=["dataset_id", "completion_a_id", "completion_b_id"]),
        pair_rows,
    )

    labeled = [(pair_row, pair) for pair_row, pair in zip(pair_rows, batch.pairs, strict=True) if pair.first_wins]
    if labeled:
        annotator_id = ensure_source_user(session, batch.source)
        pair = _pair_lookup()
        label_source = select(
            Comparison.id,
            literal(annotator_id),
            case((pair.c.first_id == pair.c.low, literal("a")), else_=literal("b")),
            bindparam("margin", type_=Float),
            timestamp,
            timestamp,
        ).join(pair, (Comparison.dataset_id == dataset_id) & (Comparison.completion_a_id == pair.c.low)
               & (Comparison.completion_b_id == pair.c.high))
        # The first occurrence of a pair in a file wins; later duplicates add nothing.
        execute_many(
            session,
            insert(Label)
            .from_select(
                ["comparison_id", "annotator_id", "choice", "margin", "created_at", "updated_at"],
                label_source.where(true()),
                include_defaults=False,
            )
            .on_conflict_do_nothing(index_elements=["comparison_id", "annotator_id"]),
            [{**pair_row, "margin": pair.margin} for pair_row, pair in labeled],
        )
        refresh_comparison_counts(session, labeled_by=annotator_id)

    if batch.rankings:
        write_ranking_items(session, batch.rankings, dataset_id=dataset_id, priority=priority, source=batch.source,
                            created_at=now)

    if batch.steps:
        labeled_steps = any(item.marks is not None for item in batch.steps)
        write_step_items(session, batch.steps, dataset_id=dataset_id, priority=priority, source=batch.source,
                         created_at=now, source_user_id=ensure_source_user(session, batch.source) if labeled_steps else None)

    after = {m: _count(session, m) for m in (Prompt, Completion, Comparison, Label)}
    distinct_pairs = {(p.prompt_hash, frozenset((p.first_hash, p.second_hash))) for p in batch.pairs}
    distinct_pairs |= {(r.prompt_hash, frozenset(r.completion_hashes)) for r in batch.rankings}
    distinct_pairs |= {(s.prompt_hash, frozenset((s.completion_hash,))) for s in batch.steps}
    return IngestCounts(
        prompts_added=after[Prompt] - before[Prompt],
        completions_added=after[Completion] - before[Completion],
        comparisons_added=after[Comparison] - before[Comparison],
        labels_added=after[Label] - before[Label],
        comparisons_in_batch=len(distinct_pairs),
    )
