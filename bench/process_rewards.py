"""Process rewards on verifiable traces: does a PRM find the first wrong step, and what do step scores cost?

    python bench/process_rewards.py [--train 400] [--test 200] [--steps 300] [--seed 0] [--smoke]

Traces are generated, so the first wrong step is known: a running total, "start at a", then steps "add b: a + b = c"
or "take b: a - b = c" with single-digit changes of a total kept within 0 to 19, then "The answer is c." A planted error (in half of the traces) puts a
wrong result (off by 1 to 3) at a random step; later steps compute correctly from the wrong value, as a real
model's mistakes propagate, so the answer is wrong too.

Both models train through the app's own path: rows imported into steps datasets (``import_rows``), a training job
(``submit_job`` + ``execute_job``, base model ``demo``), scored with ``core.scoring.steps.score_steps``:

* **PRM**: TRL stepwise rows labeled up to the first error (PRM800K's first-error labeling): correct steps True, the
  first wrong one False, nothing after;
* **ORM** (outcome reward model, the baseline): the same training traces, each as one step labeled by whether its
  final answer is right, read at the step ends of the test traces like the PRM;
* **last step always wrong**: predicts the last step as the first error in every trace.

A model's predicted first error is the first step it scores under a threshold (none = the trace is correct): 0.5,
and the threshold that maximizes F1 on separate validation traces (as PRM papers tune it; a model that learned
only the share of correct steps scores every step above 0.5). ProcessBench's metric: accuracy on erroneous traces
(the predicted index equals the true one), accuracy on correct traces (no step predicted), and F1 = their
harmonic mean.

Cost: per-step scoring with one forward per trace against the plain reward of the whole trace (one forward each)
and against scoring each step's prefix in its own forward (what RewardBench-style prefix rescoring does), on the
test traces, in this process, same model.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import parse_with_smoke  # noqa: E402


def make_trace(rng: random.Random, with_error: bool) -> tuple[str, list[str], int | None]:
    """(prompt, steps, index of the first wrong step or None)."""
    total = rng.randint(1, 9)
    n = rng.randint(3, 6)
    error_at = rng.randrange(n) if with_error else None
    steps = [f"Start at {total}."]
    for k in range(n):
        amount = rng.randint(1, 9)
        # the total stays within 0..19, so the facts to learn are few (single-digit changes of a small total)
        if total - amount >= 0 and (total + amount > 19 or rng.random() < 0.4):
            result, text = total - amount, f"Take {amount}: {total} - {amount} = {{}}."
        else:
            result, text = total + amount, f"Add {amount}: {total} + {amount} = {{}}."
        if k == error_at:
            result = max(0, result + rng.choice([-3, -2, -1, 1, 2, 3]))
            if result == (total - amount if "-" in text else total + amount):
                result += 1
        steps.append(text.format(result))
        total = result
    steps.append(f"The answer is {total}.")
    # the first step (the start) is always right; a planted error is at step error_at + 1
    return f"Start from the first number and apply each change. Case {rng.randint(0, 10**6)}.", steps, \
        (error_at + 1 if error_at is not None else None)


def first_error_metrics(predicted: list[int | None], truth: list[int | None]) -> tuple[float, float, float]:
    erroneous = [p == t for p, t in zip(predicted, truth, strict=True) if t is not None]
    correct = [p is None for p, t in zip(predicted, truth, strict=True) if t is None]
    acc_err = sum(erroneous) / len(erroneous) if erroneous else float("nan")
    acc_ok = sum(correct) / len(correct) if correct else float("nan")
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok > 0 else 0.0
    return acc_err, acc_ok, f1


THRESHOLDS = [k / 100 for k in range(2, 99)]


def as_traces(generated: list, join_steps, prefix_ends) -> list:  # noqa: ANN001
    traces = []
    for prompt, steps, _ in generated:
        completion, spans = join_steps(steps)
        traces.append((prompt, completion, prefix_ends(len(completion), spans)))
    return traces


def first_below_each(scores: list[list[float]], threshold: float) -> list[int | None]:
    return [next((k for k, v in enumerate(values) if v < threshold), None) for values in scores]


def train(store, rows: list[dict], dataset: str, steps: int, seed: int) -> str:  # noqa: ANN001
    from core.accounts import actor_for
    from core.data.importer import import_rows
    from core.jobs.scheduling import submit_job
    from core.jobs.worker import execute_job
    from core.training.config import TrainingConfig
    from storage.registry import model_by_name

    import_rows(store, rows, source=f"import:{dataset}", dataset=dataset, question="steps")
    config = TrainingConfig(dataset=[dataset], max_steps=steps, logging_steps=max(1, steps // 4),
                            save_steps=steps, eval_fraction=0.1, output_name=dataset, seed=seed)
    job_id = submit_job(store, actor_for(store, None), config)
    if execute_job(store, job_id, log=lambda *_: None) != 0:
        raise SystemExit(f"training {dataset} failed")
    with store.read() as session:
        return model_by_name(session, dataset).path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=400, help="training traces")
    parser.add_argument("--test", type=int, default=200, help="test traces (half with a planted error)")
    parser.add_argument("--val", type=int, default=100, help="validation traces that choose the tuned threshold")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_with_smoke(parser, argv, train=40, test=20, val=10, steps=10)

    from core.scoring.engine import RewardScorer
    from core.scoring.steps import format_trace, score_steps
    from core.steps import join_steps, prefix_ends
    from storage.engine import Store

    rng = random.Random(args.seed)
    train_traces = [make_trace(rng, i % 2 == 0) for i in range(args.train)]
    test_traces = [make_trace(rng, i % 2 == 0) for i in range(args.test)]
    val_traces = [make_trace(rng, i % 2 == 0) for i in range(args.val)]
    prm_rows, orm_rows = [], []
    for prompt, steps, error in train_traces:
        kept = steps if error is None else steps[: error + 1]
        prm_rows.append({"prompt": prompt, "completions": kept,
                         "labels": [True] * (len(kept) - 1) + [error is None]})
        orm_rows.append({"prompt": prompt, "completions": ["\n\n".join(steps)], "labels": [error is None]})
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{Path(folder) / 'prm.db'}")
        started = time.perf_counter()
        prm_path = train(store, prm_rows, "prm", args.steps, args.seed)
        orm_path = train(store, orm_rows, "orm", args.steps, args.seed)
        train_seconds = time.perf_counter() - started
        traces, val = as_traces(test_traces, join_steps, prefix_ends), as_traces(val_traces, join_steps, prefix_ends)
        truth, val_truth = [error for _, _, error in test_traces], [error for _, _, error in val_traces]
        results = {}
        for name, path in (("PRM", prm_path), ("ORM read at step ends", orm_path)):
            scorer = RewardScorer(path, max_length=4096)
            scored = [s.scores for s in score_steps(scorer, traces)]
            results[f"{name}, threshold 0.5"] = first_error_metrics(first_below_each(scored, 0.5), truth)
            val_scores = [s.scores for s in score_steps(scorer, val)]
            tuned = max(THRESHOLDS, key=lambda t: first_error_metrics(first_below_each(val_scores, t), val_truth)[2])
            results[f"{name}, threshold {tuned:.2f} (tuned on validation)"] = first_error_metrics(
                first_below_each(scored, tuned), truth)
        results["last step always wrong"] = first_error_metrics([len(steps) - 1 for _, steps, _ in test_traces], truth)

        # cost, same model, this process: one forward per trace for every step score, against the plain reward of
        # the whole trace and against one forward per step prefix
        scorer = RewardScorer(prm_path, max_length=4096)
        formatted = [format_trace(scorer.tokenizer, p, c, e) for p, c, e in traces]
        timings = {}
        for label, run in (
                ("plain reward of each trace (one forward)", lambda: scorer.score_ids([f.ids for f in formatted])),
                ("every step score, one forward per trace", lambda: score_steps(scorer, traces)),
                ("every step score, one forward per prefix", lambda: [scorer.score_ids([f.ids[: p + 1]])
                                                                      for f in formatted for p in f.step_positions])):
            run()  # warm-up
            start = time.perf_counter()
            run()
            timings[label] = time.perf_counter() - start
        store.dispose()

    print(f"process rewards: {args.train} training traces, {args.val} validation and {args.test} test traces ({sum(t is not None for t in truth)} "
          f"with a planted error), {args.steps} optimizer steps per model, seed {args.seed}; training took "
          f"{train_seconds:.0f} s{' (smoke: the figures mean nothing)' if args.smoke else ''}")
    print("\n| first error found by | acc. on erroneous | acc. on correct | F1 (harmonic mean) |")
    print("|---|---:|---:|---:|")
    for name, (acc_err, acc_ok, f1) in results.items():
        print(f"| {name} | {acc_err:.3f} | {acc_ok:.3f} | {f1:.3f} |")
    base = timings["plain reward of each trace (one forward)"]
    print("\n| scoring the test traces | seconds | x plain reward |")
    print("|---|---:|---:|")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds:.3f} | {seconds / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
