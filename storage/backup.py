"""Copying a live store: SQLite's online backup API, consistent while the app keeps writing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from storage.engine import SQLITE_BUSY_TIMEOUT_MS, Store


class BackupError(ValueError):
    pass


def backup_store(store: Store, target: Path) -> int:
    """Write a consistent copy of the store to ``target`` (replaced whole, never half-written) and
    return its page count. Readers and the app's writers carry on during the copy."""
    if not store.is_sqlite:
        raise BackupError("backup copies SQLite stores; for PostgreSQL use pg_dump, which does the same online")
    target = Path(target)
    if target.resolve() == store.sqlite_path.resolve():
        raise BackupError("the backup must go to another file than the store itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        staging.unlink()
    source = sqlite3.connect(store.sqlite_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    destination = sqlite3.connect(staging)
    try:
        # Copy in steps of 1,024 pages so writers are not held off for the whole copy.
        source.backup(destination, pages=1024)
        pages = destination.execute("PRAGMA page_count").fetchone()[0]
        if destination.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise BackupError("the copy failed its integrity check; nothing was replaced")
    finally:
        destination.close()
        source.close()
    os.replace(staging, target)
    return pages
