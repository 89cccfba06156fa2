"""Training throughput: RewardLab's job code (length-grouped batches and padding-free batches, both on by
default, each also off) against a plain TRL ``RewardTrainer`` script with the same model, data, steps,
seed and loss, in one run.

    python bench/training_throughput.py [--pairs 600] [--long-pairs 60] [--steps 60] [--smoke]

Data: HH-RLHF harmless pairs from ../shared/data plus synthetic reasoning pairs (a <think> block of
a few hundred to ~2,000 tokens): the long tail that makes a batch padded to its longest pair mostly
padding. Model: the demo Qwen3 RewardLab builds for the data (the same folder for every run).
Throughput is pairs per second of ``trainer.train()``; held-out accuracy is per pair over the same
held-out split for every run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import parse_with_smoke  # noqa: E402

HH_RLHF = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
WORDS = "first we list the cases then check each one against the rule and keep what fits".split()


def reasoning_pairs(count: int, seed: int = 0) -> list[dict]:
    """Pairs whose chosen side reasons to the right answer and whose rejected side to a wrong one."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        thinking = " ".join(rng.choice(WORDS) for _ in range(rng.randint(150, 1500)))
        prompt = f"\n\nHuman: What is {a} + {b}? Think first.\n\nAssistant:"
        rows.append({"prompt": prompt, "chosen": f" <think>{thinking}</think> {a + b}.",
                     "rejected": f" <think>{thinking}</think> {a + b + rng.randint(1, 9)}."})
    return rows


def build_store(folder: Path, pairs: int, long_pairs: int):  # noqa: ANN201
    from core.data.importer import import_rows
    from storage.engine import Store

    with gzip.open(HH_RLHF, "rt") as handle:
        hh = [json.loads(line) for _, line in zip(range(pairs), handle)]
    store = Store(f"sqlite:///{folder / 'store.db'}")
    import_rows(store, hh, source="hh-rlhf")
    import_rows(store, reasoning_pairs(long_pairs), source="reasoning")
    return store


def rewardlab_run(store, config, folder: Path) -> dict:  # noqa: ANN001
    """The job code: run_training with a job row, its train_runtime read back from the store."""
    from sqlalchemy import text

    from core.accounts import operator_actor
    from core.jobs.scheduling import submit_job
    from core.training.trainer import run_training

    job_id = submit_job(store, operator_actor(store), config)
    outcome = run_training(store, config, folder, job_id=job_id, log=lambda message: None)
    with store.read() as session:
        runtime = session.execute(text(f"SELECT value FROM trainingmetric WHERE job_id = {job_id} AND "
                                       "name = 'train_runtime'")).scalar_one()
    return {"seconds": runtime, "accuracy": outcome.eval_accuracy}


def plain_trl_run(store, config, demo_base: Path, folder: Path) -> dict:  # noqa: ANN001
    """What a user writes with TRL alone: the same rows, model folder, hyperparameters and seed."""
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    from core.preferences.pairs import build_preference_rows, split_rows
    from core.training.trainer import held_out_accuracy

    train, held_out = split_rows(build_preference_rows(store).rows, config.eval_fraction, config.seed)
    set_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(demo_base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(demo_base)
    args = RewardConfig(output_dir=str(folder), learning_rate=config.learning_rate, max_steps=config.max_steps,
                        per_device_train_batch_size=config.per_device_train_batch_size, max_length=config.max_length,
                        center_rewards_coefficient=config.center_rewards_coefficient, seed=config.seed, bf16=False,
                        use_cpu=True, activation_checkpointing=False, save_strategy="no", eval_strategy="no",
                        report_to=[], disable_tqdm=True, logging_steps=config.logging_steps)
    datasets.disable_progress_bars()
    trainer = RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train),
                            eval_dataset=datasets.Dataset.from_list(held_out), processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "accuracy": held_out_accuracy(trainer)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600, help="HH-RLHF pairs")
    parser.add_argument("--long-pairs", type=int, default=60, help="synthetic reasoning pairs (long)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    args = parse_with_smoke(parser, pairs=40, long_pairs=4, steps=4, batch=2)
    from core.training.config import TrainingConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = build_store(folder, args.pairs, args.long_pairs)
        common = {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": 3e-3,
                  "eval_fraction": 0.1, "logging_steps": args.steps, "save_steps": 10 * args.steps,
                  "max_length": 4096, "seed": 1}
        results = {}
        grouped = TrainingConfig(output_name="default", **common)
        results["RewardLab, length-grouped + padding-free (default)"] = rewardlab_run(store, grouped, folder / "grouped")
        demo_base = folder / "grouped" / "demo-base"  # the model every run starts from
        for name, options in [("RewardLab, length-grouped, padded", {"padding_free": False}),
                              ("RewardLab, random order + padding-free", {"train_sampling_strategy": "random"}),
                              ("RewardLab, random order, padded (TRL's batches)",
                               {"train_sampling_strategy": "random", "padding_free": False})]:
            config = TrainingConfig(output_name=f"run{len(results)}", **options, **common)
            results[name] = rewardlab_run(store, config, folder / "grouped")
        results["plain TRL RewardTrainer (baseline)"] = plain_trl_run(store, grouped, demo_base, folder / "plain")
    pairs = args.steps * args.batch
    baseline = results["plain TRL RewardTrainer (baseline)"]["seconds"]
    print(f"{args.pairs} HH-RLHF + {args.long_pairs} reasoning pairs, {args.steps} steps of {args.batch} pairs, "
          "demo Qwen3, CPU")
    print("| run | train seconds | pairs/s | vs plain TRL | held-out accuracy |")
    print("|---|---:|---:|---:|---:|")
    for name, result in results.items():
        accuracy = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.3f}"
        print(f"| {name} | {result['seconds']:.1f} | {pairs / result['seconds']:.1f} | "
              f"{baseline / result['seconds']:.2f}x | {accuracy} |")


if __name__ == "__main__":
    main()
