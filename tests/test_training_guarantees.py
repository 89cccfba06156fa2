"""What training promises beyond "it trains": the same seed gives the same model, any sequence
classifier trains or says why, inputs past a model's limit are reported and never crash, an
interrupted job never stays "running", evaluation stays a small share of the run, the registry's
held-out accuracy is per pair, several processes write once, and 4-bit + LoRA runs here.

Oracles are plain transformers forwards on the saved folders, raw SQL on the store and the
exported/scored files, never the scoring engine or the registry code under test."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, run_app, run_worker_on_two_processes, setup_cli, sql
from test_import import write_jsonl

from core.data.importer import ImportConfig, import_file
from core.training.config import TrainingConfig
from core.training.trainer import evaluation_interval, run_training

pytestmark = pytest.mark.slow

PAIRS = [{"prompt": f"Question {i}? ", "chosen": f" a careful, correct and helpful answer number {i}",
          "rejected": f" no {i}"} for i in range(24)]


def plain_rewards(folder: Path, texts: list[str]) -> list[float]:
    """The oracle: transformers' own classifier forward on the saved folder, one text at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]


@pytest.fixture
def pair_store(store, tmp_path):
    import_file(store, ImportConfig(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)))
    return store


@pytest.fixture(scope="module")
def causal_base(tmp_path_factory) -> Path:
    """A base causal LM (no reward head in the checkpoint): the head is drawn fresh at load time."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from core.training.demo_model import build_demo_tokenizer

    folder = tmp_path_factory.mktemp("causal-base")
    tokenizer = build_demo_tokenizer([p[k] for p in PAIRS for k in ("prompt", "chosen", "rejected")] * 4)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_same_seed_same_rewards_from_a_base_causal_lm_and_another_seed_differs(pair_store, causal_base, tmp_path):
    outcomes = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        config = TrainingConfig(base_model=str(causal_base), output_name=f"seeded-{run}", seed=seed, max_steps=3,
                                learning_rate=1e-3, per_device_train_batch_size=4, eval_fraction=0)
        outcomes[run] = run_training(pair_store, config, tmp_path / run).model_dir
    texts = ["Question 3? a careful answer<|im_end|>", "Question 9? no<|im_end|>"]
    a, b, c = (plain_rewards(outcomes[run], texts) for run in "abc")
    assert a == b
    assert max(abs(x - y) for x, y in zip(a, c, strict=True)) > 1e-4


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory) -> Path:
    """A BERT-style sequence classifier whose tokenizer has [CLS]/[SEP] and no EOS, 64 positions."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert-base")
    words = BertWordPieceTokenizer(lowercase=True)
    words.train_from_iterator([p[k] for p in PAIRS for k in ("prompt", "chosen", "rejected")] * 4, vocab_size=300,
                              show_progress=False)
    words.save_model(str(folder))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=64)
    assert tokenizer.eos_token is None and tokenizer.sep_token == "[SEP]"
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     max_position_embeddings=64, num_labels=1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_tokenizer_without_eos_trains_with_its_separator_and_scoring_agrees(pair_store, bert_base, tmp_path):
    config = TrainingConfig(base_model=str(bert_base), output_name="bert-rm", max_steps=3, learning_rate=1e-3,
                            per_device_train_batch_size=4, eval_fraction=0, max_length=64)
    outcome = run_training(pair_store, config, tmp_path / "job")
    assert any("separator '[SEP]' is used as EOS" in note for note in outcome.notes)
    notes = sql(pair_store, "SELECT config FROM rewardmodel WHERE name = 'bert-rm'")[0][0]
    assert "[SEP]" in json.dumps(json.loads(notes) if isinstance(notes, str) else notes)
    out = tmp_path / "scored.jsonl"
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Question 1? ", "response": " a careful answer"}])
    done = run_app("score", "--model", str(outcome.model_dir), "--input", str(tmp_path / "rows.jsonl"), "--output",
                   str(out))
    assert done.returncode == 0, done.stderr
    scored = json.loads(out.read_text())["reward"]
    # The oracle: the text as RewardTrainer formats a standard example (prompt + response + EOS=[SEP]).
    assert scored == pytest.approx(plain_rewards(outcome.model_dir, ["Question 1?  a careful answer[SEP]"])[0], abs=1e-5)


def test_score_and_eval_report_inputs_past_an_encoders_positions_instead_of_crashing(bert_base, tmp_path):
    long_text = " careful" * 200  # far past 64 positions
    rows = [{"prompt": "Q? ", "response": " short"}, {"prompt": "Q? ", "response": long_text}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    done = run_app("score", "--model", str(bert_base), "--input", str(tmp_path / "rows.jsonl"), "--output", str(out))
    assert done.returncode == 0, done.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["over_max_length"] for row in scored] == [False, True]
    assert scored[0]["reward"] is not None and scored[1]["reward"] is None
    pairs = [{"prompt": "Q? ", "chosen": " good", "rejected": " bad"}, {"prompt": "Q? ", "chosen": long_text, "rejected": " b"}]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    done = run_app("eval", "--model", str(bert_base), "--input", str(tmp_path / "pairs.jsonl"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n"] == 1 and result["n_over_max_length"] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_foreground_train_ends_cancelled_never_running(signum, db_url, tmp_path):
    rows = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert setup_cli("import", str(rows), db_url=db_url).returncode == 0
    process = subprocess.Popen([sys.executable, "app.py", "train", "--max-steps", "100000", "--logging-steps", "50",
                                "--db", db_url], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    from storage.engine import Store

    store = Store(db_url)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = sql(store, "SELECT status, current_step FROM trainingjob")
        if state and state[0][0] == "running" and state[0][1] > 0:
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"the job never started: {process.stdout.read()[-2000:]}")
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert sql(store, "SELECT status FROM trainingjob") == [("cancelled",)], output[-2000:]
    assert "stopping at the next step" in output


def test_evaluation_runs_on_a_cadence_that_keeps_it_near_a_tenth_of_training_and_once_at_the_end(pair_store, tmp_path):
    from core.accounts import operator_actor
    from core.jobs.scheduling import submit_job

    assert evaluation_interval(TrainingConfig(logging_steps=5), n_eval_pairs=3, batch_size=8) == 5
    assert evaluation_interval(TrainingConfig(logging_steps=5), n_eval_pairs=240, batch_size=8) == 100
    config = TrainingConfig(output_name="cadence", max_steps=20, logging_steps=2, eval_fraction=0.25,
                            per_device_train_batch_size=2)
    job_id = submit_job(pair_store, operator_actor(pair_store), config)
    run_training(pair_store, config, tmp_path / "job", job_id=job_id)
    # 6 held-out pairs, batch 2: every 10 steps (10 and 20; the final evaluation lands on step 20),
    # where evaluating at every logging step would have run 10 times.
    evaluated = sql(pair_store, f"SELECT step FROM trainingmetric WHERE job_id = {job_id} AND name = 'eval_loss' ORDER BY step")
    assert [step for (step,) in evaluated] == [10, 20]
    trained = sql(pair_store, f"SELECT count(*) FROM trainingmetric WHERE job_id = {job_id} AND name = 'loss'")[0][0]
    assert trained == 10


def test_the_registry_accuracy_is_per_pair_over_the_whole_held_out_split(store, tmp_path):
    from core.preferences.pairs import build_preference_rows, split_rows

    # Half the pairs prefer the longer reply, half the shorter: a barely trained model gets some right.
    mixed = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} if i % 2 else row for i, row in enumerate(PAIRS)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "mixed.jsonl", mixed)))
    pair_store = store
    # One tiny step: the model is still close to random, so held-out accuracy is far from 1 and the
    # 7 held-out pairs fall in batches of 4 and 3, where a mean of batch accuracies is not per pair.
    config = TrainingConfig(output_name="per-pair", max_steps=1, learning_rate=1e-5, eval_fraction=0.3,
                            per_device_train_batch_size=4)
    outcome = run_training(pair_store, config, tmp_path / "job")
    _, held_out = split_rows(build_preference_rows(pair_store).rows, config.eval_fraction, config.seed)
    eos = "<|im_end|>"
    chosen = plain_rewards(outcome.model_dir, [r["prompt"] + r["chosen"] + eos for r in held_out])
    rejected = plain_rewards(outcome.model_dir, [r["prompt"] + r["rejected"] + eos for r in held_out])
    expected = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)
    stored = sql(pair_store, "SELECT eval_accuracy FROM rewardmodel WHERE name = 'per-pair'")[0][0]
    assert len(held_out) == 7 and 0 < expected < 1
    assert stored == pytest.approx(expected)


def test_two_processes_train_one_job_and_only_the_main_one_writes(db_url, tmp_path):
    """``python -m torch.distributed.run --nproc_per_node 2`` (gloo on CPU) runs the real worker: one job
    row, one registered model, metrics once per step; both ranks trained (an epoch takes half the steps)."""
    assert setup_cli("import", str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), db_url=db_url).returncode == 0
    from core.accounts import operator_actor
    from core.jobs.scheduling import submit_job
    from storage.engine import Store

    store = Store(db_url)
    job_id = submit_job(store, operator_actor(store), TrainingConfig(output_name="two-ranks", max_steps=6,
                                                                     logging_steps=1, eval_fraction=0,
                                                                     per_device_train_batch_size=4))
    done = run_worker_on_two_processes(db_url, job_id)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sql(store, "SELECT status FROM trainingjob") == [("succeeded",)]
    assert [name for (name,) in sql(store, "SELECT name FROM rewardmodel")] == ["two-ranks"]
    per_step = sql(store, "SELECT step, count(*) FROM trainingmetric WHERE name = 'loss' GROUP BY step ORDER BY step")
    assert per_step == [(step, 1) for step in range(1, 7)]
    epoch = sql(store, "SELECT value FROM trainingmetric WHERE name = 'epoch' ORDER BY step DESC LIMIT 1")[0][0]
    assert epoch == pytest.approx(6 * 4 * 2 / len(PAIRS), rel=0.01)  # 2 ranks x 4 pairs per step
    output = done.stdout + done.stderr
    assert "2 process(es)" in output
    assert output.count(f"job {job_id} succeeded") == 1  # one rank records the ending
    assert sql(store, "SELECT reward_model_name FROM trainingjob") == [("two-ranks",)]


def test_four_bit_lora_trains_here_registers_an_adapter_and_reloads_with_the_same_rewards(pair_store, tmp_path):
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from core.scoring.engine import RewardScorer

    config = TrainingConfig(output_name="qlora", lora=True, load_in_4bit=True, lora_r=4, max_steps=3,
                            eval_fraction=0, per_device_train_batch_size=4)
    outcome = run_training(pair_store, config, tmp_path / "job")
    assert (outcome.model_dir / "adapter_config.json").exists()
    texts = ["Question 2?  a careful, correct and helpful answer number 2", "Question 2?  no 2"]
    scorer = RewardScorer(outcome.model_dir, device="cpu")
    engine = scorer.score_pairs([("Question 2? ", " a careful, correct and helpful answer number 2"),
                                 ("Question 2? ", " no 2")])
    tokenizer = AutoTokenizer.from_pretrained(outcome.model_dir)
    model = AutoPeftModelForSequenceClassification.from_pretrained(outcome.model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = [model(**tokenizer(t + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert engine == pytest.approx(plain, abs=1e-4)
