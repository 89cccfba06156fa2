"""Schema migrations (alembic): a store made by an older version upgrades in place, on SQLite and
on PostgreSQL, and the migrated schema is exactly what the models describe."""

from __future__ import annotations

import threading
import warnings
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel
from conftest import sql

from core.preferences.pairs import build_preference_rows
from storage import schema
from storage.engine import Store
from storage.queue import claim_next_comparison, label_history


def _reset_to(db_url: str, revision: str) -> None:
    """Take the test's store back to ``revision`` ("base" = empty), as an older RewardLab left it."""
    store = Store(db_url, create=False)
    schema.downgrade(store, "base")
    if revision != "base":
        schema.upgrade(store, to=revision)
    store.dispose()


def _revision(store: Store) -> str | None:
    with store.read_engine.connect() as connection:
        return schema.current_revision(connection)


def _indexes(store: Store, table: str) -> set[str]:
    with store.read_engine.connect() as connection:
        return {index["name"] for index in inspect(connection).get_indexes(table)}


def _fill_as_an_old_rewardlab(store: Store) -> None:
    """Rows as RewardLab before datasets (revisions 0001 to 0003) wrote them, in plain SQL: three text
    prompts and one chat prompt, an imported label, two people's labels with strengths and a comment,
    and the store-wide overlap (2), lease and guidelines that datasets now carry."""
    tables = SQLModel.metadata.tables
    when = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with store.write() as session:
        for user_id, name, role in ((1, "import:old.jsonl", "source"), (2, "ann", "annotator"), (3, "bob", "annotator")):
            session.execute(tables["user"].insert().values(id=user_id, name=name, role=role, created_at=when))
        prompts = [(1, "Q1?", None), (2, "Q2?", None), (3, "Q3?", None),
                   (4, None, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])]
        for prompt_id, prompt_text, messages in prompts:
            session.execute(tables["prompt"].insert().values(
                id=prompt_id, content_hash=f"p{prompt_id}", text=prompt_text, messages=messages, created_at=when))
            for offset, word in ((1, "good"), (2, "bad")):
                completion_id = 2 * prompt_id - 2 + offset
                session.execute(tables["completion"].insert().values(
                    id=completion_id, prompt_id=prompt_id, content_hash=f"c{completion_id}", text=f" {word} {prompt_id}",
                    model=f"m{offset}", created_at=when))
        # (id, prompt, a, b, label_count, done) as the old queue kept them under overlap 2.
        for row in ((1, 1, 1, 2, 1, True), (2, 2, 3, 4, 2, True), (3, 3, 5, 6, 0, False), (4, 4, 7, 8, 1, False)):
            session.execute(text(
                "INSERT INTO comparison (id, prompt_id, completion_a_id, completion_b_id, priority, source, label_count, "
                "extra_labels, done, created_at) VALUES (:id, :prompt, :a, :b, 0, 'import:old.jsonl', :count, 0, :done, "
                ":when)"), dict(zip(("id", "prompt", "a", "b", "count", "done"), row), when=when))
        for label_id, comparison, annotator, choice, strength, comment in (
            (1, 1, 1, "a", None, None), (2, 2, 2, "b", 2, None), (3, 2, 3, "b", 1, None), (4, 4, 2, "a", None, "fine"),
        ):
            session.execute(tables["label"].insert().values(
                id=label_id, comparison_id=comparison, annotator_id=annotator, choice=choice, strength=strength,
                comment=comment, created_at=when, updated_at=when))
        for key, value in (("labels_per_comparison", "2"), ("lease_seconds", "600"), ("guidelines", "Old rules")):
            session.execute(tables["setting"].insert().values(key=key, value=value))
        if session.get_bind().dialect.name == "postgresql":
            for table in ("user", "prompt", "completion", "comparison", "label"):
                session.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), 10)"))


def _check_upgraded_with_datasets(store: Store) -> None:
    """The old store's data after the upgrade, checked against values worked out by hand."""
    assert sql(store, "SELECT name, prompt_kind, overlap, lease_seconds, guidelines FROM dataset ORDER BY name") == [
        ("chat", "chat", 2, 600, "Old rules"), ("default", "text", 2, 600, "Old rules")]
    assert sql(store, "SELECT c.id, d.name FROM comparison c JOIN dataset d ON d.id = c.dataset_id ORDER BY c.id") == [
        (1, "default"), (2, "default"), (3, "default"), (4, "chat")]
    assert sql(store, "SELECT key FROM setting WHERE key IN ('labels_per_comparison', 'lease_seconds', 'guidelines')") == []
    assert build_preference_rows(store, datasets=["default"]).rows == [
        {"prompt": "Q1?", "chosen": " good 1", "rejected": " bad 1", "margin": 0.0},
        {"prompt": "Q2?", "chosen": " bad 2", "rejected": " good 2", "margin": pytest.approx((1.0 + 1 / 3) / 2)},
    ]
    assert build_preference_rows(store, datasets=["chat"]).rows == [{
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": " good 4"}], "rejected": [{"role": "assistant", "content": " bad 4"}],
    }]
    with store.write() as session:
        assert len(label_history(session, annotator_id=2)) == 2
        # Overlap 2 still holds: bob is given the chat pair ann labeled, and the open text pair; the
        # imported pair (1) and the pair two people labeled (2) are never handed out.
        assert claim_next_comparison(session, annotator_id=3, dataset_id=_dataset_id(store, "chat")) == 4
        assert claim_next_comparison(session, annotator_id=3, dataset_id=_dataset_id(store, "default")) == 3


def _dataset_id(store: Store, name: str) -> int:
    return sql(store, f"SELECT id FROM dataset WHERE name = '{name}'")[0][0]


@pytest.mark.parametrize("old_revision", ["0001", "0003"])
def test_a_store_from_before_datasets_upgrades_with_its_labels_settings_and_exports_intact(db_url, old_revision):
    _reset_to(db_url, old_revision)
    old = Store(db_url, create=False)
    assert _revision(old) == old_revision
    _fill_as_an_old_rewardlab(old)
    old.dispose()

    upgraded = Store(db_url)
    assert _revision(upgraded) == schema.head_revision()
    assert "label_history_order" in _indexes(upgraded, "label")
    assert "ix_label_annotator_id" not in _indexes(upgraded, "label")
    _check_upgraded_with_datasets(upgraded)


def test_a_store_made_before_migrations_existed_is_recognised_and_upgraded(db_url):
    _reset_to(db_url, "0001")
    legacy = Store(db_url, create=False)
    _fill_as_an_old_rewardlab(legacy)
    with legacy.write() as session:  # what create_all left: the tables and no version table
        session.execute(text("DROP TABLE alembic_version"))
    legacy.dispose()

    upgraded = Store(db_url)
    assert _revision(upgraded) == schema.head_revision()
    _check_upgraded_with_datasets(upgraded)


def test_a_downgrade_below_datasets_puts_the_settings_back(db_url):
    _reset_to(db_url, "0003")
    old = Store(db_url, create=False)
    _fill_as_an_old_rewardlab(old)
    old.dispose()
    Store(db_url).dispose()
    _reset_to_keeping_data(db_url, "0003")
    back = Store(db_url, create=False)
    assert sorted(sql(back, "SELECT key, value FROM setting")) == [
        ("guidelines", "Old rules"), ("labels_per_comparison", "2"), ("lease_seconds", "600")]
    assert sql(back, "SELECT count(*) FROM comparison") == [(4,)]


def _reset_to_keeping_data(db_url: str, revision: str) -> None:
    store = Store(db_url, create=False)
    schema.downgrade(store, revision)
    store.dispose()


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
