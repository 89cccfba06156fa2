"""Grouped training (``group_by_prompt``) against plain TRL on the expanded pairs: one epoch over rankings
of K completions per prompt, the same model, data and seed, in one process.

    python bench/grouped_training.py [--ks 4 8] [--prompts 24 8] [--hidden 256] [--layers 4] [--repeats 3] [--smoke]

Data: synthetic rankings, K responses of --min-tokens to --max-tokens tokens per prompt, all C(K,2)
pairs with InstructGPT's weight 1/C(K,2) (equal within a K, so TRL's unweighted loss is the same
objective). Model: a demo Qwen3 of --hidden and --layers (big enough that forward and backward
dominate), the same saved folder for every run. Plain TRL ``RewardTrainer`` takes batches of
--batch-pairs pairs (2 sequences each); grouped takes batches of 2 * batch-pairs / K prompts, so a
step holds as many sequences in both. Time is the wall clock of ``trainer.train()`` for one epoch, the
fastest of --repeats runs of each (the two alternate, so neither always runs first; the fastest is
the run least disturbed by whatever else the machine was doing).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import parse_with_smoke  # noqa: E402

WORDS = ("we first list the cases then check each one against the rule keep what fits and explain why the "
         "answer holds because every step follows from the last").split()


def ranking_rows(prompts: int, k: int, min_words: int, max_words: int, seed: int = 0) -> list[dict]:
    """All C(K,2) pairs of ``prompts`` rankings of K responses (the one with more "because" ranks higher)."""
    rng = random.Random(seed)
    rows = []
    for p in range(prompts):
        prompt = f"Question {p}: " + " ".join(rng.choice(WORDS) for _ in range(20)) + "?\n"
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
                     + " because" * (k - rank) for rank in range(k)]
        rows += [{"prompt": prompt, "chosen": " " + responses[a], "rejected": " " + responses[b],
                  "weight": 1 / math.comb(k, 2)} for a, b in combinations(range(k), 2)]
    return rows


def pair_accuracy(model, tokenizer, rows: list[dict]) -> float:  # noqa: ANN001
    """Chosen above rejected over the training pairs after the epoch (each response scored once)."""
    import torch

    model.eval()
    cache: dict[str, float] = {}
    with torch.no_grad():
        def reward(text: str) -> float:
            if text not in cache:
                ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt")
                cache[text] = model(**ids).logits[0, 0].item()
            return cache[text]

        return sum(reward(r["prompt"] + r["chosen"]) > reward(r["prompt"] + r["rejected"]) for r in rows) / len(rows)


def one_epoch(trainer_class, folder: Path, rows: list[dict], batch: int, out: Path) -> dict:  # noqa: ANN001
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig

    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    args = RewardConfig(output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-3,
                        max_length=4096, bf16=False, use_cpu=True, activation_checkpointing=False, seed=0,
                        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10_000)
    datasets.disable_progress_bars()
    trainer = trainer_class(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tokenizer)
    sequences = sum(len(batch["input_ids"]) for batch in trainer.get_train_dataloader())
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": result.global_step, "sequences": sequences,
            "accuracy": pair_accuracy(model, tokenizer, rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8], help="completions per prompt")
    parser.add_argument("--prompts", type=int, nargs="+", default=[24, 8], help="prompts for each K")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--min-tokens", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--batch-pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="epochs of each run; the fastest counts")
    args = parse_with_smoke(parser, prompts=[3, 2], hidden=32, layers=1, min_tokens=10, max_tokens=20, repeats=1)
    from trl import RewardTrainer

    from core.training.demo_model import build_demo_reward_model
    from core.training.trainer import prompt_grouped_reward_trainer

    # The demo BPE makes about 1.3 tokens of a word of this vocabulary.
    data = {k: ranking_rows(n, k, int(args.min_tokens / 1.3), int(args.max_tokens / 1.3), seed=k)
            for k, n in zip(args.ks, args.prompts, strict=True)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_demo_reward_model(Path(tmp) / "model", [r["prompt"] + r["chosen"] for rows in data.values()
                                                              for r in rows], hidden_size=args.hidden,
                                         num_layers=args.layers, num_heads=4 if args.hidden >= 64 else 2)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        for k, rows in data.items():
            lengths = [len(tokenizer(r["prompt"] + r["chosen"]).input_ids) for r in rows]
            runs = {"grouped": (prompt_grouped_reward_trainer(), max(1, 2 * args.batch_pairs // k)),
                    "plain": (RewardTrainer, args.batch_pairs)}
            best: dict[str, dict] = {}
            for repeat in range(args.repeats):
                for name in sorted(runs, reverse=repeat % 2 == 0):  # grouped first, then plain first, ...
                    trainer_class, batch = runs[name]
                    run = one_epoch(trainer_class, folder, rows, batch, Path(tmp) / f"{name}-{k}")
                    if name not in best or run["seconds"] < best[name]["seconds"]:
                        best[name] = run
            results.append((k, len(rows) // math.comb(k, 2), len(rows), sum(lengths) / len(lengths), best["plain"],
                            best["grouped"]))
    print(f"demo Qwen3 hidden {args.hidden}, {args.layers} layers; one epoch, fastest of {args.repeats}; "
          f"plain TRL batches of {args.batch_pairs} "
          f"pairs, grouped batches of {2 * args.batch_pairs} responses; CPU, {__import__('torch').get_num_threads()} "
          "threads")
    print("| K | prompts | pairs | tokens/sequence | run | steps | sequences scored | epoch seconds | pair accuracy "
          "after | speed-up |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for k, prompts, pairs, tokens, plain, grouped in results:
        for name, run in (("plain TRL RewardTrainer", plain), ("grouped (group_by_prompt)", grouped)):
            print(f"| {k} | {prompts} | {pairs} | {tokens:.0f} | {name} | {run['steps']} | {run['sequences']} | "
                  f"{run['seconds']:.1f} | {run['accuracy']:.3f} | {plain['seconds'] / run['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
