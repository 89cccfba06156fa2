"""Process reward models: training on step marks, and step scores read in one forward pass.

Oracles: a plain transformers forward of each step's prefix (the token ids up to the step's last token, through
``AutoModelForSequenceClassification``, which pools at the last token), torch's own binary cross-entropy on those
logits, and SQL on the store."""

from __future__ import annotations

import json
import random

import pytest
from conftest import sql
from test_import import write_jsonl

from core.data.importer import ImportConfig, import_file
from core.jobs.worker import execute_job
from core.scoring.steps import format_trace
from core.process.training import StepCollator, step_logits, take_step_snapshot, tokenize_traces
from core.training.config import TrainingConfig


def arithmetic_traces(n: int, seed: int = 0) -> list[dict]:
    """Traces whose wrong steps say so in a word the model can learn ("oops"), labeled in TRL's stepwise format."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = [], []
        for k in range(rng.randint(2, 5)):
            good = rng.random() < 0.7
            steps.append(f"step {k}: {i} plus {k} is {i + k}" if good else f"step {k}: oops {i} plus {k} is {i - k}")
            labels.append(good)
        rows.append({"prompt": f"Add the numbers for case {i}.", "completions": steps, "labels": labels})
    return rows


@pytest.fixture
def step_store(store, tmp_path):  # noqa: ANN001, ANN201
    import_file(store, ImportConfig(write_jsonl(tmp_path / "prm.jsonl", arithmetic_traces(40)), dataset="prm",
                                    question="steps"))
    return store


def _plain_prefix_logit(model, ids: list[int], position: int) -> float:  # noqa: ANN001
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids[: position + 1]])).logits[0, 0].item()


@pytest.mark.slow
def test_a_prm_job_trains_and_every_step_score_equals_a_plain_forward_of_its_prefix(step_store):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.accounts import actor_for
    from core.jobs.scheduling import submit_job

    config = TrainingConfig(dataset=["prm"], max_steps=40, logging_steps=10, save_steps=40, eval_fraction=0.25,
                            output_name="prm-test", seed=0)
    job_id = submit_job(step_store, actor_for(step_store, None), config)
    assert execute_job(step_store, job_id, log=lambda *_: None) == 0
    (status,), = sql(step_store, f"SELECT status FROM trainingjob WHERE id = {job_id}")
    assert status == "succeeded"
    (path, accuracy), = sql(step_store, "SELECT path, eval_accuracy FROM rewardmodel WHERE name = 'prm-test'")
    assert accuracy is not None and accuracy > 0.8  # the planted word makes wrong steps easy to find
    metrics = {name for name, in sql(step_store, f"SELECT DISTINCT name FROM trainingmetric WHERE job_id = {job_id}")}
    assert {"loss", "step_accuracy", "eval_step_accuracy"} <= metrics

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    snapshot = take_step_snapshot(step_store, config)
    examples, _ = tokenize_traces(tokenizer, snapshot.eval, 1024)
    batch = StepCollator(tokenizer.pad_token_id, padding_free=False)(examples)
    with torch.no_grad():
        one_forward = step_logits(model, model.score, batch)
    oracle = torch.tensor([_plain_prefix_logit(model, e["input_ids"], p)
                           for e in examples for p in e["step_positions"]])
    assert torch.allclose(one_forward, oracle, atol=1e-4)
    # the saved model ranks wrong steps below right ones on held-out traces
    labels = batch["step_labels"]
    assert (oracle[labels == 1].mean() > oracle[labels == 0].mean()).item()


def test_the_step_loss_of_one_forward_equals_the_loss_of_a_plain_forward_per_prefix_padded_and_padding_free(
        step_store, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from core.training import packing
    from core.training.trainer import load_model_for_training, load_tokenizer_for_texts

    config = TrainingConfig(dataset=["prm"], eval_fraction=0.0)
    snapshot = take_step_snapshot(step_store, config)
    texts = [t for trace in snapshot.train for t in (trace.prompt, trace.completion)]
    tokenizer = load_tokenizer_for_texts(config, lambda: texts, tmp_path)
    model, _ = load_model_for_training(config, tokenizer, tmp_path)
    model.eval()
    examples, _ = tokenize_traces(tokenizer, snapshot.train[:6], 1024)
    oracle_logits = torch.tensor([_plain_prefix_logit(model, e["input_ids"], p)
                                  for e in examples for p in e["step_positions"]])
    labels = torch.tensor([label for e in examples for label in e["step_labels"]])
    oracle_loss = torch.nn.functional.binary_cross_entropy_with_logits(oracle_logits, labels)
    with torch.no_grad():
        padded = step_logits(model, model.score, StepCollator(tokenizer.pad_token_id, padding_free=False)(examples))
    assert torch.allclose(padded, oracle_logits, atol=1e-5)
    assert abs(torch.nn.functional.binary_cross_entropy_with_logits(padded, labels) - oracle_loss) < 1e-5
    assert packing.supports(model) is None
    packing.enable(model)
    with torch.no_grad():
        packed = step_logits(model, model.score, StepCollator(tokenizer.pad_token_id, padding_free=True)(examples))
    assert abs(torch.nn.functional.binary_cross_entropy_with_logits(packed, labels) - oracle_loss) < 1e-5
    assert isinstance(model, AutoModelForSequenceClassification._model_mapping[type(model.config)])


def test_a_step_is_read_at_the_last_token_of_its_prefix_separator_included(tmp_path):
    from core.steps import join_steps, prefix_ends
    from core.training.demo_model import build_demo_tokenizer

    tokenizer = build_demo_tokenizer(["one two three four five six seven"] * 20)
    completion, spans = join_steps(["one two", "three four", "five"])
    trace = format_trace(tokenizer, "Count:", completion, prefix_ends(len(completion), spans))
    decoded = [tokenizer.decode(trace.ids[: p + 1]) for p in trace.step_positions]
    assert decoded[0].replace(" ", "").startswith("Count:onetwo") and "three" not in decoded[0]
    assert "four" in decoded[1] and "five" not in decoded[1]
    assert decoded[2].rstrip().endswith("five")
    assert trace.step_positions == sorted(trace.step_positions) and len(trace.ids) == trace.step_positions[-1] + 1


def test_a_job_mixing_steps_and_pair_datasets_is_refused_with_the_reason(step_store, tmp_path):
    from core.accounts import actor_for
    from core.jobs.scheduling import submit_job

    import_file(step_store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}]),
                                         dataset="pairs"))
    job_id = submit_job(step_store, actor_for(step_store, None), TrainingConfig(dataset=["prm", "pairs"]))
    assert execute_job(step_store, job_id, log=lambda *_: None) == 1
    (error,), = sql(step_store, f"SELECT error FROM trainingjob WHERE id = {job_id}")
    assert "train them in separate jobs" in error
    assert json.loads(json.dumps(error))  # a readable message, not a traceback


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):  # noqa: ANN001, ANN201
    """A small untrained decoder reward model (the demo base), saved as a folder: step scores are checked against
    a plain forward, which needs no training."""
    from core.training.demo_model import build_demo_reward_model

    folder = tmp_path_factory.mktemp("prm") / "model"
    texts = [json.dumps(row) for row in arithmetic_traces(30)]
    build_demo_reward_model(folder, texts * 2, seed=0)
    return folder


def test_score_steps_writes_one_score_per_step_equal_to_the_sigmoid_of_a_plain_forward_of_each_prefix(
        tiny_prm, tmp_path):
    import math

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.scoring.evaluation import ScoreConfig, score_file

    rows = [{"prompt": "Add 2 and 3.", "steps": ["step 0: 2 plus 0 is 2", "step 1: oops 2 plus 1 is 1", "answer 5"]},
            {"prompt": "Add 4.", "completion": "<think>step 0: 4 plus 0 is 4\n\nstep 1: 4 plus 1 is 5</think>\n\nfive"},
            {"prompt": [{"role": "user", "content": "Add 7."}], "steps": ["step 0: 7 plus 0 is 7", "seven"]}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert score_file(ScoreConfig(model=str(tiny_prm), input=source, output=out, steps=True, step_threshold=0.5)) == 3
    written = [json.loads(line) for line in out.read_text().splitlines()]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_prm).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_prm)
    assert written[1]["steps_scored"] == ["step 0: 4 plus 0 is 4", "step 1: 4 plus 1 is 5", "five"]
    for row in written:
        prompt = row["prompt"]
        steps = row["steps_scored"]
        # the oracle: the text of each prefix, tokenized whole as the trace is, and a plain forward of its tokens
        from core.steps import join_steps, prefix_ends, split_steps
        completion = row.get("completion") or join_steps(row["steps"])[0]
        spans = split_steps(completion) if "completion" in row else join_steps(row["steps"])[1]
        trace = format_trace(tokenizer, prompt, completion, prefix_ends(len(completion), spans))
        expected = []
        for position in trace.step_positions:
            with torch.no_grad():
                logit = model(input_ids=torch.tensor([trace.ids[: position + 1]])).logits[0, 0].item()
            expected.append(1 / (1 + math.exp(-logit)))
        assert len(row["step_scores"]) == len(steps)
        assert row["step_scores"] == pytest.approx(expected, abs=1e-4)
        low = next((k for k, score in enumerate(expected) if score < 0.5), None)
        assert row["first_low_step"] == low
        assert row["reward"] is not None and row["over_max_length"] is False


def test_inspect_overlays_step_scores_at_step_ends_of_the_token_curve_and_loads_the_humans_first_errors(
        tiny_prm, store, tmp_path):
    import math

    import torch
    from transformers import AutoModelForSequenceClassification

    from core.accounts import actor_for
    from core.labeling.actions import label_steps, next_comparison
    from core.scoring.engine import RewardScorer
    from core.scoring.inspection import comparison_for_inspection, inspect_responses
    from core.steps import StepRule

    response = "<think>step 0: 4 plus 0 is 4\n\nstep 1: oops 4 plus 1 is 3</think>\n\nthree"
    scorer = RewardScorer(tiny_prm)
    inspection = inspect_responses({"prm": scorer}, "Add 4.", [response], step_rule=StepRule("paragraphs"))
    (score,) = inspection.scores
    model = AutoModelForSequenceClassification.from_pretrained(tiny_prm).eval()
    example = scorer.format("Add 4.", response)
    start = example.response_tokens[0]
    assert len(score.step_tokens) == 3 and score.step_tokens == sorted(score.step_tokens)
    for x, value in zip(score.step_tokens, score.step_scores.scores, strict=True):
        with torch.no_grad():
            logit = model(input_ids=torch.tensor([example.ids[: start + x + 1]])).logits[0, 0].item()
        assert value == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-4)
    # the last step's score is read at the last response token, where the per-token curve ends
    assert score.step_tokens[-1] == len(score.result.trajectory) - 1

    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Add 4.", "completion": response}]),
                                    dataset="prm", question="steps"))
    ann = actor_for(store, None)
    item = next_comparison(store, ann, "prm")
    label_steps(store, ann, item.item_id, ["+", "-", None])
    loaded = comparison_for_inspection(store, ann, item.item_id)
    assert loaded.step_rule == "paragraphs" and list(loaded.human_first_errors.values()) == [1]


def test_check_data_on_a_steps_dataset_counts_traces_and_labeled_steps(step_store):
    from core.accounts import actor_for
    from core.jobs.scheduling import preview_training

    config = TrainingConfig(dataset=["prm"], eval_fraction=0.25)
    text = preview_training(step_store, actor_for(step_store, None), config)
    rows = arithmetic_traces(40)
    labels = [label for row in rows for label in row["labels"]]
    assert "Process reward model: 30 traces train and 10 evaluate" in text
    assert f"{len(labels)} labeled steps ({sum(labels)} correct, {len(labels) - sum(labels)} wrong)" in text
