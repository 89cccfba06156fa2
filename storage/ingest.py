"""Writing validated content into the store in one transaction.

The caller (``core.importer``) has already parsed and validated every row; this module only knows
records and constraints. All inserts are idempotent: ``INSERT ... ON CONFLICT DO NOTHING`` against
the content-hash and pair constraints, so a re-import adds nothing and a concurrent import of the
same file on PostgreSQL cannot create twins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

from sqlalchemy import Float, String, Text, bindparam, case, func, literal, select, true
from sqlalchemy.orm import aliased
from sqlalchemy.sql.base import Executable
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from storage.models import Comparison, Completion, Label, Prompt, Role, User, utc_now

# SQLite allows 32766 bound parameters per statement; PostgreSQL 65535. Stay well under both.
_MAX_PARAMS_PER_STATEMENT = 30_000


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


@dataclass(frozen=True)
class IngestCounts:
    prompts_added: int
    completions_added: int
    comparisons_added: int
    labels_added: int
    comparisons_in_batch: int


def chunked(items: Sequence, params_per_item: int) -> Iterable[Sequence]:
    size = max(1, _MAX_PARAMS_PER_STATEMENT // max(1, params_per_item))
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(session: Session):  # noqa: ANN202
    """The INSERT construct of the session's database, which knows ON CONFLICT."""
    name = session.get_bind().dialect.name
    if name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"RewardLab supports SQLite and PostgreSQL stores, not {name}")
    return sqlite.insert if name == "sqlite" else postgresql.insert


def execute_many(session: Session, statement: Executable, rows: list[dict[str, Any]]) -> None:
    """Run ``statement`` once per row of ``rows`` (dicts keyed by bind name), as an executemany.

    On SQLite the rows bypass SQLAlchemy's per-row parameter building, which on a large import
    costs as much as SQLite's own inserting: each bind's type processor runs only where the type
    has one (JSON, datetimes), a bind absent from the rows takes its own ``value`` once, and the
    tuples go straight to the driver. Every row must have the same keys.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        for chunk in chunked(rows, len(rows[0])):
            session.execute(statement, list(chunk))
        return
    compiled = statement.compile(dialect=dialect, column_keys=list(rows[0]))
    converters = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name not in rows[0]:
            value = bind.effective_value
            constant = process(value) if process else value
            converters.append(lambda row, constant=constant: constant)
        elif process is not None:
            converters.append(lambda row, name=name, process=process: process(row[name]))
        else:
            converters.append(lambda row, name=name: row[name])
    session.connection().exec_driver_sql(str(compiled), [tuple(convert(row) for convert in converters) for row in rows])


def insert_ignoring_conflicts(
    session: Session, model: type[SQLModel], rows: list[dict[str, Any]], *, conflict_columns: list[str]
) -> None:
    """Insert ``rows`` into ``model``'s table, silently skipping rows that hit ``conflict_columns``."""
    if not rows:
        return
    table = model.__table__
    # Columns the rows leave out (timestamps) take their Python default once for the whole batch.
    values = {
        column.name: bindparam(column.name, type_=column.type, value=column.default.arg(None))
        for column in table.columns
        if column.name not in rows[0] and column.default is not None and callable(column.default.arg)
    }
    statement = dialect_insert(session)(table)
    if values:
        statement = statement.values({**{name: bindparam(name, type_=table.c[name].type) for name in rows[0]}, **values})
    execute_many(session, statement.on_conflict_do_nothing(index_elements=conflict_columns), rows)


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


def write_batch(session: Session, batch: IngestBatch, *, priority: int = 0) -> IngestCounts:
    """Write ``batch`` inside the caller's (write) transaction and return what was new.

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
        .from_select(["prompt_id", "content_hash", "text", "model", "created_at"], completion_source)
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
        pair.c.prompt_id, pair.c.low, pair.c.high, literal(priority), literal(batch.source), timestamp
    ).where(true())
    execute_many(
        session,
        insert(Comparison)
        .from_select(
            ["prompt_id", "completion_a_id", "completion_b_id", "priority", "source", "created_at"], comparison_source
        )
        .on_conflict_do_nothing(index_elements=["completion_a_id", "completion_b_id"]),
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
        ).join(pair, (Comparison.completion_a_id == pair.c.low) & (Comparison.completion_b_id == pair.c.high))
        # The first occurrence of a pair in a file wins; later duplicates add nothing.
        execute_many(
            session,
            insert(Label)
            .from_select(
                ["comparison_id", "annotator_id", "choice", "margin", "created_at", "updated_at"],
                label_source.where(true()),
            )
            .on_conflict_do_nothing(index_elements=["comparison_id", "annotator_id"]),
            [{**pair_row, "margin": pair.margin} for pair_row, pair in labeled],
        )

    after = {m: _count(session, m) for m in (Prompt, Completion, Comparison, Label)}
    distinct_pairs = {(p.prompt_hash, frozenset((p.first_hash, p.second_hash))) for p in batch.pairs}
    return IngestCounts(
        prompts_added=after[Prompt] - before[Prompt],
        completions_added=after[Completion] - before[Completion],
        comparisons_added=after[Comparison] - before[Comparison],
        labels_added=after[Label] - before[Label],
        comparisons_in_batch=len(distinct_pairs),
    )
