"""Scoring speed: the engine against one-at-a-time scoring and transformers' pipeline, and the
one-pass trajectory against one forward pass per prefix. All in one process, same model, same texts.

    python bench/scoring_speed.py [--texts 120] [--trajectory-tokens 1000]

The model is a Qwen3 reward model of about 25M parameters (hidden 512, 10 layers)
built on the spot. Text lengths follow a long-tailed (log-normal) mix from a few tokens to ~2,000,
as reasoning responses do. Every method scores the same formatted strings (EOS appended).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import WORDS, parse_with_smoke, texts_with_lengths  # noqa: E402

from core.scoring.engine import RewardScorer  # noqa: E402
from core.training.demo_model import build_demo_reward_model  # noqa: E402

def best_of(repeats: int, fn) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(seconds: float = 3.0) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        n += 1
    return n * 2 * 1024**3 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=120)
    parser.add_argument("--trajectory-tokens", type=int, default=1000)
    parser.add_argument("--prefix-samples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parse_with_smoke(parser, texts=8, trajectory_tokens=40, prefix_samples=3, repeats=1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        corpus = texts_with_lengths(300, seed=1)
        size = {"hidden_size": 64, "num_layers": 1, "num_heads": 4} if args.smoke else \
            {"hidden_size": 512, "num_layers": 10, "num_heads": 8}
        path = build_demo_reward_model(Path(folder) / "rm", corpus, **size,
                                       vocab_size=8192)
        engine = RewardScorer(path, device="cpu", batch_tokens=1024)
        from transformers import pipeline

        classifier = pipeline("text-classification", model=str(path), device="cpu", function_to_apply="none")
    model, tokenizer = engine.model, engine.tokenizer
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    texts = [t + engine.eos_token for t in texts_with_lengths(args.texts, seed=2)]
    sequences = [tokenizer(t)["input_ids"] for t in texts]
    lengths = [len(s) for s in sequences]
    tokens = sum(lengths)
    print(f"model: {params / 1e6:.1f}M parameters ({(params - embedding) / 1e6:.1f}M outside the embedding); "
          f"{args.texts} texts, {tokens:,} tokens, length min {min(lengths)} / median {statistics.median(lengths):.0f} / "
          f"max {max(lengths)}; torch threads {torch.get_num_threads()}")

    def one_at_a_time() -> list[float]:
        with torch.inference_mode():
            return [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in sequences]

    reference = one_at_a_time()
    ours = engine.score_ids(sequences)
    padded = engine.score_ids(sequences, strategy="pad", batch_size=8)
    piped = [out["score"] for out in classifier(texts, batch_size=32, truncation=False)]
    worst = max(max(abs(a - b) for a, b in zip(reference, x, strict=True)) for x in (ours, padded, piped))
    print(f"largest difference between methods: {worst:.2e}")

    timings = {
        "one at a time (no padding)": best_of(args.repeats, one_at_a_time),
        "pipeline(batch_size=32)": best_of(args.repeats, lambda: classifier(texts, batch_size=32, truncation=False)),
        "length-sorted padded batches of 8": best_of(args.repeats, lambda: engine.score_ids(sequences, strategy="pad", batch_size=8)),
        "engine (length-bucketed batches)": best_of(args.repeats, lambda: engine.score_ids(sequences)),
    }
    baseline = timings["one at a time (no padding)"]
    matmul = matmul_flops()
    print("| method | seconds | texts/s | vs one at a time | vs pipeline | achieved GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds in timings.items():
        flops = 2 * (params - embedding) * tokens / seconds
        print(f"| {name} | {seconds:.2f} | {args.texts / seconds:.1f} | {baseline / seconds:.2f}x | "
              f"{timings['pipeline(batch_size=32)'] / seconds:.2f}x | {flops / 1e9:.1f} |")
    print(f"plain 1024x1024 fp32 matmul on this machine: {matmul / 1e9:.1f} GFLOP/s; the engine reaches "
          f"{2 * (params - embedding) * tokens / timings['engine (length-bucketed batches)'] / matmul:.0%} of it "
          "(counting 2 x non-embedding parameters per token, attention not counted)")

    # Trajectory of one long response.
    words = " ".join(random.Random(3).choice(WORDS) for _ in range(args.trajectory_tokens * 2))
    ids = tokenizer("Prompt: explain. ")["input_ids"]
    response_ids = tokenizer(words)["input_ids"][: args.trajectory_tokens]
    response = tokenizer.decode(response_ids)
    example = engine.format("Prompt: explain. ", response)
    start, end = example.response_tokens
    n_prefixes = end - start
    one_pass = best_of(1, lambda: engine.trajectory_of(example))
    sample = list(range(start, end, max(1, n_prefixes // args.prefix_samples)))

    def per_prefix_sample() -> None:
        with torch.inference_mode():
            for k in sample:
                model(input_ids=torch.tensor([example.ids[: k + 1] + [engine.eos_id]]))

    sampled = best_of(1, per_prefix_sample)
    per_prefix = sampled * n_prefixes / len(sample)
    print(f"trajectory of a {n_prefixes}-token response ({len(ids)}-token prompt): one pass {one_pass:.2f} s; "
          f"one pass per prefix {per_prefix:.1f} s (timed on {len(sample)} evenly spaced prefixes, scaled to "
          f"{n_prefixes}); speed-up {per_prefix / one_pass:.0f}x")


if __name__ == "__main__":
    main()
