"""The store itself: schema on first use, connection settings, constraints, concurrent writers."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from conftest import sql
from test_import import write_jsonl

from core.data.importer import ImportConfig, import_file
from storage.engine import Store, StoreConfigError
from storage.labels import LabelInput, ensure_user, upsert_label
from storage.models import Setting


def test_schema_is_created_on_first_use(db_url, tmp_path):
    if db_url.startswith("sqlite"):  # a SQLite store's folders are created too
        path = tmp_path / "nested" / "folder" / "store.db"
        db_url = f"sqlite:///{path}"
    store = Store(db_url)
    if store.is_sqlite:
        assert path.exists()
    tables = set(inspect(store.write_engine).get_table_names())
    assert {"prompt", "completion", "comparison", "label", "user", "trainingjob", "trainingmetric",
            "rewardmodel", "setting"} <= tables
    assert "cachedscore" not in tables  # dropped by migration 0003: nothing wrote or read it


def test_an_acknowledged_commit_is_durable_on_either_database(store):
    """What makes a returned label survive a crash: SQLite's settings on every connection (WAL,
    synchronous=FULL, foreign keys, busy timeout); PostgreSQL's synchronous commit (RewardLab sets
    it on every connection, whatever the server's default) with fsync."""
    if not store.is_sqlite:
        with store.write() as session:
            assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"
            assert session.execute(text("SHOW fsync")).scalar() == "on"
            assert session.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
        return
    for open_session in (store.read, store.write):
        with open_session() as session:
            assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert session.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
            assert session.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


def test_an_in_memory_database_is_refused_with_the_fix():
    with pytest.raises(StoreConfigError, match="needs a SQLite \\*file\\*"):
        Store("sqlite://")


def test_a_label_for_a_missing_comparison_is_refused_by_the_foreign_key(store):
    with pytest.raises(IntegrityError, match="(?i)foreign key"):
        with store.write() as session:
            annotator = ensure_user(session, "ann")
            upsert_label(session, LabelInput(comparison_id=999, annotator_id=annotator, choice="a"))


def test_a_failed_write_leaves_nothing_behind(store):
    with pytest.raises(RuntimeError):
        with store.write() as session:
            session.add(Setting(key="guidelines", value="Be kind."))
            session.flush()
            raise RuntimeError("crash mid-transaction")
    with store.read() as session:
        assert session.get(Setting, "guidelines") is None


def _run_together(work, arguments) -> None:  # noqa: ANN001
    threads = [threading.Thread(target=work, args=(argument,)) for argument in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _assert_each_labeled_once(store: Store, comparisons: int) -> None:
    with store.read() as session:
        per_comparison = session.execute(text("SELECT comparison_id, COUNT(*) FROM label GROUP BY comparison_id")).all()
    assert len(per_comparison) == comparisons
    assert all(count == 1 for _, count in per_comparison)


@pytest.mark.sqlite_only
def test_concurrent_read_then_write_transactions_neither_fail_nor_duplicate(store, tmp_path):
    """Eight threads each claim-and-label the next unlabeled comparison: the read-then-write pattern
    that fails with 'database is locked' (or hands one item to two writers) under a plain BEGIN."""
    rows = [{"prompt": f"Q{i}?", "completions": [f" a{i}", f" b{i}"]} for i in range(80)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", rows)))
    names = [f"annotator{n}" for n in range(8)]
    with store.write() as session:
        annotator_ids = {name: ensure_user(session, name) for name in names}
    errors: list[BaseException] = []

    def annotate(name: str) -> None:
        try:
            while True:
                with store.write() as session:
                    # Read first, then write: the order that needs BEGIN IMMEDIATE.
                    next_id = session.execute(
                        text("SELECT id FROM comparison WHERE id NOT IN (SELECT comparison_id FROM label) ORDER BY id LIMIT 1")
                    ).scalar()
                    if next_id is None:
                        return
                    upsert_label(session, LabelInput(next_id, annotator_ids[name], "a"))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    _run_together(annotate, names)
    assert errors == []
    _assert_each_labeled_once(store, 80)


@pytest.mark.sqlite_only
def test_backup_copies_a_live_store_and_the_copy_restores(store, tmp_path):
    import hashlib
    import sqlite3

    from core.preferences.pairs import build_preference_rows
    from storage.backup import BackupError, backup_store

    rows = [{"prompt": f"Q{i}?", "chosen": " yes", "rejected": " no"} for i in range(50)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", rows)))
    writer = sqlite3.connect(store.sqlite_path)  # a writer in the middle of a transaction during the copy
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO setting (key, value) VALUES ('uncommitted', 'x')")
    pages = backup_store(store, tmp_path / "copy.db")
    writer.rollback()
    writer.close()
    assert pages > 0
    restored = Store(f"sqlite:///{tmp_path / 'copy.db'}")

    def digest(s: Store) -> str:
        return hashlib.sha256(json.dumps(build_preference_rows(s).rows).encode()).hexdigest()

    assert digest(restored) == digest(store)
    with restored.read() as session:
        assert session.get(Setting, "uncommitted") is None
    with pytest.raises(BackupError, match="another file"):
        backup_store(store, store.sqlite_path)


def test_concurrent_annotators_through_the_queue_label_each_comparison_exactly_once(store, tmp_path):
    """Eight threads claim and label through the real queue (SKIP LOCKED on PostgreSQL, BEGIN
    IMMEDIATE on SQLite): no errors, no comparison handed to two annotators, none left over."""
    from storage.queue import claim_next_comparison, submit_label

    rows = [{"prompt": f"Q{i}?", "completions": [f" a{i}", f" b{i}"]} for i in range(80)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", rows)))
    with store.write() as session:
        annotator_ids = [ensure_user(session, f"annotator{n}") for n in range(8)]
    errors: list[BaseException] = []

    def annotate(annotator_id: int) -> None:
        try:
            while True:
                with store.write() as session:
                    claimed = claim_next_comparison(session, annotator_id=annotator_id)
                if claimed is None:
                    return
                with store.write() as session:
                    submit_label(session, LabelInput(claimed, annotator_id, "a"))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    _run_together(annotate, annotator_ids)
    assert errors == []
    _assert_each_labeled_once(store, 80)


def test_a_claim_waits_for_the_last_comparison_another_transaction_holds_instead_of_saying_none_is_left(
        store, tmp_path):
    """Overlap 2, one comparison left: while another annotator's transaction holds its row (as a submit does), a
    claim got None from SKIP LOCKED and a client stopped with work left (caught by the PostgreSQL pass of
    tests/test_api_clients.py). Now it waits for the row (at most storage.queue.MAX_CLAIM_LOCK_WAIT_MS) and gets it;
    held longer, the claim says none is left without an error. On SQLite one write transaction runs at a time."""
    import time

    from storage.queue import MAX_CLAIM_LOCK_WAIT_MS, claim_next_comparison

    if store.is_sqlite:
        pytest.skip("PostgreSQL only (the PostgreSQL pass): SQLite's writers never run side by side")
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Q?", "completions": [" a", " b"]}])))
    with store.write() as session:
        second = ensure_user(session, "second")
        session.execute(text("UPDATE dataset SET overlap = 2"))
    (comparison_id,) = sql(store, "SELECT id FROM comparison")[0]

    def claim_while_held(hold_seconds: float) -> int | None:
        holding, released = threading.Event(), threading.Event()

        def holder() -> None:
            with store.write() as session:  # the other annotator's submit, mid-transaction
                session.execute(text("SELECT id FROM comparison WHERE id = :id FOR UPDATE"), {"id": comparison_id})
                holding.set()
                time.sleep(hold_seconds)
            released.set()

        thread = threading.Thread(target=holder)
        thread.start()
        holding.wait(10)
        try:
            with store.write() as session:
                return claim_next_comparison(session, annotator_id=second)
        finally:
            thread.join()

    assert claim_while_held(MAX_CLAIM_LOCK_WAIT_MS / 1000 * 3) is None  # held too long: none, and no error
    assert sql(store, "SELECT count(*) FROM lease") == [(0,)]
    assert claim_while_held(0.1) == comparison_id  # released within the wait: the claim gets it
    assert sql(store, "SELECT comparison_id, annotator_id FROM lease") == [(comparison_id, second)]


def test_a_postgresql_store_points_to_pg_dump_for_backups(tmp_path, postgres_template):
    """Runs on a real PostgreSQL store only (the PostgreSQL pass); the SQLite backup has its own tests."""
    from conftest import database_url

    from storage.backup import BackupError, backup_store

    if postgres_template is None:
        pytest.skip("needs the PostgreSQL pass (REWARDLAB_TEST_POSTGRES)")
    with database_url(tmp_path, postgres_template, "pgdump") as url:
        store = Store(url)
        assert not store.is_sqlite
        with pytest.raises(BackupError, match="pg_dump"):
            backup_store(store, tmp_path / "copy.db")
        assert not (tmp_path / "copy.db").exists()
        store.dispose()


def test_the_store_counts_active_logins_not_import_sources_or_the_local_operator(store, tmp_path):
    from core.accounts import add_user, disable_account, operator_actor
    from core.data.importer import ImportConfig, import_file
    from core.data.summary import store_summary

    source = tmp_path / "labeled.jsonl"
    source.write_text('{"prompt": "Q?", "chosen": "yes", "rejected": "no"}\n')
    import_file(store, ImportConfig(source))  # an import source with its label
    admin = operator_actor(store)  # the local operator (the command line)
    for name in ("ann", "bob", "cid"):
        add_user(store, name, "annotator", "correct horse battery")
    disable_account(store, admin, "cid")
    assert store_summary(store, admin).annotators == 2
    assert sql(store, "SELECT count(*) FROM \"user\"") == [(5,)]  # ann, bob, cid, the source, the operator
