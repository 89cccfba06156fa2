"""How much annotators agree on the steps of reasoning traces (steps datasets), for the Team tab.

* **Per-step kappa**: each step reviewed by two or more annotators is an item rated in three categories (correct,
  neutral, wrong; an unreviewed step does not rate). Fleiss' kappa with a varying number of raters per item (the
  pairwise-agreement form: P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), chance from the pooled category shares),
  and Cohen's kappa pooled over every pair of annotators' marks on the same step.
* **First-error agreement**: for each pair of annotators who marked the same trace, whether they put the first
  wrong step at the same step (or both at none), exactly and within one step, as ProcessBench scores a model.

Each figure states its sample size and is withheld below a stated minimum (``core.limits``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from core.limits import MIN_AGREEMENT_STEPS, MIN_AGREEMENT_TRACES
from core.steps import MARKS, first_error
from storage.steps import StepTrace


@dataclass(frozen=True)
class StepAgreement:
    traces: int  # traces with step marks
    traces_with_overlap: int  # marked by two or more annotators
    steps_with_overlap: int  # steps reviewed by two or more annotators (kappa's n)
    fleiss_kappa: float | None  # None: fewer than MIN_AGREEMENT_STEPS steps, or one category only
    cohens_kappa: float | None
    annotator_pairs: int  # pairs of annotators on one trace (first-error agreement's n)
    first_error_exact: float | None  # None: fewer than MIN_AGREEMENT_TRACES traces with overlap
    first_error_within_one: float | None


def _fleiss(items: list[list[str]]) -> float | None:
    shares = Counter(mark for item in items for mark in item)
    total = sum(shares.values())
    chance = sum((count / total) ** 2 for count in shares.values())
    if chance >= 1:
        return None  # one category only: agreement by chance is complete, kappa is undefined
    observed = sum(sum(c * (c - 1) for c in Counter(item).values()) / (len(item) * (len(item) - 1)) for item in items)
    return (observed / len(items) - chance) / (1 - chance)


def _cohen(pairs: list[tuple[str, str]]) -> float | None:
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    chance = sum(first[m] * second[m] for m in MARKS) / (n * n)
    return None if chance >= 1 else (observed - chance) / (1 - chance)


def step_agreement(traces: list[StepTrace]) -> StepAgreement:
    items: list[list[str]] = []
    pairs: list[tuple[str, str]] = []
    exact, near, annotator_pairs, overlapping, marked = 0, 0, 0, 0, 0
    for trace in traces:
        votes = [vote["marks"] for vote in trace.votes.values() if len(vote["marks"]) == len(trace.steps)]
        marked += bool(votes)
        if len(votes) < 2:
            continue
        overlapping += 1
        for step in range(len(trace.steps)):
            reviewed = [marks[step] for marks in votes if marks[step] is not None]
            if len(reviewed) >= 2:
                items.append(reviewed)
                pairs.extend(combinations(reviewed, 2))
        for first, second in combinations(votes, 2):
            a, b = first_error(first), first_error(second)
            annotator_pairs += 1
            exact += a == b
            near += a == b or (a is not None and b is not None and abs(a - b) <= 1)
    enough_steps = len(items) >= MIN_AGREEMENT_STEPS
    enough_traces = overlapping >= MIN_AGREEMENT_TRACES
    return StepAgreement(
        traces=marked, traces_with_overlap=overlapping, steps_with_overlap=len(items),
        fleiss_kappa=_fleiss(items) if enough_steps else None, cohens_kappa=_cohen(pairs) if enough_steps else None,
        annotator_pairs=annotator_pairs,
        first_error_exact=exact / annotator_pairs if enough_traces and annotator_pairs else None,
        first_error_within_one=near / annotator_pairs if enough_traces and annotator_pairs else None,
    )
