"""Bulk and idempotent writes shared by every write path: ``ON CONFLICT`` inserts for SQLite and
PostgreSQL, and an executemany that stays fast on large batches."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.base import Executable
from sqlmodel import Session, SQLModel

# SQLite allows 32766 bound parameters per statement; PostgreSQL 65535. Stay well under both.
_MAX_PARAMS_PER_STATEMENT = 30_000


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
        # Core execution: Session.execute would take an INSERT on a mapped class with a list of
        # rows for an ORM bulk insert, which cannot run INSERT ... SELECT. psycopg 3 pipelines
        # an executemany into few round trips.
        connection = session.connection()
        for chunk in chunked(rows, len(rows[0])):
            connection.execute(statement, list(chunk))
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
