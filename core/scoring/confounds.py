"""Confound baselines beside a reward model's accuracy: would a rule that ignores the content do as well?

The field's known failure: on RewardBench 2's Focus subset "pick the shorter response" scores 52.7 % against
25 % chance. So every evaluation reports, on the *same* pairs the model was scored on, the accuracy of
"prefer the longer response", "prefer the shorter response" and, where pairs have positions (stored
comparisons: the side shown as A), "prefer position A"; and the correlation of the model's reward with
response length. A baseline's tie (equal lengths) counts half, as a coin flip would. The verdict "the model
does no better than a baseline" is stated with its n, and withheld below ``MIN_VERDICT_PAIRS``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

from core.limits import MIN_VERDICT_PAIRS



@dataclass(frozen=True)
class ScoredPair:
    chosen_length: int  # characters of the response
    rejected_length: int
    chosen_reward: float
    rejected_reward: float
    chosen_at_a: bool | None = None  # None: the pair has no positions (a pairs file names chosen and rejected)


@dataclass(frozen=True)
class Confounds:
    n: int
    model_accuracy: float | None
    prefer_longer: float | None
    prefer_shorter: float | None
    prefer_position_a: float | None  # None without positions
    reward_length_correlation: float | None  # Pearson, over every scored response
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def _share(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or None with fewer than 3 points or a constant side (r is undefined there)."""
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def confound_baselines(pairs: Sequence[ScoredPair]) -> Confounds:
    n = len(pairs)
    model = _share([1.0 if p.chosen_reward > p.rejected_reward else 0.0 for p in pairs])

    def by_length(longer: bool) -> float | None:
        return _share([0.5 if p.chosen_length == p.rejected_length else
                       float((p.chosen_length > p.rejected_length) == longer) for p in pairs])

    positioned = [p for p in pairs if p.chosen_at_a is not None]
    position = _share([float(p.chosen_at_a) for p in positioned]) if len(positioned) == n and n else None
    lengths = [p.chosen_length for p in pairs] + [p.rejected_length for p in pairs]
    rewards = [p.chosen_reward for p in pairs] + [p.rejected_reward for p in pairs]
    correlation = pearson([float(x) for x in lengths], rewards)
    longer, shorter = by_length(True), by_length(False)
    baselines = {name: value for name, value in (("prefer the longer response", longer),
                                                 ("prefer the shorter response", shorter),
                                                 ("prefer position A", position)) if value is not None}
    if n < MIN_VERDICT_PAIRS:
        verdict = f"no verdict on confounds: {n} pair(s), fewer than {MIN_VERDICT_PAIRS}"
    else:
        best_name, best = max(baselines.items(), key=lambda item: item[1])
        if model is not None and model <= best:
            verdict = (f"the model does no better than '{best_name}' on these {n} pairs ({model:.3f} vs {best:.3f}): "
                       "its accuracy may come from the confound, not the content")
        else:
            verdict = f"the model beats every baseline on these {n} pairs (best baseline: '{best_name}', {best:.3f})"
        if correlation is not None and abs(correlation) >= 0.5:
            verdict += f"; its reward follows length (correlation {correlation:+.2f})"
    return Confounds(n, model, longer, shorter, position, correlation, verdict)
