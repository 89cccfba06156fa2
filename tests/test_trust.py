"""What a hostile or careless user cannot do (the trust issue), below the UI: model names that leave
the models folder, votes on finished or imported comparisons, inspection by the wrong role or of an
arbitrary server path, requests past the caps, compressed-file bombs, markup in names, login
guessing, and the leftovers of killed exports. Oracles are SQL row counts, the file system and
peak memory measured by the OS, never the module under test."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, run_app_measuring_peak_rss, run_cli, setup_cli, sql
from test_import import write_jsonl

from core.accounts import LoginThrottle, PermissionDenied, actor_for, add_user, operator_actor
from core.data.importer import ImportConfig, ImportRejected, import_file
from core.labeling.actions import label_stored, next_comparison
from core.limits import MAX_COMMENT_CHARS, MAX_INSPECT_RESPONSES
from core.scoring.inspection import (
    InspectionRefused,
    UnknownModel,
    chat_prompt,
    comparison_for_inspection,
    inspect_with_models,
    resolve_model,
)
from core.training.config import ConfigError, TrainingConfig
from storage.queue import QueueError


def make_actor(store, name: str, role: str = "annotator"):  # noqa: ANN001, ANN201
    add_user(store, name, role, "correct horse battery")
    return actor_for(store, name)


# ----- 1. model output names


@pytest.mark.parametrize("name", ["..", "../../x", "/tmp/elsewhere", "a/b", "a..b", ".hidden", "x@v2", "é"])
def test_a_model_name_that_could_leave_the_models_folder_is_refused_before_any_job_is_queued(name, db_url, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "keep.txt").write_text("still here")
    done = run_cli("train", "--output-name", name, db_url=db_url)
    assert done.returncode == 2
    assert "letters, digits" in done.stderr and repr(name) in done.stderr
    from storage.engine import Store

    assert sql(Store(db_url), "SELECT count(*) FROM trainingjob")[0][0] == 0
    assert (tmp_path / "models" / "keep.txt").read_text() == "still here"
    with pytest.raises(ConfigError, match="not allowed"):
        TrainingConfig(output_name=name)


def test_the_models_folder_lock_holds_even_for_a_name_that_skipped_the_config_check(store):
    from core.model_folders import UnsafeModelName, model_folder

    for name in ("..", "../x", "/etc", "a/../../b"):
        with pytest.raises(UnsafeModelName):
            model_folder(store, name)
    assert model_folder(store, "rm-1").parent == (store.data_dir / "models").resolve()


# SQLite only: the version naming it relies on runs on PostgreSQL in tests/test_model_names.py
# (test_the_next_version_of_a_name_follows_its_highest_version); two trainings add nothing database-specific.
@pytest.mark.slow
def test_training_twice_under_one_name_registers_a_second_version_and_keeps_the_first(db_url, tmp_path):
    rows = [{"prompt": f"Q{i}? ", "chosen": f" good answer {i}", "rejected": f" bad {i}"} for i in range(12)]
    assert setup_cli("import", str(write_jsonl(tmp_path / "p.jsonl", rows)), db_url=db_url).returncode == 0
    for _ in range(2):
        done = run_cli("train", "--output-name", "same", "--max-steps", "2", "--eval-fraction", "0", db_url=db_url)
        assert done.returncode == 0, done.stderr[-2000:]
    from storage.engine import Store

    store = Store(db_url)
    rows = sql(store, "SELECT name, path FROM rewardmodel ORDER BY id")
    assert [name for name, _ in rows] == ["same", "same@v2"]
    first, second = (Path(path) for _, path in rows)
    assert first != second and first.parent == second.parent == (store.data_dir / "models").resolve()
    assert (first / "config.json").exists() and (second / "config.json").exists()


# ----- 2. votes on finished or imported comparisons


@pytest.fixture
def two_candidates(store, tmp_path):
    rows = [{"prompt": "Q?", "completions": ["one", "two"]}, {"prompt": "R?", "completions": ["three", "four"]}]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", rows)))
    return store


def test_a_skip_turned_into_a_vote_on_a_comparison_that_has_its_labels_is_refused(two_candidates):
    store = two_candidates
    first, second = make_actor(store, "first"), make_actor(store, "second")
    view = next_comparison(store, first)
    label_stored(store, first, view.comparison_id, "a")  # overlap 1: the comparison is done
    with pytest.raises(QueueError, match="already has"):
        label_stored(store, second, view.comparison_id, "skip")  # a new label of any kind needs room
    votes = sql(store, f"SELECT choice FROM label WHERE comparison_id = {view.comparison_id}")
    assert votes == [("a",)]


def test_skipping_first_then_voting_cannot_flip_a_finished_comparison(two_candidates):
    """The hole: skip while there is room, someone else completes the comparison, then change the skip
    into a vote. Both the second vote and the flip of the exported majority are refused."""
    store = two_candidates
    ann, bob = make_actor(store, "ann"), make_actor(store, "bob")
    view = next_comparison(store, ann)
    label_stored(store, ann, view.comparison_id, "skip")
    bob_view = next_comparison(store, bob)
    assert bob_view.comparison_id == view.comparison_id
    label_stored(store, bob, view.comparison_id, "a")
    with pytest.raises(QueueError, match="already has"):
        label_stored(store, ann, view.comparison_id, "b")
    assert sorted(sql(store, f"SELECT choice FROM label WHERE comparison_id = {view.comparison_id}")) == [("a",), ("skip",)]


def test_imported_labeled_pairs_take_no_votes_and_stay_out_of_the_queue_when_overlap_rises(store, tmp_path):
    pairs = [{"prompt": f"Q{i}? ", "chosen": " yes", "rejected": " no"} for i in range(3)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", pairs)))
    admin, ann = operator_actor(store), make_actor(store, "ann")
    from core.labeling.actions import change_overlap

    change_overlap(store, admin, 3)
    assert sql(store, "SELECT count(*) FROM comparison WHERE done = false")[0][0] == 0
    assert next_comparison(store, ann) is None
    with pytest.raises(QueueError, match="already has"):
        label_stored(store, ann, 1, "b")
    assert sql(store, "SELECT count(*) FROM label l JOIN \"user\" u ON u.id = l.annotator_id WHERE u.name = 'ann'")[0][0] == 0
    # Sent back by an engineer, an imported pair asks for exactly one human label.
    from core.scoring.diagnostics import send_for_review

    send_for_review(store, admin, [1])
    assert next_comparison(store, ann).comparison_id == 1
    label_stored(store, ann, 1, "b")
    bob = make_actor(store, "bob")
    assert next_comparison(store, bob) is None


# ----- 3. inspection: roles and model paths


def test_an_annotator_cannot_read_comparisons_inspect_or_diagnose_unless_allowed(two_candidates):
    store = two_candidates
    ann = make_actor(store, "ann")
    with pytest.raises(PermissionDenied, match="may not inspect"):
        comparison_for_inspection(store, ann, 1)
    with pytest.raises(PermissionDenied, match="may not inspect"):
        inspect_with_models(store, ann, ["any"], "prompt", ["a", "b"])
    from core.scoring.diagnostics import run_diagnostics

    with pytest.raises(PermissionDenied):
        run_diagnostics(store, ann, "any")
    from core.scoring.inspection import allow_annotators_to_inspect, may_inspect

    assert not may_inspect(store, ann)
    with pytest.raises(PermissionDenied, match="may not change labeling settings"):
        allow_annotators_to_inspect(store, make_actor(store, "eng2", "engineer"), True)
    allow_annotators_to_inspect(store, operator_actor(store), True)  # an admin
    assert sql(store, "SELECT value FROM setting WHERE key = 'annotators_may_inspect'") == [("1",)]
    assert may_inspect(store, ann)
    with pytest.raises(UnknownModel):  # now past the role check, stopped at the unknown model
        inspect_with_models(store, ann, ["any"], "prompt", ["a", "b"])
    with pytest.raises(PermissionDenied):  # stored data stays closed to annotators
        comparison_for_inspection(store, ann, 1)
    with pytest.raises(PermissionDenied):
        run_diagnostics(store, ann, "any")
    engineer = make_actor(store, "eng", "engineer")
    assert comparison_for_inspection(store, engineer, 1).content.prompt_text == "Q?"


def test_a_path_outside_the_models_folder_is_unknown_whether_or_not_it_exists(store, tmp_path):
    engineer = make_actor(store, "eng", "engineer")
    messages = []
    for path in ("/etc", "/no/such/folder", str(tmp_path), "../../..", str(PROJECT_ROOT)):
        with pytest.raises(UnknownModel) as refused:
            resolve_model(store, engineer, path)
        messages.append(str(refused.value).replace(repr(path), "PATH"))
    assert len(set(messages)) == 1


def test_a_corrupt_model_folder_gets_a_plain_message_not_the_loaders_exception(store):
    from core.model_folders import models_folder
    from core.scoring.engine import ModelLoadError

    broken = models_folder(store) / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen3", "num_labels": 1}')
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as refused:
        resolve_model(store, make_actor(store, "eng", "engineer"), "broken")
    assert "cannot load 'broken'" in str(refused.value)
    assert "Error" not in str(refused.value) and "Traceback" not in str(refused.value)


# ----- 4. caps


def test_a_comment_over_the_cap_is_refused_and_nothing_is_written(two_candidates):
    store = two_candidates
    ann = make_actor(store, "ann")
    view = next_comparison(store, ann)
    with pytest.raises(QueueError, match=f"{MAX_COMMENT_CHARS:,}"):
        label_stored(store, ann, view.comparison_id, "a", comment="x" * (MAX_COMMENT_CHARS + 1))
    assert sql(store, "SELECT count(*) FROM label")[0][0] == 0
    label_stored(store, ann, view.comparison_id, "a", comment="x" * MAX_COMMENT_CHARS)
    assert sql(store, "SELECT length(comment) FROM label")[0][0] == MAX_COMMENT_CHARS


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from core.training.demo_model import build_demo_reward_model

    folder = tmp_path_factory.mktemp("models") / "tiny"
    texts = ["the quick brown fox jumps over the lazy dog " * 4, "a b c d e f g", "<think>why</think> because"] * 20
    build_demo_reward_model(folder, texts, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return folder


def test_inspect_refuses_too_many_too_long_or_too_many_token_responses_before_scoring(store, tiny_model, monkeypatch):
    import core.scoring.inspection as inspection

    monkeypatch.setenv("REWARDLAB_MODELS_ROOT", str(tiny_model.parent))
    engineer = make_actor(store, "eng", "engineer")
    with pytest.raises(InspectionRefused, match=f"at most {MAX_INSPECT_RESPONSES}"):
        inspect_with_models(store, engineer, ["tiny"], "p", ["r"] * (MAX_INSPECT_RESPONSES + 1))
    with pytest.raises(InspectionRefused, match="characters"):
        inspect_with_models(store, engineer, ["tiny"], "p", ["r", "x" * 300_000])
    monkeypatch.setattr(inspection, "MAX_INSPECT_TOKENS", 50)
    with pytest.raises(InspectionRefused, match="tokens per response"):
        inspect_with_models(store, engineer, ["tiny"], "p", ["short", "word " * 200])
    scored = inspect_with_models(store, engineer, ["tiny"], "p", ["short", "also short"])
    assert len(scored.scores) == 2


def test_inspect_flags_a_registered_model_at_the_max_length_it_was_trained_with(store, tiny_model, monkeypatch):
    from storage.registry import register_model

    monkeypatch.setenv("REWARDLAB_MODELS_ROOT", str(tiny_model.parent))
    with store.write() as session:
        register_model(session, name="short-rm", path=str(tiny_model), config={"max_length": 24})
    engineer = make_actor(store, "eng", "engineer")
    long_response = "the quick brown fox " * 12
    # The oracle: the token count of the formatted pair, read from the model's own tokenizer files.
    from transformers import AutoTokenizer

    n_tokens = len(AutoTokenizer.from_pretrained(tiny_model)("p" + long_response)["input_ids"])
    assert n_tokens > 24
    by_registry = inspect_with_models(store, engineer, ["short-rm"], "p", ["short", long_response])
    assert [s.result.exceeds_max_length for s in by_registry.scores] == [False, True]
    assert {s.max_length for s in by_registry.scores} == {24}
    by_folder = inspect_with_models(store, engineer, ["tiny"], "p", ["short", long_response])
    assert [s.result.exceeds_max_length for s in by_folder.scores] == [False, False]


def test_diagnostics_of_one_dataset_score_only_its_comparisons(store, tmp_path, tiny_model):
    from core.scoring.diagnostics import diagnose
    from core.scoring.engine import RewardScorer

    for dataset in ("first", "second"):
        pairs = [{"prompt": f"{dataset} Q{i}? ", "chosen": " yes", "rejected": " no"} for i in range(3)]
        import_file(store, ImportConfig(write_jsonl(tmp_path / f"{dataset}.jsonl", pairs), dataset=dataset))
    scorer = RewardScorer(tiny_model, device="cpu", max_length=256)
    expected = {row[0] for row in sql(store, "SELECT c.id FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                                             "WHERE d.name = 'second'")}
    assert {p.comparison_id for p in diagnose(store, scorer, name="tiny", dataset="second").pairs} == expected
    assert len(diagnose(store, scorer, name="tiny").pairs) == 6


def test_load_from_store_keeps_every_chat_turn_and_says_what_humans_preferred(store, tmp_path):
    chat = {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", [chat])))
    engineer = make_actor(store, "eng", "engineer")
    stored = comparison_for_inspection(store, engineer, 1)
    assert stored.content.prompt_messages == chat["prompt"]
    side_of_4 = sql(store, "SELECT CASE WHEN a.text = '4' THEN 'a' ELSE 'b' END FROM comparison c "
                           "JOIN completion a ON a.id = c.completion_a_id WHERE c.id = 1")[0][0]
    assert stored.human_verdict == side_of_4 and stored.votes == f"import:c.jsonl: {side_of_4}"
    assert chat_prompt(json.dumps(chat["prompt"])) == chat["prompt"]
    assert chat_prompt("just text") == [{"role": "user", "content": "just text"}]
    with pytest.raises(InspectionRefused, match="list of"):
        chat_prompt('[{"role": "wizard", "content": "x"}]')
    with pytest.raises(InspectionRefused, match="not valid"):
        chat_prompt('[{"role": "user", ')


def test_diagnostics_skip_and_count_pairs_longer_than_the_model_instead_of_scoring_them(store, tmp_path, tiny_model):
    from core.scoring.diagnostics import diagnose
    from core.scoring.engine import RewardScorer

    pairs = [{"prompt": f"Q{i}? ", "chosen": " yes", "rejected": " no"} for i in range(4)]
    pairs.append({"prompt": "Long? ", "chosen": " word" * 5_000, "rejected": " no"})
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", pairs)))
    report = diagnose(store, RewardScorer(tiny_model, device="cpu", max_length=256), name="tiny")
    assert report.skipped_over_max_length == 1
    assert len(report.pairs) == 4 and all(p.prompt_excerpt != "Long?" for p in report.pairs)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_gzip_that_inflates_past_the_cap_is_refused_holding_a_chunk_in_memory(db_url, tmp_path):
    """A 1 MB file that inflates to 1 GiB: refused by streaming, peak memory far under the inflated
    size (the oracle is the OS's peak RSS of the import process). Nothing is written."""
    bomb = tmp_path / "bomb.jsonl.gz"
    line = (json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n").encode() * 16_384
    with gzip.open(bomb, "wb", compresslevel=9) as handle:
        for _ in range(1024 * 1024 * 1024 // len(line)):
            handle.write(line)
    assert bomb.stat().st_size < 8 * 1024 * 1024
    small = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    _, baseline = run_app_measuring_peak_rss("import", str(small), "--db", f"sqlite:///{tmp_path / 'baseline.db'}",
                                             timeout=300)
    done, peak = run_app_measuring_peak_rss("import", str(bomb), "--db", db_url, timeout=300)
    print(f"\ngzip bomb {bomb.stat().st_size / 2**20:.1f} MB -> 1 GiB: refused, peak RSS {peak / 2**20:.0f} MiB "
          f"(a one-row import: {baseline / 2**20:.0f} MiB)")
    assert done.returncode == 2 and "inflates to more than" in done.stderr
    assert peak < baseline + 128 * 1024 * 1024
    from storage.engine import Store

    assert sql(Store(db_url), "SELECT count(*) FROM comparison")[0][0] == 0


def test_a_line_longer_than_the_row_cap_is_refused_without_parsing_it(store, tmp_path, monkeypatch):
    import core.data.readers as readers

    monkeypatch.setattr(readers, "MAX_IMPORT_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps({"prompt": "p", "chosen": "x" * 5000, "rejected": "b"}) + "\n")
        handle.write(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ImportRejected) as refused:
        import_file(store, ImportConfig(path))
    assert "long.jsonl.gz:1: the line is longer than" in str(refused.value)
    assert sql(store, "SELECT count(*) FROM comparison")[0][0] == 0


# ----- 5. logins


def test_login_throttle_waits_grow_per_address_stay_short_per_user_and_reset_on_success():
    now = [0.0]
    throttle = LoginThrottle(address_free=3, address_max_wait=300, user_free=5, user_max_wait=30,
                             clock=lambda: now[0])
    for _ in range(3):
        assert throttle.begin_attempt("1.1.1.1", "boss") == 0
    assert throttle.begin_attempt("1.1.1.1", "boss") == pytest.approx(1.0)  # 2 ** 0 after the free tries
    waits = []
    for _ in range(12):
        now[0] += 31  # past the user cap, inside the window, a new address each time: only the name counts
        throttle.begin_attempt(f"2.2.2.{len(waits)}", "boss")
        waits.append(throttle.wait_seconds("9.9.9.9", "boss"))
    assert max(waits) <= 30  # the real user, elsewhere, never waits longer than the user cap
    now[0] += 10_000
    for _ in range(9):
        throttle.failed("3.3.3.3", "other")
        now[0] += 1
    assert throttle.wait_seconds("3.3.3.3", "x") > 10  # one address guessing many names: long waits
    # A correct password takes back only its own attempt: an insider logging into their own account
    # from the guessing address does not wipe the count of guesses made from there.
    now[0] += 400  # past the wait, inside the window
    assert throttle.begin_attempt("3.3.3.3", "insider") == 0
    throttle.succeeded("3.3.3.3", "insider")
    throttle.failed("3.3.3.3", "x")  # the next guess: the 10th from this address, so it waits 2**7 s
    assert throttle.wait_seconds("3.3.3.3", "y") > 100
    assert throttle.wait_seconds("4.4.4.4", "insider") == 0  # the insider's own name is not held back


# ----- 8. markup in names


def test_markup_in_a_model_name_reaches_charts_and_markdown_as_text():
    from app.formatting import inline_text
    from app.inspect_tab import trajectory_figure
    from core.scoring.engine import ScoreResult
    from core.scoring.inspection import Inspection, ResponseScore

    evil = '<b>bold</b><a href="https://evil.example">x</a>![i](https://evil.example/p.png)'
    result = ScoreResult(1.0, None, 1.0, 3, False, [("a", 0.1), ("b", 0.2)], None)
    figure = trajectory_figure(Inspection([ResponseScore(evil, 0, result, "text", 10)], []))
    rendered = json.dumps(figure.to_plotly_json()["data"])
    assert "<b>" not in rendered and "<a " not in rendered and "&lt;b&gt;" in rendered
    shown = inline_text(evil)
    assert "<" not in shown and "](" not in shown and "![" not in shown


# ----- 9. leftovers and plain errors


def test_an_export_removes_staging_folders_left_by_a_killed_export(store, tmp_path):
    from core.data.exporter import ExportConfig, export_dataset

    pairs = [{"prompt": f"Q{i}? ", "chosen": " yes", "rejected": " no"} for i in range(3)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", pairs)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = out_dir / f".rewardlab-export-{dead.pid}-abc"
    abandoned.mkdir()
    (abandoned / "export").write_text("half written")
    live = out_dir / f".rewardlab-export-{os.getpid()}-def"  # a running export's folder is left alone
    live.mkdir()
    export_dataset(store, ExportConfig(out_dir / "prefs.jsonl"))
    assert not abandoned.exists() and live.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([live.name, "prefs.jsonl"])


def test_web_exports_go_to_the_stores_downloads_folder_and_old_ones_are_removed(store, tmp_path):
    from core.data.exporter import DOWNLOAD_KEEP_SECONDS, export_for_download

    pairs = [{"prompt": f"Q{i}? ", "chosen": " yes", "rejected": " no"} for i in range(3)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", pairs)))
    admin = operator_actor(store)
    first, _ = export_for_download(store, admin, format="jsonl", prompt_format="auto", test_size=0)
    downloads = store.data_dir / "downloads"
    assert downloads in first.parents and first.read_text().count("\n") == 3
    old = time.time() - DOWNLOAD_KEEP_SECONDS - 60
    os.utime(first.parent, (old, old))
    second, _ = export_for_download(store, admin, format="parquet", prompt_format="auto", test_size=0.34)
    assert not first.parent.exists() and second.exists() and second.suffix == ".zip"
    assert list(downloads.iterdir()) == [second.parent]
