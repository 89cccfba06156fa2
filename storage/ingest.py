"""Writing validated content into the store in one transaction.

The caller (``core.importer``) has already parsed and validated every row; this module only knows
records and constraints. All inserts are idempotent: ``INSERT ... ON CONFLICT DO NOTHING`` against
the content-hash and pair constraints, so a re-import adds nothing and a concurrent import of the
same file on PostgreSQL cannot create twins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from storage.models import Comparison, Completion, Label, Prompt, Role, User, utc_now

# SQLite allows 32766 bound parameters per statement; PostgreSQL 65535. Stay well under both.
_MAX_PARAMS_PER_STATEMENT = 30_000


@dataclass(frozen=True)
class PromptRecord:
    content_hash: str
    text: str | None
    messages: list[dict[str, Any]] | None


@dataclass(frozen=True)
class CompletionRecord:
    prompt_hash: str
    content_hash: str
    text: str
    model: str | None


@dataclass(frozen=True)
class PairRecord:
    """Two completions (by hash) of one prompt, optionally with a known winner from the source."""

    prompt_hash: str
    first_hash: str
    second_hash: str
    winner_hash: str | None = None
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


def insert_ignoring_conflicts(
    session: Session, model: type[SQLModel], rows: list[dict[str, Any]], *, conflict_columns: list[str]
) -> None:
    """Insert ``rows`` into ``model``'s table, silently skipping rows that hit ``conflict_columns``."""
    if not rows:
        return
    table = model.__table__
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"RewardLab supports SQLite and PostgreSQL stores, not {dialect}")
    for chunk in chunked(rows, len(rows[0])):
        statement = insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
        session.execute(statement, list(chunk))


def _count(session: Session, model: type[SQLModel]) -> int:
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def _ids_by(session: Session, columns: list, keys: list[tuple]) -> dict[tuple, int]:
    """Map each key tuple (values of ``columns``) to the row id, in chunks."""
    model_id = columns[0].table.c.id
    found: dict[tuple, int] = {}
    if len(columns) == 1:
        for chunk in chunked([k[0] for k in keys], 1):
            for value, row_id in session.execute(select(columns[0], model_id).where(columns[0].in_(chunk))):
                found[(value,)] = row_id
        return found
    # Composite keys: filter on the first column, then match the tuple in Python.
    wanted = set(keys)
    for chunk in chunked(sorted({k[0] for k in keys}), 1):
        for row in session.execute(select(*columns, model_id).where(columns[0].in_(chunk))):
            key = tuple(row[:-1])
            if key in wanted:
                found[key] = row[-1]
    return found


def ensure_source_user(session: Session, name: str) -> int:
    """The id of the non-login user that imported labels are attributed to."""
    insert_ignoring_conflicts(
        session,
        User,
        [{"name": name, "role": Role.SOURCE.value, "password_hash": None, "created_at": utc_now()}],
        conflict_columns=["name"],
    )
    return session.execute(select(User.id).where(User.name == name)).scalar_one()


def write_batch(session: Session, batch: IngestBatch, *, priority: int = 0) -> IngestCounts:
    """Write ``batch`` inside the caller's (write) transaction and return what was new.

    New comparisons get ``priority``; existing ones keep theirs.
    """
    now = utc_now()
    before = {m: _count(session, m) for m in (Prompt, Completion, Comparison, Label)}

    insert_ignoring_conflicts(
        session,
        Prompt,
        [
            {"content_hash": p.content_hash, "text": p.text, "messages": p.messages, "created_at": now}
            for p in batch.prompts.values()
        ],
        conflict_columns=["content_hash"],
    )
    prompt_keys = [(content_hash,) for content_hash in batch.prompts]
    prompt_ids = {key[0]: row_id for key, row_id in _ids_by(session, [Prompt.__table__.c.content_hash], prompt_keys).items()}

    completion_rows = [
        {
            "prompt_id": prompt_ids[c.prompt_hash],
            "content_hash": c.content_hash,
            "text": c.text,
            "model": c.model,
            "created_at": now,
        }
        for c in batch.completions.values()
    ]
    insert_ignoring_conflicts(session, Completion, completion_rows, conflict_columns=["prompt_id", "content_hash"])
    table = Completion.__table__
    completion_ids = _ids_by(
        session,
        [table.c.prompt_id, table.c.content_hash],
        [(row["prompt_id"], row["content_hash"]) for row in completion_rows],
    )

    def completion_id(prompt_hash: str, content_hash: str) -> int:
        return completion_ids[(prompt_ids[prompt_hash], content_hash)]

    comparison_rows: dict[tuple[int, int], dict[str, Any]] = {}
    for pair in batch.pairs:
        low, high = sorted((completion_id(pair.prompt_hash, pair.first_hash), completion_id(pair.prompt_hash, pair.second_hash)))
        comparison_rows.setdefault(
            (low, high),
            {
                "prompt_id": prompt_ids[pair.prompt_hash],
                "completion_a_id": low,
                "completion_b_id": high,
                "priority": priority,
                "source": batch.source,
                "created_at": now,
            },
        )
    insert_ignoring_conflicts(
        session, Comparison, list(comparison_rows.values()), conflict_columns=["completion_a_id", "completion_b_id"]
    )
    table = Comparison.__table__
    comparison_ids = _ids_by(session, [table.c.completion_a_id, table.c.completion_b_id], list(comparison_rows))

    labeled = [pair for pair in batch.pairs if pair.winner_hash is not None]
    if labeled:
        annotator_id = ensure_source_user(session, batch.source)
        label_rows: dict[int, dict[str, Any]] = {}
        for pair in labeled:
            low, high = sorted((completion_id(pair.prompt_hash, pair.first_hash), completion_id(pair.prompt_hash, pair.second_hash)))
            winner = completion_id(pair.prompt_hash, pair.winner_hash)
            # The first occurrence of a pair in a file wins; later duplicates add nothing.
            label_rows.setdefault(
                comparison_ids[(low, high)],
                {
                    "comparison_id": comparison_ids[(low, high)],
                    "annotator_id": annotator_id,
                    "choice": "a" if winner == low else "b",
                    "strength": None,
                    "margin": pair.margin,
                    "shown_left": None,
                    "comment": None,
                    "seconds_spent": None,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        insert_ignoring_conflicts(
            session, Label, list(label_rows.values()), conflict_columns=["comparison_id", "annotator_id"]
        )

    after = {m: _count(session, m) for m in (Prompt, Completion, Comparison, Label)}
    return IngestCounts(
        prompts_added=after[Prompt] - before[Prompt],
        completions_added=after[Completion] - before[Completion],
        comparisons_added=after[Comparison] - before[Comparison],
        labels_added=after[Label] - before[Label],
        comparisons_in_batch=len(comparison_rows),
    )
