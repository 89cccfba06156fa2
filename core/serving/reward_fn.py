"""Using reward models downstream: normalization, ensembles, and a reward function for TRL.

* ``RewardNormalizer``: z-score against reference statistics, then clip, as the reward-modeling
  guides recommend before RL (raw rewards drift and outliers dominate the policy gradient).
* ``RewardEnsemble``: several models, reduced by mean or min; ``min`` is the guides' remedy for
  reward hacking (the policy must satisfy every model, not exploit one).
* ``make_reward_fn``: a callable with TRL's ``reward_funcs`` signature
  ``(prompts, completions, **kwargs) -> list[float]``, usable by ``GRPOTrainer``.

The remote twin, ``make_remote_reward_fn`` (a reward server over HTTP), is in ``core.serving.client``: a
trainer imports it without torch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core.scoring.engine import Prompt, RewardScorer

REDUCTIONS = ("mean", "min")


@dataclass(frozen=True)
class RewardNormalizer:
    mean: float
    std: float
    clip: float | None = 5.0

    @classmethod
    def fit(cls, rewards: Sequence[float], clip: float | None = 5.0) -> "RewardNormalizer":
        if len(rewards) < 2:
            raise ValueError("fitting a normalizer needs at least two reference rewards")
        std = statistics.pstdev(rewards)
        return cls(statistics.fmean(rewards), std if std > 0 else 1.0, clip)

    def __call__(self, reward: float) -> float:
        z = (reward - self.mean) / self.std
        return max(-self.clip, min(self.clip, z)) if self.clip is not None else z


class RewardEnsemble:
    """Several reward models scoring the same examples; their rewards reduced by mean or min."""

    def __init__(self, models: Sequence[RewardScorer], reduction: str = "mean",
                 normalizers: Sequence[RewardNormalizer] | None = None) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if normalizers is not None and len(normalizers) != len(models):
            raise ValueError("give one normalizer per model (models on different scales cannot be mixed raw)")
        self.models, self.reduction, self.normalizers = list(models), reduction, normalizers

    def score_pairs(self, examples: Sequence[tuple[Prompt, str]]) -> list[float]:
        return combine_rewards([model.score_pairs(examples) for model in self.models], self.reduction, self.normalizers)


def combine_rewards(per_model: Sequence[Sequence[float | None]], reduction: str,
                    normalizers: Sequence[RewardNormalizer | None] | None = None) -> list[float | None]:
    """One reward per example from each model's rewards (``per_model[m][i]``): each normalized by its
    model's normalizer when given, then reduced by ``reduction``. None (an example a model did not
    score, e.g. over its max_length) makes the example's reward None."""
    reduce = min if reduction == "min" else statistics.fmean
    combined: list[float | None] = []
    for values in zip(*per_model, strict=True):
        if any(value is None for value in values):
            combined.append(None)
            continue
        if normalizers is not None:
            values = [n(v) if n is not None else v for n, v in zip(normalizers, values, strict=True)]
        combined.append(reduce(values))
    return combined


def _as_response(completion: Any) -> str:
    """TRL passes completions as strings (standard) or as a list of messages (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1].get("content", "")
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def make_reward_fn(
    model_or_models: str | Path | RewardScorer | Sequence[str | Path | RewardScorer],
    *,
    reduction: str = "mean",
    normalizer: RewardNormalizer | None = None,
) -> Callable[..., list[float]]:
    """A reward function for TRL (``GRPOTrainer(reward_funcs=[make_reward_fn("path")])``).

    Models are loaded once, when this is called; each call scores ``prompts[i] + completions[i]``
    exactly as RewardTrainer formatted training examples.
    """
    items = model_or_models if isinstance(model_or_models, (list, tuple)) else [model_or_models]
    models = [m if isinstance(m, RewardScorer) else RewardScorer(m) for m in items]
    ensemble = RewardEnsemble(models, reduction)

    def reward_fn(prompts: Sequence[Prompt], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        rewards = ensemble.score_pairs([(p, _as_response(c)) for p, c in zip(prompts, completions, strict=True)])
        bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
        if bad:
            raise FloatingPointError(f"the reward model returned a non-finite reward for completions {bad[:10]}")
        return [normalizer(r) for r in rewards] if normalizer is not None else rewards

    reward_fn.__name__ = "rewardlab_" + "_".join(Path(m.name).name for m in models)
    return reward_fn
