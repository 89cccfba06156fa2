"""``python app.py migrate-store --from URL --to URL``: move a store to another database and prove
the copy is the same store: every table's rows digest equal, and the TRL export built from each is
identical (the dataset a training run would see)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy.engine import make_url

from core.accounts import Actor, Permission
from core.preferences.pairs import build_preference_rows
from storage.backup import BackupError, backup_store
from storage.engine import Store
from storage.transfer import TransferError, TransferReport, copy_store, store_digest

__all__ = ["BackupError", "MoveReport", "TransferError", "back_up_store", "move_store"]


def back_up_store(store: Store, actor: Actor, target: Path) -> int:
    """Copy a SQLite store to ``target`` while the app runs (SQLite's online backup); returns the
    page count. A backup holds every label: the roles that may export may take one. Raises
    ``PermissionDenied`` or ``BackupError`` (PostgreSQL store, target is the store itself)."""
    actor.require(Permission.EXPORT)
    return backup_store(store, target)


@dataclass(frozen=True)
class MoveReport:
    copied: TransferReport
    exported_rows: int  # preference rows in the export, identical from both stores

    def summary(self) -> str:
        tables = ", ".join(f"{name} {n}" for name, n in self.copied.rows.items() if n)
        text = (f"copied {self.copied.total} rows ({tables or 'an empty store'}); verified: every table's rows "
                f"are identical and both stores export the same {self.exported_rows} preference rows")
        if self.copied.rows.get("rewardmodel"):
            # Model weights are files, not rows: the copy points at the same folders.
            text += (f"\nthe {self.copied.rows['rewardmodel']} registered reward model(s) still load from their folders "
                     "on this machine (the store records their paths; the files were not copied)")
        return text


def _exports(store: Store) -> list[tuple[list, dict]]:
    """The export in each prompt format (text, chat), with what each left out. The "auto" format
    follows from these two, so it is not built again."""
    exports = []
    for prompt_format in ("text", "chat"):
        rows = build_preference_rows(store, prompt_format=prompt_format)
        exports.append((rows.rows, dict(rows.left_out)))
    return exports


def move_store(from_url: str, to_url: str, *, progress: Callable[[str, int], None] | None = None) -> MoveReport:
    """Copy the store at ``from_url`` into the empty store at ``to_url`` (created and migrated if
    needed), then check that the two are the same. Raises ``TransferError`` with the reason."""
    parsed = make_url(from_url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").expanduser().is_file():
        raise TransferError(f"--from {from_url}: there is no SQLite store at {parsed.database!r}; nothing was written")
    source, target = Store(from_url), Store(to_url)
    try:
        copied = copy_store(source, target, progress=progress)
        if store_digest(source) != store_digest(target):
            raise TransferError("the copy was written but differs from the source: one of the stores was written to "
                                "during the move; stop the app, empty the target and run migrate-store again")
        source_exports = _exports(source)
        if _exports(target) != source_exports:
            raise TransferError("the copy was written but the two stores' exports differ; do not use the target, "
                                "and please report this as a bug")
        # A store holds text prompts, chat prompts or both; the rows exported are those of both formats.
        return MoveReport(copied, sum(len(rows) for rows, _ in source_exports))
    finally:
        source.dispose()
        target.dispose()
