"""Active-learning replay: does the loop's uncertainty order reach the random order's accuracy with fewer labels?

    python bench/active_replay.py [--data synthetic hh] [--seeds 3] [--seed-labels 20] [--rounds 8]
                                  [--per-round 20] [--pool 300] [--test 400] [--steps 60] [--noise 0] [--smoke]

A simulated annotator replays labeled data through the real loop: a fresh SQLite store per run, the
seed set imported as labeled pairs and the pool as unlabeled candidates (``import_rows``; the hidden
label is kept aside), a seed model trained by a job (``submit_job`` + ``execute_job``, base model
``demo``), the loop configured with ``configure_loop``, then rounds of: K labels served by the queue
(``next_comparison``) and answered with the hidden label (``label_stored``; flipped with probability
--noise), the scheduler's ``loop_tick`` queues the retrain, the job trains and promotes
(``after_training``: judged on 20 % held-out pairs, at least ``MIN_HELDOUT_PAIRS``, with tolerance 1, so every
version is promoted and the curve follows the newest model; before December 2026 nothing was held out, so
figures in docs/loop.md from then trained on 25 % more of the labels)
and the rescore job re-orders the queue. Jobs run in this process, oldest first, as the scheduler
would run them as children.

Arms. Uncertainty: order ``uncertainty``, random fraction 0 (smallest margin first). Random: the same
order and jobs with random fraction 1, i.e. the loop's own control arm (every item in the random arm,
served by a hash of the item): the two arms differ in the queue key only. Each seed draws its own seed
set, pool and import order (so the hash order differs per seed); both arms of a seed share them.

Evaluation: every model, after each round, on a fixed test set that is never in the pool or the seed,
with ``core.scoring.evaluation.evaluate_pairs`` (the ``eval`` command: chosen strictly above rejected).

Data. ``synthetic``: a hidden linear rule over planted marker words decides which completion wins
(weights below); a share --near-ties of pairs differ by the smallest step of the rule, the rest by
more. ``hh``: HH-RLHF harmless-base pairs as they are (sides of at most --hh-max-chars characters,
so that a round stays seconds on this CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import parse_with_smoke  # noqa: E402

HH_RLHF = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
DATASET = "replay"
# arm -> the loop's random_fraction and uncertainty kind
ARMS = {"uncertainty": (0.0, "margin"), "random": (1.0, "margin"), "ensemble": (0.0, "ensemble")}
FILLER = ("the a we then list check each one rule keep fits answer step next case first so it is on for "
          "with this that from here there value result part").split()
MARKERS = {"precise": 2, "because": 1, "checked": 1, "maybe": -1, "guess": -1, "whatever": -2}  # the hidden rule
Pair = tuple[str, str, str]  # (prompt, chosen, rejected)


def hidden_score(text: str) -> int:
    return sum(MARKERS.get(word, 0) for word in text.split())


def synthetic_pairs(count: int, near_tie_share: float, seed: int) -> list[Pair]:
    """Pairs of completions of filler words with 0-3 planted markers each; the completion with the
    higher hidden score wins. A share ``near_tie_share`` differs by exactly 1, the rest by 2 or more."""
    rng = random.Random(seed)

    def completion() -> str:
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(list(MARKERS)))
        return " " + " ".join(words)

    pairs = []
    while len(pairs) < count:
        near = rng.random() < near_tie_share
        prompt = f"Item {len(pairs)}: " + " ".join(rng.choice(FILLER) for _ in range(6)) + "?\n"
        while True:
            x, y = completion(), completion()
            gap = hidden_score(x) - hidden_score(y)
            if x != y and (abs(gap) == 1 if near else abs(gap) >= 2):
                break
        pairs.append((prompt, x, y) if gap > 0 else (prompt, y, x))
    return pairs


def hh_pairs(max_chars: int) -> list[Pair]:
    """HH-RLHF harmless-base pairs split at the last shared assistant turn (as the importer splits
    them), keeping those whose sides fit ``max_chars`` and differ."""
    from core.data.formats import RowError, split_implicit_text_prompt

    pairs = []
    with gzip.open(HH_RLHF, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            try:
                prompt, chosen, rejected = split_implicit_text_prompt(row["chosen"], row["rejected"])
            except RowError:
                continue
            if chosen.strip() and rejected.strip() and chosen != rejected and \
                    len(prompt) + max(len(chosen), len(rejected)) <= max_chars:
                pairs.append((prompt, chosen, rejected))
    return pairs


def split_for_seed(pairs: list[Pair], n_test: int, n_seed: int, n_pool: int, seed: int) -> tuple[list[Pair], ...]:
    """(test, seed set, pool): the test set is the same for every seed (the first ``n_test`` of a fixed
    shuffle); the seed set and pool are drawn per seed from the rest."""
    unique = list(dict.fromkeys(pairs))  # a repeated pair would be one stored comparison
    random.Random(0).shuffle(unique)
    test, rest = unique[:n_test], unique[n_test:]
    if len(rest) < n_seed + n_pool:
        raise SystemExit(f"{len(rest)} pairs outside the test set; --seed-labels + --pool needs {n_seed + n_pool}")
    random.Random(1000 + seed).shuffle(rest)
    return test, rest[:n_seed], rest[n_seed:n_seed + n_pool]


class SimulatedAnnotator:
    """Answers with the hidden label (flipped with probability ``noise``), read from the texts shown."""

    def __init__(self, pool: list[Pair], noise: float, seed: int) -> None:
        self.winner = {(p, frozenset((c, r))): c for p, c, r in pool}
        self.noise, self.rng = noise, random.Random(seed)
        self.answered: list[tuple[str, str]] = []  # (chosen, rejected) by the hidden label, in the order served

    def choice(self, view) -> str:  # noqa: ANN001  (a ComparisonView)
        chosen = self.winner[(view.prompt_text, frozenset((view.left.text, view.right.text)))]
        side = view.left.side if view.left.text == chosen else view.right.side
        loser = view.right.text if view.left.text == chosen else view.left.text
        self.answered.append((chosen, loser))
        if self.rng.random() < self.noise:
            side = "b" if side == "a" else "a"
        return side


def run_queued_jobs(store) -> list[int]:  # noqa: ANN001
    """Run the queued jobs in this process, oldest first, as the scheduler runs them (one at a time)."""
    from core.jobs.worker import execute_job
    from storage.jobs import next_queued_job

    done = []
    while True:
        with store.read() as session:
            job = next_queued_job(session)
            job_id = job.id if job is not None else None
        if job_id is None:
            return done
        log = store.data_dir / f"job-{job_id}.log"
        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = execute_job(store, job_id, log=print)  # the trainer's own prints land in the log too
        if code != 0:
            raise RuntimeError(f"job {job_id} failed:\n{log.read_text()[-3000:]}")
        done.append(job_id)


def accuracy_on_test_set(store, model_name: str, test_file: Path) -> float:  # noqa: ANN001
    from core.scoring.evaluation import EvalConfig, evaluate_pairs

    result = evaluate_pairs(EvalConfig(model=model_name, input=test_file, db=store.url))
    if result.n_over_max_length:
        raise RuntimeError(f"{result.n_over_max_length} test pairs over the model's max_length: lower --hh-max-chars")
    return result.accuracy


def replay(arm: str, seed: int, test_file: Path, seed_set: list[Pair], pool: list[Pair], args,  # noqa: ANN001
           near_tie: Callable[[str, str], bool] | None = None) -> dict:
    """One arm, one seed: the accuracy on the test set after the seed model and after each round, and
    (given ``near_tie``) the share of near-ties among the pairs the queue served in each round."""
    from core.accounts import actor_for, add_user
    from core.data.importer import import_rows
    from core.labeling.actions import label_stored, next_comparison
    from core.loop.retraining import loop_tick
    from core.limits import MIN_HELDOUT_PAIRS
    from core.loop.settings import LATEST, LoopSettings, configure_loop, queue_model_of
    from core.training.config import TrainingConfig
    from core.jobs.scheduling import submit_job
    from storage.engine import Store

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'replay.db'}")
        import_rows(store, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in seed_set], source="import:seed",
                    dataset=DATASET)
        # Candidates in a random order of completions: the stored a/b side says nothing about the winner.
        import_rows(store, [{"prompt": p, "completions": rng.sample([c, r], 2)} for p, c, r in pool],
                    source="import:pool", dataset=DATASET)
        admin = actor_for(store, None)  # the local operator, before any account exists
        add_user(store, "replayer", "annotator", "replay annotator pass")
        annotator, oracle = actor_for(store, "replayer"), SimulatedAnnotator(pool, args.noise, seed)
        submit_job(store, admin, TrainingConfig(
            base_model="demo", dataset=[DATASET], output_name="seed-rm", max_steps=args.steps, eval_fraction=0.2,
            seed=seed, per_device_train_batch_size=args.batch, logging_steps=args.steps, save_steps=10 * args.steps))
        run_queued_jobs(store)
        labels, accuracy, seconds = [len(seed_set)], [accuracy_on_test_set(store, "seed-rm", test_file)], []
        configure_loop(store, admin, DATASET, LoopSettings(order="uncertainty", model="seed-rm",
                                                           random_fraction=ARMS[arm][0], uncertainty=ARMS[arm][1],
                                                           retrain_every=args.per_round,
                                                           promotion_tolerance=1.0,
                                                           min_heldout_pairs=MIN_HELDOUT_PAIRS))
        run_queued_jobs(store)  # the first rescore, by the seed model
        configure_loop(store, admin, DATASET, LoopSettings(model=LATEST))
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.per_round):
                view = next_comparison(store, annotator, DATASET)
                label_stored(store, annotator, view.comparison_id, oracle.choice(view))
            if not loop_tick(store):
                raise RuntimeError("the loop queued no retrain after a round of labels")
            run_queued_jobs(store)  # train, promote, rescore
            labels.append(labels[-1] + args.per_round)
            accuracy.append(accuracy_on_test_set(store, queue_model_of(store, DATASET), test_file))
            seconds.append(time.perf_counter() - start)
        store.dispose()
    run = {"labels": labels, "accuracy": accuracy, "round_seconds": seconds}
    if near_tie is not None:
        served = oracle.answered
        run["near_tie_share_served"] = [sum(near_tie(*pair) for pair in served[i:i + args.per_round]) / args.per_round
                                        for i in range(0, len(served), args.per_round)]
    return run


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def labels_to_reach(labels: list[int], accuracies: list[float], target: float) -> int | None:
    """The first label count at which ``accuracies`` reaches ``target``; None if it never does."""
    return next((n for n, a in zip(labels, accuracies, strict=True) if a >= target - 1e-9), None)


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Curves (mean and std over seeds) per arm, labels each arm needs to reach the random arm's final
    mean accuracy (on the mean curve, and per seed), and the paired difference at each round."""
    labels = runs["random"][0]["labels"]
    curves = {arm: [mean_std([run["accuracy"][i] for run in arm_runs]) for i in range(len(labels))]
              for arm, arm_runs in runs.items()}
    target = curves["random"][-1][0]
    reach = {arm: {"mean_curve": labels_to_reach(labels, [m for m, _ in curve], target),
                   "per_seed": [labels_to_reach(labels, run["accuracy"], target) for run in runs[arm]]}
             for arm, curve in curves.items()}
    differences = [[u["accuracy"][i] - r["accuracy"][i] for u, r in zip(runs["uncertainty"], runs["random"], strict=True)]
                   for i in range(len(labels))]
    paired = []
    for diffs in differences:
        mean, std = mean_std(diffs)
        paired.append({"mean": mean, "std": std, "stderr": std / len(diffs) ** 0.5})
    summary = {"labels": labels, "curves": {arm: [{"mean": m, "std": s} for m, s in curve]
                                            for arm, curve in curves.items()},
               "random_final_accuracy": target, "labels_to_reach_random_final": reach,
               "uncertainty_minus_random": paired}
    if "near_tie_share_served" in runs["random"][0]:
        summary["near_tie_share_served"] = {arm: statistics.fmean(share for run in arm_runs
                                                                  for share in run["near_tie_share_served"])
                                            for arm, arm_runs in runs.items()}
    return summary


def svg_plot(results: dict, path: Path) -> None:
    """Learning curves (mean ± std over seeds) per data set, one panel each, as a small SVG by hand
    (matplotlib is not installed and plotly's static export needs kaleido). Each arm's error bars are
    shifted a few pixels sideways so that they do not hide each other."""
    colours = {"uncertainty": "#d62728", "random": "#1f77b4", "ensemble": "#2ca02c"}
    width, height, pad = 420, 300, 50
    parts = []
    for index, (name, summary) in enumerate(results.items()):
        x0, labels = index * width, summary["labels"]
        values = [p["mean"] + sign * p["std"] for c in summary["curves"].values() for p in c for sign in (-1, 1)]
        low, high = min(values) - 0.02, max(values) + 0.02

        def x_of(n: float, x0: int = x0, labels: list = labels) -> float:
            return x0 + pad + (n - labels[0]) / max(1, labels[-1] - labels[0]) * (width - 1.5 * pad)

        def y_of(accuracy: float, low: float = low, high: float = high) -> float:
            return height - pad - (accuracy - low) / (high - low) * (height - 1.6 * pad)

        parts += [(f'<text x="{x0 + width / 2}" y="18" text-anchor="middle" font-size="14">{name}: test accuracy '
                   'vs labels</text>'),
                  (f'<polyline fill="none" stroke="#888" points="{x_of(labels[0]):.1f},{y_of(high):.1f} '
                   f'{x_of(labels[0]):.1f},{y_of(low):.1f} {x_of(labels[-1]):.1f},{y_of(low):.1f}"/>')]
        parts += [f'<text x="{x_of(labels[0]) - 4:.1f}" y="{y_of(tick) + 4:.1f}" text-anchor="end" font-size="10">'
                  f'{tick:.2f}</text>' for tick in (low + 0.02, (low + high) / 2, high - 0.02)]
        parts += [f'<text x="{x_of(n):.1f}" y="{y_of(low) + 14:.1f}" text-anchor="middle" font-size="10">{n}</text>'
                  for n in sorted(set(labels[:: max(1, len(labels) // 5)] + [labels[-1]]))]
        for row, (arm, curve) in enumerate(summary["curves"].items()):
            colour, shift = colours[arm], 3 * (2 * row - 1)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                         + " ".join(f"{x_of(n):.1f},{y_of(p['mean']):.1f}" for n, p in zip(labels, curve, strict=True))
                         + '"/>')
            parts += [f'<line stroke="{colour}" x1="{x_of(n) + shift:.1f}" x2="{x_of(n) + shift:.1f}" '
                      f'y1="{y_of(p["mean"] - p["std"]):.1f}" y2="{y_of(p["mean"] + p["std"]):.1f}"/>'
                      for n, p in zip(labels, curve, strict=True)]
            parts.append(f'<text x="{x0 + pad + 10}" y="{40 + 14 * row}" font-size="11" fill="{colour}">{arm} '
                         '(mean ± std over seeds)</text>')
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(results)}" height="{height}" '
                    'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
                    + "".join(parts) + "</svg>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["synthetic", "hh"], choices=["synthetic", "hh"])
    parser.add_argument("--seeds", type=int, default=3, help="replays per arm (each its own seed set and pool)")
    parser.add_argument("--seed-labels", type=int, default=20, help="labeled pairs before the first round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=20, help="labels per round (the loop's retrain_every)")
    parser.add_argument("--pool", type=int, default=300, help="unlabeled candidates the queue chooses from")
    parser.add_argument("--test", type=int, default=400, help="held-out test pairs (never in a pool or seed set)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per training (every round)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--noise", type=float, default=0.0, help="share of the annotator's answers flipped")
    parser.add_argument("--near-ties", type=float, default=0.4, help="synthetic: share of pairs one step apart")
    parser.add_argument("--hh-max-chars", type=int, default=1200, help="HH-RLHF: longest prompt + side kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 because on this shared 2-core machine two threads ran a tiny model's "
                        "steps ~6x slower than one (OpenMP threads spinning against other processes)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                        help="uncertainty: smallest margin first; random: the control arm; ensemble: bootstrap heads' "
                        "largest disagreement first (the random and uncertainty arms are always run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "active")
    # Smoke: enough seed labels that a fifth of them held out reaches the loop's minimum to judge a retrain.
    args = parse_with_smoke(parser, seeds=1, seed_labels=24, rounds=1, per_round=4, pool=8, test=16, steps=2)
    args.arms = ["uncertainty", "random"] + [arm for arm in args.arms if arm not in ("uncertainty", "random")]
    import torch

    torch.set_num_threads(args.threads)
    sources = {"synthetic": lambda: synthetic_pairs(args.test + 3 * (args.seed_labels + args.pool) + 500,
                                                    args.near_ties, seed=7),
               "hh": lambda: hh_pairs(args.hh_max_chars)}
    near_ties = {"synthetic": lambda chosen, rejected: hidden_score(chosen) - hidden_score(rejected) == 1}
    results, started = {}, time.perf_counter()
    for name in args.data:
        pairs = sources[name]()
        runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(args.seeds):
                test, seed_set, pool = split_for_seed(pairs, args.test, args.seed_labels, args.pool, seed)
                test_file = Path(tmp) / "test.jsonl"
                test_file.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                                             for p, c, r in test))
                for arm in args.arms:
                    run = replay(arm, seed, test_file, seed_set, pool, args, near_ties.get(name))
                    runs[arm].append(run)
                    print(f"{name} seed {seed} {arm}: " + " ".join(f"{a:.3f}" for a in run["accuracy"])
                          + f" ({statistics.fmean(run['round_seconds']):.1f} s a round)"
                          + (f"; near-ties served per round: {run['near_tie_share_served']}"
                             if "near_tie_share_served" in run else ""), flush=True)
        results[name] = {**summarise(runs), "runs": runs}
    print(f"\nseed {args.seed_labels} labels, {args.rounds} rounds of {args.per_round}, pool {args.pool}, test "
          f"{args.test}, {args.seeds} seeds, {args.steps} steps of {args.batch} pairs per training, noise {args.noise}; "
          f"{time.perf_counter() - started:.0f} s on {torch.get_num_threads()} torch threads")
    for name, summary in results.items():
        print(f"\n{name}: test accuracy, mean ± std over seeds (uncertainty - random: paired mean ± standard error)")
        print("| labels | uncertainty | random | uncertainty - random |")
        print("|---:|---:|---:|---:|")
        for i, n in enumerate(summary["labels"]):
            u, r, d = (summary["curves"]["uncertainty"][i], summary["curves"]["random"][i],
                       summary["uncertainty_minus_random"][i])
            e = summary["curves"].get("ensemble")
            print(f"| {n} | {u['mean']:.3f} ± {u['std']:.3f} | {r['mean']:.3f} ± {r['std']:.3f} | "
                  f"{d['mean']:+.3f} ± {d['stderr']:.3f} |"
                  + (f" ensemble {e[i]['mean']:.3f} ± {e[i]['std']:.3f} |" if e else ""))
        reach = summary["labels_to_reach_random_final"]
        print(f"labels to reach the random arm's final accuracy {summary['random_final_accuracy']:.3f}: "
              + "; ".join(f"{arm} {r['mean_curve']} (per seed {r['per_seed']})" for arm, r in reach.items()))
        if "near_tie_share_served" in summary:
            print("share of near-ties among the pairs served: " + ", ".join(
                f"{arm} {share:.2f}" for arm, share in summary["near_tie_share_served"].items()))
    with tempfile.TemporaryDirectory() as scratch:  # a smoke run writes its files there, to be thrown away
        out = Path(scratch) if args.smoke else args.out
        out.mkdir(parents=True, exist_ok=True)
        stem = "replay-" + "-".join(args.data)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (out / f"{stem}.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
        svg_plot(results, out / f"{stem}.svg")
        print(f"wrote {out / stem}.json and .svg")


if __name__ == "__main__":
    main()
