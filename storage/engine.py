"""Opening a store: one SQLAlchemy URL, SQLite by default, PostgreSQL through the same code.

SQLite needs care to keep its promises under many concurrent annotators:

* every connection sets WAL (readers never block the writer), a busy timeout, ``foreign_keys=ON``
  and ``synchronous=FULL`` (an acknowledged commit survives a crash of the process *and* of the OS);
* write transactions start with ``BEGIN IMMEDIATE``. A transaction that reads and then writes
  under a plain (deferred) ``BEGIN`` fails with "database is locked" in WAL mode whatever the busy
  timeout, because SQLite cannot upgrade a read snapshot that another writer has moved past;
  ``BEGIN IMMEDIATE`` takes the write lock up front and waits for it under the busy timeout.
  Reads go through a second engine with deferred transactions so they never queue behind writes.
  (Datasette does the same: ``datasette/database.py``.)
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

DB_URL_ENV = "REWARDLAB_DB"
DEFAULT_DATA_DIR = Path("data")
DATA_DIR_ENV = "REWARDLAB_DATA_DIR"  # where a PostgreSQL store's files live (models, jobs, downloads)
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 64 * 1024


class StoreConfigError(ValueError):
    """A store URL that cannot work; the message says how to fix it."""


def default_db_url() -> str:
    """``$REWARDLAB_DB`` when set, else a SQLite file in ``./data``."""
    return os.environ.get(DB_URL_ENV) or f"sqlite:///{DEFAULT_DATA_DIR / 'rewardlab.db'}"


def _configure_sqlite(engine: Engine, *, begin_statement: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        # Hand transaction control to SQLAlchemy's "begin" event below instead of pysqlite's
        # implicit BEGIN, which it emits only before the first write (too late to take the lock).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        # Content hashes are random keys, so an import seeks all over their indexes: with SQLite's
        # default 2 MiB page cache, every miss is a read() call. The cache grows only as it is used.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # noqa: ANN001
        connection.exec_driver_sql(begin_statement)


class Store:
    """A database and the two ways into it: ``read()`` and ``write()`` sessions.

    On PostgreSQL both use one engine (its MVCC needs no special begin); on SQLite, ``write()``
    sessions begin with ``BEGIN IMMEDIATE`` and ``read()`` sessions with a deferred ``BEGIN``.
    """

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = url or default_db_url()
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database
            if not database or database == ":memory:":
                raise StoreConfigError(
                    f"store URL {self.url!r} names no file: RewardLab needs a SQLite *file* "
                    "(e.g. sqlite:///data/rewardlab.db) so that separate processes share it"
                )
            path = Path(database).expanduser()
            # The store holds password hashes and every label: its folder and file are its owner's alone
            # (SQLite gives the -wal and -shm files the database file's mode).
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            self.write_engine = create_engine(self.url, connect_args=connect_args)
            self.read_engine = create_engine(self.url, connect_args=connect_args)
            _configure_sqlite(self.write_engine, begin_statement="BEGIN IMMEDIATE")
            _configure_sqlite(self.read_engine, begin_statement="BEGIN")
            # SQLite admits one writer at a time, and a writer that finds the lock taken waits in
            # SQLite's busy handler, which sleeps in steps of up to 100 ms and wakes in no order:
            # under many concurrent annotators that put p95 near a second. Writers of this process
            # queue on a lock instead and take SQLite's lock the moment it is free; other processes
            # (a training worker, the CLI) still meet the busy handler, rarely.
            self._writers_in_this_process = threading.RLock()
        else:
            # A label is acknowledged after its commit: make sure the commit waits for the WAL flush
            # even where the server's default was relaxed (synchronous_commit=off loses the last
            # commits on a crash). fsync itself is a server setting; the tests check it is on.
            connect_args = {"options": "-c synchronous_commit=on"} if parsed.get_backend_name() == "postgresql" else {}
            self.write_engine = create_engine(self.url, pool_pre_ping=True, connect_args=connect_args)
            self.read_engine = self.write_engine
            self._writers_in_this_process = nullcontext()
        if create:
            try:
                self.create_schema()
            except OperationalError as error:
                self.dispose()
                reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
                raise StoreConfigError(
                    f"cannot open the store {self.display_url}: {reason}. Check that the "
                    "server is running and the database exists (createdb NAME), or fix --db / $REWARDLAB_DB"
                ) from error

    @property
    def display_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def data_dir(self) -> Path:
        """Where files that belong with this store live (models, logs): beside a SQLite file, else
        ``$REWARDLAB_DATA_DIR`` or ./data."""
        if self.is_sqlite:
            return self.sqlite_path.parent
        return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)

    @property
    def sqlite_path(self) -> Path | None:
        return Path(make_url(self.url).database) if self.is_sqlite else None

    def create_schema(self) -> None:
        """Create the tables, or upgrade them in place to this version's schema (alembic migrations)."""
        from storage.schema import upgrade

        upgrade(self)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._writers_in_this_process:
            with Session(self.write_engine, expire_on_commit=False) as session:
                with session.begin():
                    yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
