"""Exporting labels as a TRL preference dataset: majority folding, margins, determinism, TRL reading it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from conftest import run_cli
from sqlalchemy import text
from sqlmodel import select
from test_import import write_jsonl

from core.data.exporter import ExportConfig, export_dataset
from core.preferences.pairs import NothingToExport, build_preference_rows
from core.preferences.votes import STRENGTH_MARGIN
from core.data.importer import ImportConfig, import_file
from storage.labels import LabelError, LabelInput, ensure_user, upsert_label
from storage.models import Label

QUESTIONS = [f"Question {i}?" for i in range(6)]


@pytest.fixture
def candidates(store, tmp_path):
    """Six prompts with two completions each: comparison i has completions ' A{i}' (a) and ' B{i}' (b)."""
    rows = [{"prompt": q, "completions": [f" A{i}", f" B{i}"]} for i, q in enumerate(QUESTIONS)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "cands.jsonl", rows)))
    return store


def label(store, comparison_id: int, annotator: str, choice: str, strength: int | None = None) -> None:
    with store.write() as session:
        annotator_id = ensure_user(session, annotator)
        upsert_label(session, LabelInput(comparison_id, annotator_id, choice, strength=strength))


def test_several_annotators_fold_by_majority_and_the_rest_is_counted(candidates):
    store = candidates
    votes = {
        1: ["a", "a", "b"],  # a wins
        2: ["b", "tie", "b"],  # b wins
        3: ["tie", "tie", "a"],  # tie: left out
        4: ["a", "b"],  # split: left out
        5: ["skip", "skip"],  # skipped: left out
        6: ["both_bad", "both_bad", "a"],  # both bad: left out
    }
    for comparison_id, choices in votes.items():
        for n, choice in enumerate(choices):
            label(store, comparison_id, f"annotator{n}", choice)
    prepared = build_preference_rows(store)
    assert prepared.rows == [
        {"prompt": "Question 0?", "chosen": " A0", "rejected": " B0"},
        {"prompt": "Question 1?", "chosen": " B1", "rejected": " A1"},
    ]
    assert dict(prepared.left_out) == {"tie": 1, "no_majority": 1, "skipped": 1, "both_bad": 1}


def test_strength_becomes_the_trl_margin(candidates):
    label(candidates, 1, "ann", "a", strength=2)
    label(candidates, 2, "ann", "b", strength=1)
    label(candidates, 3, "ann", "a")
    label(candidates, 4, "ann", "a", strength=1)
    label(candidates, 4, "bob", "a", strength=2)
    margins = [row["margin"] for row in build_preference_rows(candidates).rows]
    assert margins == [STRENGTH_MARGIN[2], STRENGTH_MARGIN[1], 0.0, (STRENGTH_MARGIN[1] + STRENGTH_MARGIN[2]) / 2]


def test_a_second_submit_changes_nothing_and_a_new_choice_updates_the_label(candidates):
    """Through ``submit_label``, the path every label takes (page, API): a repeated submit is
    reported unchanged and leaves one row; a new choice updates that row in place."""
    from storage.queue import submit_label

    with candidates.write() as session:
        ann = ensure_user(session, "ann")
        first = submit_label(session, LabelInput(1, ann, "a"))
    with candidates.write() as session:
        again = submit_label(session, LabelInput(1, ann, "a"))
    assert first.changed and not again.changed and again.label_id == first.label_id
    with candidates.read() as session:
        assert session.exec(text("SELECT count(*) FROM label")).one()[0] == 1
    with candidates.write() as session:
        changed = submit_label(session, LabelInput(1, ann, "b", strength=2))
    assert changed.changed and changed.label_id == first.label_id
    with candidates.read() as session:
        assert session.exec(text("SELECT choice, strength FROM label")).all() == [("b", 2)]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"choice": "left"}, "choice must be one of"),
        ({"choice": "a", "strength": 3}, "strength must be 1"),
        ({"choice": "tie", "strength": 1}, "strength applies to a preference"),
        ({"choice": "a", "shown_left": "c"}, "shown_left must be"),
    ],
)
def test_invalid_labels_are_refused_before_the_store(kwargs, message):
    with pytest.raises(LabelError, match=message):
        LabelInput(comparison_id=1, annotator_id=1, **kwargs)


def test_filters_by_annotator_and_time(candidates):
    label(candidates, 1, "ann", "a")
    label(candidates, 2, "bob", "b")
    assert len(build_preference_rows(candidates, annotators=["bob"]).rows) == 1
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert build_preference_rows(candidates, since=future).rows == []


def test_nothing_to_export_says_why(candidates, tmp_path):
    label(candidates, 1, "ann", "tie")
    with pytest.raises(NothingToExport, match="1 tie"):
        export_dataset(candidates, ExportConfig(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_an_export_over_datasets_of_both_prompt_kinds_is_refused_and_names_the_datasets(store, tmp_path):
    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q?", "chosen": " a", "rejected": " b"}])))
    chat = {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", [chat]), dataset="chats"))
    with pytest.raises(NothingToExport, match=r"1 plain-text and 1 chat prompts \(chat: chats; text: default\).*--dataset"):
        build_preference_rows(store)
    with pytest.raises(NothingToExport, match="different prompt kinds"):
        build_preference_rows(store, datasets=["default", "chats"])
    assert build_preference_rows(store, datasets=["chats"]).rows == [chat]
    assert build_preference_rows(store, datasets=["default"]).rows == [{"prompt": "Q?", "chosen": " a", "rejected": " b"}]
    assert build_preference_rows(store, prompt_format="chat").rows == [chat]


@pytest.mark.parametrize("format_name", ["jsonl", "parquet"])
def test_export_is_deterministic(store, tmp_path, format_name):
    pairs = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(30)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", pairs)))
    first = export_dataset(store, ExportConfig(tmp_path / "one", format=format_name, test_size=0.2, seed=7))
    export_dataset(store, ExportConfig(tmp_path / "two", format=format_name, test_size=0.2, seed=7))
    assert (first.train_rows, first.test_rows) == (24, 6)
    for split in ("train", "test"):
        name = f"{split}.{format_name}"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    other_seed = export_dataset(store, ExportConfig(tmp_path / "three", format=format_name, test_size=0.2, seed=8))
    assert other_seed.content_hash == first.content_hash  # same rows...
    assert (tmp_path / "three" / f"test.{format_name}").read_bytes() != (tmp_path / "one" / f"test.{format_name}").read_bytes()


@pytest.mark.parametrize("format_name", ["jsonl", "parquet", "hf"])
def test_datasets_reads_every_export_format(store, tmp_path, format_name):
    import datasets

    pairs = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(10)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", pairs)))
    out = tmp_path / "export"
    export_dataset(store, ExportConfig(out, format=format_name, test_size=0.2))
    loaded = datasets.load_from_disk(str(out)) if format_name == "hf" else datasets.load_dataset(str(out))
    assert loaded["train"].num_rows == 8 and loaded["test"].num_rows == 2
    assert sorted([*loaded["train"]["prompt"], *loaded["test"]["prompt"]]) == sorted(p["prompt"] for p in pairs)


def test_cli_export_refuses_an_empty_store_with_exit_code_2(db_url, tmp_path):
    done = run_cli("export", str(tmp_path / "out.jsonl"), db_url=db_url)
    assert done.returncode == 2
    assert "nothing to export" in done.stderr


def test_cli_refuses_a_bad_option_value_with_the_fix(db_url, tmp_path):
    done = run_cli("export", str(tmp_path / "out"), "--test-size", "0.9", db_url=db_url)
    assert done.returncode == 2
    assert "test_size must be between 0 and 0.5" in done.stderr


@pytest.mark.slow
def test_reward_trainer_trains_on_the_export_as_is(store, tmp_path):
    """A conversational export with <think> blocks, read by datasets and trained by TRL unchanged. (On SQLite only:
    the tests above check the exported rows on PostgreSQL too, and training on a file does not touch the store.)"""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from core.training.demo_model import build_demo_reward_model

    def chat(i: int, good: bool) -> list[dict[str, str]]:
        answer = f"<think>\ncheck {i} carefully\n</think>\n\nThe answer is right." if good else "no idea, whatever"
        return [{"role": "assistant", "content": answer}]

    pairs = [
        {"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}], "chosen": chat(i, True), "rejected": chat(i, False)}
        for i in range(48)
    ]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "pairs.jsonl", pairs)))
    out = tmp_path / "export"
    export_dataset(store, ExportConfig(out, format="jsonl", test_size=0.25, seed=0))
    data = datasets.load_dataset(str(out))

    texts = [m["content"] for row in pairs for key in ("prompt", "chosen", "rejected") for m in row[key]]
    model_dir = build_demo_reward_model(tmp_path / "model", texts)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = RewardConfig(
        output_dir=str(tmp_path / "run"),
        bf16=False,  # RewardConfig defaults to bf16, which fails on CPU
        activation_checkpointing=False,
        max_steps=60,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["test"],
                            processing_class=tokenizer)
    torch.manual_seed(0)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] >= 0.9, metrics


def test_csv_export_never_carries_a_formula_a_spreadsheet_would_run(store, tmp_path):
    import csv

    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "=HYPERLINK(\"http://x\")"]
    rows = [{"prompt": f"Q{i}? {text}", "chosen": text, "rejected": f"fine {i}"} for i, text in enumerate(hostile)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", rows)))
    out = tmp_path / "out.csv"
    export_dataset(store, ExportConfig(out, format="csv"))
    with open(out, newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert "'=cmd|' /C calc'!A0" in cells
    # The training formats keep the text exactly.
    export_dataset(store, ExportConfig(tmp_path / "out.jsonl"))
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["chosen"] == hostile[0]
