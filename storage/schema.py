"""Creating and upgrading a store's schema with alembic migrations (``storage/migrations``).

Every process that opens a store (the app, a training worker, a CLI command) calls ``upgrade``:
when the store is already at the newest revision that costs one read; otherwise the upgrade runs
in one transaction that also serializes concurrent openers (``BEGIN IMMEDIATE`` on SQLite, a
transaction-level advisory lock on PostgreSQL), so two processes never migrate at once and a failed
migration leaves the store as it was (both databases have transactional DDL).

Stores made before migrations existed (``create_all``, schema identical to revision 0001) are
recognised by their tables and stamped at 0001 before upgrading.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001"
# Any constant works; it names RewardLab's schema lock among other users of pg_advisory_xact_lock.
_PG_SCHEMA_LOCK = 0x5245574C  # "REWL"


# Indexes on expressions (the queue's ``priority DESC``) that autogenerate cannot compare: SQLite
# reflects them as plain columns, so every autogenerate would drop and re-create them. They are
# written by hand in the migrations.
EXPRESSION_INDEXES = frozenset({"comparison_queue_order"})


def include_in_autogenerate(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
    return not (type_ == "index" and name in EXPRESSION_INDEXES)


class SchemaError(RuntimeError):
    """A store whose schema this version of RewardLab cannot use; the message says what to do."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(store, *, to: str = "head") -> None:  # noqa: ANN001  (storage.engine.Store)
    """Bring ``store`` to revision ``to`` (the newest by default)."""
    if to == "head":
        with store.read_engine.connect() as connection:
            if current_revision(connection) == head_revision():
                return
    with migration_connection(store) as connection:
        _upgrade_in_transaction(store, connection, to)


def downgrade(store, to: str) -> None:  # noqa: ANN001  (storage.engine.Store)
    """Take ``store`` back to revision ``to`` ("base" = empty), keeping what each downgrade keeps."""
    with migration_connection(store) as connection:
        command.downgrade(_config(connection), to)


@contextmanager
def migration_connection(store) -> Iterator[Connection]:  # noqa: ANN001
    """A write connection in one transaction for changing the schema, committed when the block ends.

    SQLite changes a table's constraints by copying it and dropping the old one, which the foreign
    keys of other tables forbid; its documented procedure turns them off (outside a transaction: the
    pragma is a no-op inside one) and checks them all before the commit.
    https://www.sqlite.org/lang_altertable.html#otheralter
    """
    with store.write_engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise SchemaError(f"the schema change would leave {len(broken)} broken reference(s), e.g. "
                                          f"{tuple(broken[0])}; nothing was changed")
        finally:
            if sqlite:
                connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _upgrade_in_transaction(store, connection: Connection, to: str) -> None:  # noqa: ANN001
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
    current = current_revision(connection)
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaError(
            f"the store at {store.display_url} is at schema revision {current}, newer than this RewardLab "
            f"knows (newest: {head_revision()}); upgrade RewardLab instead of opening it with this version"
        )
    if current is None and inspect(connection).has_table("comparison"):
        command.stamp(_config(connection), BASELINE_REVISION)
    command.upgrade(_config(connection), to)
