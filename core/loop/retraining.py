"""Retraining and promotion: a training job after every N new human labels, and the rule that
promotes its model to the dataset's model (or keeps the current one).

The promotion rule is paired: the new version and the current model score the *same* held-out pairs (the new
version's held-out split, never trained on by it; pairs either model cannot take, over its max_length, are left
out). With fewer than the dataset's ``min_heldout_pairs`` the current model is kept ("too few held-out pairs to
judge"); otherwise the new version is promoted unless its accuracy on those pairs is lower than the current
model's by more than ``promotion_tolerance``. The note gives n, both accuracies, the discordant pairs and an
exact McNemar p-value, so a refusal says how sure it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.loop.rescore import scorer_for
from core.loop.settings import LATEST
from core.preferences.pairs import response_text
from core.training.config import TrainingConfig
from storage.datasets import require_dataset
from storage.engine import Store
from storage.loop import human_label_count, labeled_pair_count, loop_datasets, queue_loop_job
from storage.registry import find_model


def loop_tick(store: Store) -> list[int]:
    """Queue a training job for each dataset whose loop has N new human labels since its last one
    (the scheduler calls this between jobs). Returns the jobs queued or updated."""
    queued = []
    with store.write() as session:
        for target in loop_datasets(session):
            count = human_label_count(session, target.id)
            if count - target.labels_at_retrain < (target.retrain_every or 0):
                continue
            config = {**(target.retrain_config or TrainingConfig(dataset=[target.name]).to_record()),
                      "dataset": [target.name], "output_name": _loop_model_name(target.name)}
            labeled = labeled_pair_count(session, target.id)
            if labeled < labels_needed_to_judge(target.min_heldout_pairs, config.get("eval_fraction") or 0.0):
                continue  # its held-out split could not hold enough pairs to judge the new version: wait for labels
            queued.append(queue_loop_job(session, target.name, "train", config))
            target.labels_at_retrain = count
            session.add(target)
    return queued


def _loop_model_name(dataset: str) -> str:
    return f"{dataset}-loop"


def labels_needed_to_judge(min_heldout_pairs: int, eval_fraction: float) -> int:
    """Labeled pairs (imported or human) a retrain waits for, so that its held-out split (``eval_fraction`` of the pairs) can hold the
    ``min_heldout_pairs`` a promotion is judged on (no held-out split: never enough)."""
    if eval_fraction <= 0:
        return 2**62
    return math.ceil(min_heldout_pairs / eval_fraction)


@dataclass(frozen=True)
class PairedComparison:
    n: int  # held-out pairs both models scored
    new_accuracy: float | None
    old_accuracy: float | None
    only_new_right: int  # discordant pairs
    only_old_right: int
    p_value: float | None  # exact two-sided McNemar test on the discordant pairs

    @property
    def difference(self) -> float | None:
        return None if self.n == 0 else self.new_accuracy - self.old_accuracy

    def describe(self, new: str, old: str) -> str:
        return (f"on the same {self.n} held-out pairs {new} is right on {self.new_accuracy:.3f} and {old} on "
                f"{self.old_accuracy:.3f} (difference {self.difference:+.3f}; only {new} right on {self.only_new_right}, "
                f"only {old} right on {self.only_old_right}, McNemar p = {self.p_value:.3g})")


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under "equally accurate" each discordant pair is a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_on_held_out(store: Store, new: str, old: str, held_out: list[dict[str, Any]]) -> PairedComparison:
    """Both models on the same held-out preference rows: a pair counts when both can score both sides."""
    correct: dict[str, list[bool | None]] = {}
    examples = [(row["prompt"], response_text(row[side])) for row in held_out for side in ("chosen", "rejected")]
    for name in (new, old):
        results = scorer_for(store, name).score_responses(examples) if examples else []
        correct[name] = [None if results[2 * i].exceeds_max_length or results[2 * i + 1].exceeds_max_length
                         else results[2 * i].reward > results[2 * i + 1].reward for i in range(len(held_out))]
    both = [(a, b) for a, b in zip(correct[new], correct[old], strict=True) if a is not None and b is not None]
    if not both:
        return PairedComparison(0, None, None, 0, 0, None)
    only_new, only_old = sum(a and not b for a, b in both), sum(b and not a for a, b in both)
    return PairedComparison(len(both), sum(a for a, _ in both) / len(both), sum(b for _, b in both) / len(both),
                            only_new, only_old, mcnemar_p(only_new, only_old))


def after_training(store: Store, dataset: str, model_name: str, held_out: list[dict[str, Any]]) -> str:
    """Promote ``model_name`` (trained by the loop, with ``held_out`` its held-out preference rows) to the
    dataset's model, or keep the current one, by the paired rule of this module; queue a rescore after a
    promotion. Returns the job's note (it states n, and why)."""
    with store.read() as session:
        target = require_dataset(session, dataset)
        current, tolerance, minimum = target.promoted_model, target.promotion_tolerance, target.min_heldout_pairs
        registered = bool(current) and find_model(session, current) is not None
    if registered and current != model_name:
        promote, why = promotion_decision(compare_on_held_out(store, model_name, current, held_out), model_name,
                                          current, tolerance=tolerance, minimum=minimum)
        if not promote:
            return why
    else:
        why = f"the loop's first version ({len(held_out)} held-out pair(s), nothing to compare with)"
    with store.write() as session:
        target = require_dataset(session, dataset)
        target.promoted_model = model_name
        session.add(target)
        note = f"promoted to the model of {dataset}: {why}"
        if target.queue_order == "uncertainty" and target.queue_model == LATEST:
            job = queue_loop_job(session, dataset, "rescore", {})
            note += f"; rescore job {job} queued"
        return note


def promotion_decision(compared: PairedComparison, new: str, old: str, *, tolerance: float,
                       minimum: int) -> tuple[bool, str]:
    """(promote?, why): kept below ``minimum`` pairs; refused when lower than ``old`` by more than ``tolerance``
    on the same pairs; else promoted. ``why`` states n (and the paired figures when there are enough)."""
    if compared.n < minimum:
        return False, (f"kept {old}: too few held-out pairs to judge (n={compared.n}; the loop judges on at least "
                       f"{minimum}, min_heldout_pairs)")
    if compared.difference < -tolerance:
        return False, (f"not promoted: {compared.describe(new, old)}, lower by more than the tolerance {tolerance}; "
                       f"{old} stays")
    return True, compared.describe(new, old)
