"""Grouped training (group_by_prompt): every response of a prompt scored once per step, the loss the
weighted Bradley-Terry loss over the prompt's pairs.

Oracles: TRL's own RewardTrainer tokenization and a plain transformers forward of each sequence alone,
the loss worked out with Python's math; raw SQL on the store; the exported file."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
from conftest import run_worker_on_two_processes, sql

from core.config_fields import add_config_arguments
from core.data.importer import import_rows
from core.training.config import TrainingConfig
from core.training.grouped import group_rows, split_by_prompt

CENTER = 0.01


def ranking_pairs(n_prompts: int, *, chat: bool = False, weighted: bool = True, margins: bool = True,
                  odd_prefer_short: bool = False) -> list[dict]:
    """All C(K,2) pairs of rankings of K = 3 (even prompts) or 4 (odd) responses, the longest best, as
    the ranking export writes them: weight 1/C(K,2) (None on every third prompt: counts as 1), margin 0.25
    per rank apart. ``odd_prefer_short`` reverses the rankings of odd prompts."""
    rows = []
    for p in range(n_prompts):
        k = 3 + p % 2
        responses = [f" a careful, correct answer {p}" + " with reasons" * (k - rank) if rank < k - 1 else f" no {p}"
                     for rank in range(k)]
        prompt = [{"role": "user", "content": f"Question {p}?"}] if chat else f"Question {p}? "
        if odd_prefer_short and p % 2:
            responses.reverse()
        for better, worse in combinations(range(k), 2):
            row = {"prompt": prompt, "chosen": responses[better], "rejected": responses[worse]}
            if chat:
                row["chosen"], row["rejected"] = ([{"role": "assistant", "content": row[side]}]
                                                  for side in ("chosen", "rejected"))
            if weighted:
                row["weight"] = None if p % 3 == 2 else 1 / math.comb(k, 2)
            if margins:
                row["margin"] = 0.25 * (worse - better)
            rows.append(row)
    return rows


def test_pairs_group_by_prompt_and_a_prompt_with_many_responses_is_cut_into_bounded_groups():
    rows = ranking_pairs(4)
    groups = group_rows(rows)
    assert [len(g.responses) for g in groups] == [3, 4, 3, 4]
    assert sum(len(g.chosen) for g in groups) == len(rows)
    chain = [{"prompt": "Q? ", "chosen": f" r{i}", "rejected": f" r{i + 1}"} for i in range(40)]  # 41 responses
    cut = group_rows(chain, max_responses=16)
    assert all(len(g.responses) <= 16 for g in cut) and len(cut) == 3
    assert sorted((g.responses[c], g.responses[r]) for g in cut for c, r in zip(g.chosen, g.rejected)) == \
        sorted((row["chosen"], row["rejected"]) for row in chain)


def test_the_held_out_split_takes_whole_prompts_and_is_seeded():
    rows = ranking_pairs(20)
    train, held_out = split_by_prompt(rows, 0.25, seed=3)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held_out})
    assert len({r["prompt"] for r in held_out}) == 5 and len(train) + len(held_out) == len(rows)
    assert split_by_prompt(rows, 0.25, seed=3) == (train, held_out)
    assert split_by_prompt(rows[:3], 0.5, seed=0) == (rows[:3], [])  # one prompt: nothing to hold out


def test_the_option_is_a_train_flag_and_a_form_field():
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainingConfig)
    assert parser.parse_args(["--group-by-prompt"]).group_by_prompt is True
    assert parser.parse_args([]).group_by_prompt is False
    assert TrainingConfig.from_form({"group_by_prompt": True}).group_by_prompt
    assert TrainingConfig.from_record(TrainingConfig(group_by_prompt=True).to_record()).group_by_prompt


def with_weight_on_row_2(monkeypatch, value) -> None:  # noqa: ANN001
    """Training data as the ranking export writes it: a ``weight`` on some rows (here the second)."""
    import core.training.trainer as trainer

    exported = trainer.build_preference_rows

    def with_a_weight(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        prepared = exported(*args, **kwargs)
        prepared.rows[1]["weight"] = value
        return prepared

    monkeypatch.setattr(trainer, "build_preference_rows", with_a_weight)


@pytest.mark.parametrize("value,message", [(0, "weight must be above 0"), (float("nan"), "finite number"),
                                           ("1", "finite number")])
def test_a_bad_weight_is_refused_before_training_naming_the_row(store, monkeypatch, value, message):
    from core.training.trainer import TrainingError, take_snapshot

    import_rows(store, ranking_pairs(2, weighted=False), source="import:ranked")
    with_weight_on_row_2(monkeypatch, value)
    with pytest.raises(TrainingError, match=f"training row 2: .*{message}"):
        take_snapshot(store, TrainingConfig(group_by_prompt=True))


def test_a_weight_on_some_rows_reaches_the_training_dataset_for_every_row(store, monkeypatch):
    """``datasets.Dataset.from_list`` takes its columns from the first row: a weight on later rows
    only must not vanish (rows without one weigh 1)."""
    import datasets

    from core.training.trainer import take_snapshot

    import_rows(store, ranking_pairs(2, weighted=False), source="import:ranked")
    with_weight_on_row_2(monkeypatch, 0.25)
    snapshot = take_snapshot(store, TrainingConfig(eval_fraction=0))
    assert datasets.Dataset.from_list(snapshot.train)["weight"][:3] == [1.0, 0.25, 1.0]


def test_check_data_says_what_grouping_saves_and_counts_the_batch_in_prompts(store):
    from core.accounts import operator_actor
    from core.jobs.scheduling import preview_training

    import_rows(store, ranking_pairs(8, weighted=False), source="import:ranked")  # K = 3, 4, 3, 4, ...
    summary = preview_training(store, operator_actor(store), TrainingConfig(group_by_prompt=True, eval_fraction=0))
    # 36 pairs: 72 sequences plain, 28 responses grouped; the demo's 8 pairs (16 sequences) = 5 prompts of 3.5
    assert "8 group(s) of 36 pairs; an epoch scores 28 responses instead of 72" in summary
    assert "batch size 5 prompts" in summary


# ----- the loss, against TRL's tokenization and plain forwards -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from core.training.demo_model import build_demo_reward_model

    texts = [json.dumps(row) for row in ranking_pairs(8) + ranking_pairs(8, chat=True)] * 3
    return build_demo_reward_model(tmp_path_factory.mktemp("tiny"), texts, hidden_size=32, num_layers=2, num_heads=2)


def reward_args(folder: Path, **kwargs):  # noqa: ANN003, ANN201
    from trl import RewardConfig

    return RewardConfig(output_dir=str(folder), bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                        center_rewards_coefficient=CENTER, disable_tqdm=True, activation_checkpointing=False, **kwargs)


def plain_weighted_loss(model, tokenized) -> float:  # noqa: ANN001
    """The oracle: each side of each pair (as TRL tokenized it) scored alone by a plain forward, the loss
    w * (-log sigmoid(r_c - r_r - m) + c (r_c + r_r)^2) averaged with weights, in Python floats."""
    import torch

    total, weights = 0.0, 0.0
    with torch.no_grad():
        for example in tokenized:
            chosen, rejected = (model(input_ids=torch.tensor([example[key]])).logits[0, 0].item()
                                for key in ("chosen_ids", "rejected_ids"))
            weight = 1.0 if example["weight"] is None else example["weight"]
            x = chosen - rejected - example["margin"]
            total += weight * (math.log1p(math.exp(-x)) + CENTER * (chosen + rejected) ** 2)
            weights += weight
    return total / weights


@pytest.mark.slow
@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
@pytest.mark.parametrize("kind", ["text", "chat"])
@pytest.mark.parametrize("mode", ["grouped", "plain"])
def test_the_weighted_loss_equals_the_weighted_mean_of_plain_per_pair_losses(tiny_model, tmp_path, kind, mode,
                                                                            padding_free):
    """Padded or padding-free (every sequence of the batch end to end in one row), the loss is the
    oracle's, whose rewards come from a separately loaded model scoring each sequence alone."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer

    from core.training import packing
    from core.training.trainer import length_grouped_reward_trainer, prompt_grouped_reward_trainer

    rows = ranking_pairs(5, chat=kind == "chat")
    long_side = " and more reasons" * 60  # one response past max_length: TRL drops its pairs, so must we
    rows.append({**rows[0], "chosen": [{"role": "assistant", "content": long_side}] if kind == "chat" else long_side})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    if padding_free:
        packing.enable(model)
    trainer_class = prompt_grouped_reward_trainer() if mode == "grouped" else length_grouped_reward_trainer()
    batch_size = 5 if mode == "grouped" else len(rows)  # one batch: every prompt, or every pair
    args = reward_args(tmp_path / "run", per_device_train_batch_size=batch_size, max_length=120)
    trainer = trainer_class(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tokenizer, padding_free=padding_free)
    (batch,) = list(trainer.get_train_dataloader())
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()

    oracle = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    reference = RewardTrainer(model=oracle, args=reward_args(tmp_path / "plain", max_length=120),
                              train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    assert len(reference.train_dataset) == len(rows) - 1  # TRL dropped the long pair
    assert loss == pytest.approx(plain_weighted_loss(oracle, reference.train_dataset), abs=1e-6)
    responses = 3 + 4 + 3 + 4 + 3  # each unique response scored once in grouped mode; both sides of each pair in plain
    sequences = responses if mode == "grouped" else 2 * (len(rows) - 1)
    if padding_free:  # one row holding exactly the sequences' own tokens, no pad token
        assert batch["input_ids"].shape[0] == 1 and len(batch["sequence_ends"]) == sequences
        assert (batch["input_ids"] == tokenizer.pad_token_id).sum() == 0
    else:
        assert len(batch["input_ids"]) == sequences


# ----- through the job code and the export ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_grouped_job_trains_registers_and_its_held_out_accuracy_is_per_pair_over_whole_prompts(store, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.accounts import operator_actor
    from core.jobs.scheduling import submit_job
    from core.training.trainer import run_training, take_snapshot
    from storage.jobs import metrics_of

    import_rows(store, ranking_pairs(16, weighted=False, odd_prefer_short=True), source="import:ranked")
    # A nearly untrained model (tiny steps) on rankings half of which prefer the shorter reply, so
    # held-out accuracy lies strictly between 0 and 1; held-out prompts of 3 and 4 responses make a
    # mean over prompts differ from one over pairs.
    config = TrainingConfig(output_name="grouped-rm", group_by_prompt=True, max_steps=2, learning_rate=1e-7,
                            eval_fraction=0.25, logging_steps=1, seed=0)
    job_id = submit_job(store, operator_actor(store), config)
    lines: list[str] = []
    outcome = run_training(store, config, tmp_path / "job", job_id=job_id, log=lines.append)
    assert outcome.status == "succeeded"
    assert any("grouped by prompt: 12 group(s)" in line for line in lines), lines
    assert sql(store, "SELECT name, job_id FROM rewardmodel") == [("grouped-rm", job_id)]
    with store.read() as session:
        assert {"loss", "accuracy", "margin", "mean_reward", "eval_loss"} <= set(metrics_of(session, job_id))

    snapshot = take_snapshot(store, config)
    held_prompts = {row["prompt"] for row in snapshot.eval}
    assert len(held_prompts) == 4 and held_prompts.isdisjoint(row["prompt"] for row in snapshot.train)
    tokenizer = AutoTokenizer.from_pretrained(outcome.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(outcome.model_dir).eval()
    with torch.no_grad():
        def reward(text: str) -> float:
            return model(**tokenizer(text + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()

        right = [reward(r["prompt"] + r["chosen"]) > reward(r["prompt"] + r["rejected"]) for r in snapshot.eval]
    expected = sum(right) / len(right)
    assert 0 < expected < 1, (expected, held_prompts, right)
    stored = sql(store, "SELECT eval_accuracy FROM rewardmodel")[0][0]
    assert stored == pytest.approx(expected)


@pytest.mark.slow
def test_the_exported_file_trains_with_plain_trl_and_grouped(store, tiny_model, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer

    from core.data.exporter import ExportConfig, export_dataset
    from core.training.trainer import prompt_grouped_reward_trainer

    from core.accounts import actor_for, add_user
    from core.labeling.actions import next_comparison, rank_item

    # A ranking dataset, ranked in the app (longest response best), exported with InstructGPT's weights.
    candidates = {}
    for row in ranking_pairs(12, weighted=False, margins=False):
        candidates.setdefault(row["prompt"], set()).update((row["chosen"], row["rejected"]))
    import_rows(store, [{"prompt": p, "completions": sorted(c)} for p, c in candidates.items()], source="import:ranked",
                dataset="ranked", question="ranking")
    add_user(store, "ann", "annotator", "correct horse battery")
    ann = actor_for(store, "ann")
    while (item := next_comparison(store, ann, "ranked")) is not None:
        best_first = sorted(item.completions, key=lambda c: -len(c.text))
        rank_item(store, ann, item.item_id, [[c.completion_id] for c in best_first])
    exported = export_dataset(store, ExportConfig(tmp_path / "preferences.jsonl", dataset=["ranked"])).out
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == sum(math.comb(3 + p % 2, 2) for p in range(12))
    per_prompt = {row["prompt"]: sum(r["prompt"] == row["prompt"] for r in rows) for row in rows}
    assert [row["weight"] for row in rows] == pytest.approx([1 / per_prompt[row["prompt"]] for row in rows])
    data = datasets.load_dataset("json", data_files=str(exported), split="train")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for name, trainer_class, batch in (("plain", RewardTrainer, 8), ("grouped", prompt_grouped_reward_trainer(), 3)):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
        args = reward_args(tmp_path / name, per_device_train_batch_size=batch, learning_rate=3e-3, max_steps=40,
                           logging_steps=40)
        trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.train()
        model.eval()
        with torch.no_grad():
            def reward(text: str) -> float:
                return model(**tokenizer(text + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()

            right = sum(reward(r["prompt"] + r["chosen"]) > reward(r["prompt"] + r["rejected"]) for r in rows)
        assert right / len(rows) >= 0.9, (name, right, len(rows))


@pytest.mark.slow
def test_two_processes_train_a_grouped_job_with_prompts_of_different_sizes(db_url, tmp_path):
    """Ranks hold different numbers of responses per step (prompts of 3 and 4): the metrics are gathered
    as sums, and evaluation gathers no rewards, so neither waits on a mismatched collective."""
    from core.accounts import operator_actor
    from core.jobs.scheduling import submit_job
    from storage.engine import Store

    store = Store(db_url)
    import_rows(store, ranking_pairs(10, weighted=False), source="import:ranked")
    config = TrainingConfig(output_name="two-ranks-grouped", group_by_prompt=True, max_steps=4, logging_steps=1,
                            eval_fraction=0.2, per_device_train_batch_size=1, seed=0)  # held out: K = 4 and 3
    job_id = submit_job(store, operator_actor(store), config)
    done = run_worker_on_two_processes(db_url, job_id)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sql(store, "SELECT status FROM trainingjob") == [("succeeded",)]
    assert sql(store, "SELECT name FROM rewardmodel") == [("two-ranks-grouped",)]
    per_step = sql(store, "SELECT step, count(*) FROM trainingmetric WHERE name = 'accuracy' GROUP BY step "
                          "ORDER BY step")
    assert per_step == [(step, 1) for step in range(1, 5)]
    assert sql(store, "SELECT count(*) FROM trainingmetric WHERE name = 'eval_accuracy'")[0][0] >= 1
    store.dispose()
