"""Votes to a verdict: how the labels of one pair fold into chosen/rejected (or leave it out).

Every wing that turns labels into pairs uses this rule (export, training, scoring's diagnostics and
Inspect, the loop), so a pair means the same thing everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from storage.queries import Vote

# Label strength -> TRL margin. The values are Llama 2's "small" margins (Touvron et al. 2023,
# Table 28): "slightly better" 1/3, "significantly better" 1, so a margin never dominates the
# Bradley-Terry logit early in training.
STRENGTH_MARGIN = {1: 1 / 3, 2: 1.0}


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "a" | "b" | "tie" | "both_bad" | "skipped" | "no_majority"
    margin: float | None = None
    # An annotator model's net preference for the outcome, P(outcome) - P(other side) under its posterior
    # (``core.preferences.competence``); None under majority vote.
    preference: float | None = None


def _vote_margin(vote: Vote) -> float | None:
    if vote.margin is not None:
        return vote.margin
    return STRENGTH_MARGIN.get(vote.strength) if vote.strength is not None else None


def fold_votes(votes: list[Vote]) -> Verdict:
    """Majority vote over non-skip labels; a shared top count is ``no_majority``.

    The margin is the mean of the winning votes' margins (None when none has one).
    """
    counted = [vote for vote in votes if vote.choice != "skip"]
    if not counted:
        return Verdict("skipped")
    tally = Counter(vote.choice for vote in counted).most_common()
    if len(tally) > 1 and tally[0][1] == tally[1][1]:
        return Verdict("no_majority")
    winner = tally[0][0]
    return Verdict(winner, winning_margin(counted, winner))


def winning_margin(votes: list[Vote], winner: str) -> float | None:
    """The mean margin of the votes for ``winner`` (None when none has one)."""
    margins = [m for m in (_vote_margin(v) for v in votes if v.choice == winner) if m is not None]
    return sum(margins) / len(margins) if margins else None
