"""``python app.py migrate-store``: a whole store moves to another database (SQLite <-> PostgreSQL
in the PostgreSQL pass) and the copy exports byte for byte what the source exports."""

from __future__ import annotations

import gzip
import itertools
import subprocess
import sys

import pytest
from conftest import HH_RLHF_FILE, PROJECT_ROOT
from sqlalchemy import text
from test_import import PAIRS, store_fingerprint, write_jsonl

from core.data.exporter import ExportConfig, export_dataset
from core.data.importer import ImportConfig, import_file
from core.data.store_move import move_store
from storage.engine import Store
from storage.jobs import create_job, record_metrics
from storage.labels import LabelInput, ensure_user
from storage.queue import claim_next_comparison, submit_label
from storage.registry import register_model
from storage.datasets import DatasetSettings, change_dataset
from storage.settings import set_setting
from storage.transfer import TransferError, store_digest

CHAT_ROWS = [
    {"prompt": [{"role": "user", "content": f"Chat question {i}?"}],
     "completions": [{"text": f"<think>hm {i}</think>Yes {i}.", "model": "m1"}, {"text": f"No {i}.", "model": "m2"}]}
    for i in range(4)
]


def migrate(from_url: str, to_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", "migrate-store", "--from", from_url, "--to", to_url],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def full_store(tmp_path) -> Store:
    """A SQLite store with a bit of everything: imported pairs, chat candidates labeled by people
    (comments, strengths), a lease, a job with metrics, a registered model, a changed setting."""
    store = Store(f"sqlite:///{tmp_path / 'source' / 'store.db'}")
    with gzip.open(HH_RLHF_FILE, "rt", encoding="utf-8") as source:
        (tmp_path / "hh.jsonl").write_text("".join(itertools.islice(source, 300)), encoding="utf-8")
    import_file(store, ImportConfig(tmp_path / "hh.jsonl"))
    import_file(store, ImportConfig(write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS), dataset="chat"))
    with store.write() as session:
        change_dataset(session, "chat", DatasetSettings(overlap=2))
        set_setting(session, "annotators_may_inspect", 1)
        for name, strength in (("ann", 2), ("bob", 1)):
            annotator = ensure_user(session, name)
            for _ in range(3):
                comparison = claim_next_comparison(session, annotator_id=annotator)
                submit_label(session, LabelInput(comparison, annotator, "a", strength=strength, comment=f"{name}: é ✓"))
        claim_next_comparison(session, annotator_id=ensure_user(session, "carol"))
        change_dataset(session, "default", DatasetSettings(open_to_all=False, members=("ann", "carol")))
        job = create_job(session, {"base_model": "demo", "epochs": 1})
        record_metrics(session, job, 1, {"loss": 0.69, "accuracy": 0.5})
        register_model(session, name="rm-1", path=str(tmp_path / "models" / "rm-1"), job_id=job, eval_accuracy=0.75)
    return store


def _exports(store: Store, folder) -> list[bytes]:  # noqa: ANN001
    outputs = []
    for prompt_format in ("text", "chat"):
        out = folder / f"{prompt_format}.jsonl"
        export_dataset(store, ExportConfig(out, prompt_format=prompt_format))
        outputs.append(out.read_bytes())
    return outputs


def test_a_store_moves_whole_and_exports_the_same_bytes(full_store, db_url, tmp_path):
    target_url = db_url if not db_url.startswith("sqlite") else f"sqlite:///{tmp_path / 'target.db'}"
    done = migrate(full_store.url, target_url)
    assert done.returncode == 0, done.stderr
    assert "verified: every table's rows are identical" in done.stdout
    # 300 imported HH-RLHF pairs (text) + 3 chat comparisons labeled "a" by both annotators (overlap 2)
    assert "both stores export the same 303 preference rows" in done.stdout
    assert "registered reward model(s) still load from their folders" in done.stdout
    target = Store(target_url)
    assert _exports(target, tmp_path / "moved") == _exports(full_store, tmp_path / "original")
    assert store_digest(target) == store_digest(full_store)

    # The copy is a working store: new rows get fresh ids (PostgreSQL's sequences were moved on).
    report = import_file(target, ImportConfig(write_jsonl(tmp_path / "more.jsonl", PAIRS)))
    assert report.counts.comparisons_added == len(PAIRS)
    with target.write() as session:
        annotator = ensure_user(session, "dave")
        comparison = claim_next_comparison(session, annotator_id=annotator)
        submit_label(session, LabelInput(comparison, annotator, "tie"))
        assert create_job(session, {"base_model": "demo"}) == 2

    # And back again: the round trip is the same store.
    back_url = f"sqlite:///{tmp_path / 'back.db'}"
    assert migrate(target_url, back_url).returncode == 0
    assert store_digest(Store(back_url)) == store_digest(target)


def test_a_target_with_data_is_refused_and_left_as_it_was(full_store, db_url, tmp_path):
    target = Store(db_url)
    import_file(target, ImportConfig(write_jsonl(tmp_path / "mine.jsonl", PAIRS)))
    before = store_fingerprint(target)
    done = migrate(full_store.url, db_url)
    assert done.returncode == 2
    assert "is not empty: dataset (1 rows), prompt (6 rows)" in done.stderr and "Nothing was written" in done.stderr
    assert store_fingerprint(target) == before


def test_a_missing_source_or_the_same_store_twice_is_refused(full_store, db_url, tmp_path):
    missing = migrate(f"sqlite:///{tmp_path / 'nope.db'}", db_url)
    assert missing.returncode == 2 and "there is no SQLite store at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(TransferError, match="same store"):
        move_store(full_store.url, full_store.url)


def test_a_failure_midway_leaves_the_target_empty(full_store, db_url, tmp_path, monkeypatch):
    from storage import transfer

    target = Store(db_url)
    calls = []

    def fail_on_labels(table: str, rows: int) -> None:
        calls.append(table)
        if table == "label":
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="disk full"):
        transfer.copy_store(full_store, target, progress=fail_on_labels)
    assert "comparison" in calls
    with target.read() as session:
        assert session.execute(text("SELECT COUNT(*) FROM comparison")).scalar() == 0
        assert session.execute(text("SELECT COUNT(*) FROM prompt")).scalar() == 0
