"""Moving a whole store to another database (SQLite -> PostgreSQL and back): ``copy_store``.

Rows keep their ids, so every reference (labels to comparisons, metrics to jobs, scores to models)
holds in the copy. The copy runs in one transaction on the target: it is complete or absent.
``store_digest`` summarises every row of every table, so the two stores can be compared after.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Table, func, insert, select, text
from sqlmodel import SQLModel

from storage.engine import Store

COPY_BATCH_ROWS = 5_000


class TransferError(ValueError):
    """A copy that cannot be made; the message says why and what to do."""


@dataclass
class TransferReport:
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _tables() -> list[Table]:
    # Parents before children, so every foreign key points at a row already copied.
    return list(SQLModel.metadata.sorted_tables)


def _row_count(connection, table: Table) -> int:  # noqa: ANN001
    return connection.execute(select(func.count()).select_from(table)).scalar_one()


def copy_store(source: Store, target: Store, *, progress: Callable[[str, int], None] | None = None) -> TransferReport:
    """Copy every row of ``source`` into ``target``, which must be empty. Both are at this
    version's schema (opening a Store upgrades it)."""
    if source.url == target.url:
        raise TransferError("--from and --to name the same store; give the URL of another, empty database. Nothing was written")
    report = TransferReport()
    with source.read() as reading, target.write_engine.begin() as writing:
        occupied = {table.name: n for table in _tables() if (n := _row_count(writing, table))}
        if occupied:
            listed = ", ".join(f"{name} ({n} rows)" for name, n in occupied.items())
            raise TransferError(
                f"the target store {target.display_url} is not empty: {listed}. Nothing was written; copy into a new, "
                "empty database (create it first on PostgreSQL) so that nothing is mixed or overwritten"
            )
        for table in _tables():
            copied = 0
            rows = reading.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            while batch := rows.fetchmany(COPY_BATCH_ROWS):
                writing.execute(insert(table), [dict(row) for row in batch])
                copied += len(batch)
                if progress:
                    progress(table.name, copied)
            report.rows[table.name] = copied
        if writing.dialect.name == "postgresql":
            # Rows came with their ids, which does not move PostgreSQL's sequences: set each to the
            # largest id so that the next insert does not collide.
            for table in _tables():
                if "id" in table.c and table.c.id.primary_key:
                    writing.execute(
                        text("SELECT setval(pg_get_serial_sequence(:table, 'id'), COALESCE(MAX(id), 0) + 1, false) "
                             f'FROM "{table.name}"'),
                        {"table": f'"{table.name}"'},
                    )
    return report


def store_digest(store: Store) -> dict[str, tuple[int, str]]:
    """Per table: the row count and a sha256 of every row in primary-key order (values as Python reads them)."""
    digests = {}
    with store.read() as session:
        for table in _tables():
            digest, count = hashlib.sha256(), 0
            for row in session.execute(select(table).order_by(*table.primary_key.columns)):
                digest.update(repr(tuple(row)).encode())
                count += 1
            digests[table.name] = (count, digest.hexdigest())
    return digests
