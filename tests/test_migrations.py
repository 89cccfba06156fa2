"""Schema migrations (alembic): a store made by an older version upgrades in place, on SQLite and
on PostgreSQL, and the migrated schema is exactly what the models describe."""

from __future__ import annotations

import threading
import warnings

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel
from test_import import PAIRS, write_jsonl

from core.data.exporter import build_preference_rows
from core.data.importer import ImportConfig, import_file
from storage import schema
from storage.engine import Store
from storage.labels import LabelInput, ensure_user
from storage.queue import claim_next_comparison, label_history, submit_label


def _reset_to(db_url: str, revision: str) -> None:
    """Take the test's store back to ``revision`` ("base" = empty), as an older RewardLab left it."""
    store = Store(db_url, create=False)
    with store.write_engine.begin() as connection:
        command.downgrade(schema._config(connection), "base")
        if revision != "base":
            command.upgrade(schema._config(connection), revision)
    store.dispose()


def _revision(store: Store) -> str | None:
    with store.read_engine.connect() as connection:
        return schema.current_revision(connection)


def _indexes(store: Store, table: str) -> set[str]:
    with store.read_engine.connect() as connection:
        return {index["name"] for index in inspect(connection).get_indexes(table)}


UNLABELED = [{"prompt": f"Q{i}?", "completions": [f" a{i}", f" b{i}"]} for i in range(5)]


def _label_some(store: Store, tmp_path) -> None:  # noqa: ANN001
    import_file(store, ImportConfig(write_jsonl(tmp_path / "open.jsonl", UNLABELED)))
    with store.write() as session:
        annotator = ensure_user(session, "ann")
        for _ in range(3):
            comparison = claim_next_comparison(session, annotator_id=annotator)
            submit_label(session, LabelInput(comparison, annotator, "a"))


def test_a_store_at_the_first_revision_upgrades_in_place_keeping_its_data(db_url, tmp_path):
    _reset_to(db_url, "0001")
    old = Store(db_url, create=False)
    assert _revision(old) == "0001"
    assert "label_history_order" not in _indexes(old, "label")
    import_file(old, ImportConfig(write_jsonl(tmp_path / "p.jsonl", PAIRS)))
    _label_some(old, tmp_path)
    before = build_preference_rows(old).rows
    old.dispose()

    upgraded = Store(db_url)
    assert _revision(upgraded) == schema.head_revision()
    assert "label_history_order" in _indexes(upgraded, "label")
    assert "ix_label_annotator_id" not in _indexes(upgraded, "label")
    assert build_preference_rows(upgraded).rows == before
    with upgraded.read() as session:
        annotator = ensure_user(session, "ann")
        assert len(label_history(session, annotator_id=annotator)) == 3


def test_a_store_made_before_migrations_existed_is_recognised_and_upgraded(db_url, tmp_path):
    _reset_to(db_url, "0001")
    legacy = Store(db_url, create=False)
    import_file(legacy, ImportConfig(write_jsonl(tmp_path / "p.jsonl", PAIRS)))
    with legacy.write() as session:  # what create_all left: the tables and no version table
        session.execute(text("DROP TABLE alembic_version"))
    before = build_preference_rows(legacy).rows
    legacy.dispose()

    upgraded = Store(db_url)
    assert _revision(upgraded) == schema.head_revision()
    assert build_preference_rows(upgraded).rows == before


def test_every_migration_downgrades_and_upgrades_again(db_url):
    _reset_to(db_url, "base")
    store = Store(db_url)
    assert _revision(store) == schema.head_revision()
    assert {"prompt", "comparison", "label", "lease", "trainingjob"} <= set(inspect(store.write_engine).get_table_names())


def test_the_migrated_schema_is_exactly_what_the_models_describe(store):
    """A model change without a migration fails here (run alembic revision --autogenerate)."""
    with store.read_engine.connect() as connection, warnings.catch_warnings():
        # Expression indexes (the queue's priority DESC) cannot be reflected on SQLite.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        context = MigrationContext.configure(connection, opts={"include_object": schema.include_in_autogenerate})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []


def test_a_store_from_a_newer_rewardlab_is_refused_with_the_fix(db_url):
    store = Store(db_url)
    with store.write() as session:
        session.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    store.dispose()
    with pytest.raises(schema.SchemaError, match="newer than this RewardLab knows.*upgrade RewardLab"):
        Store(db_url)


def test_processes_opening_a_new_store_at_once_migrate_it_once(db_url):
    _reset_to(db_url, "base")
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(db_url).dispose()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = Store(db_url)
    assert _revision(store) == schema.head_revision()
    with store.read() as session:
        assert session.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
