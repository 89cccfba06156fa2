"""Dataset diagnostics: how a reward model scores the store's labeled comparisons.

The pairs come from the export path (``build_preference_rows``), so they are what training sees.
Accuracy counts a tie as wrong. Suspected label errors are pairs the model prefers the *rejected*
side with at least half the confidence it typically separates pairs with (margin <= -median|margin|/2):
often a mislabel, sometimes a model error; either way a second look pays. Near-ties are pairs the model barely separates.
Health checks name a symptom and the fix the reward-modeling guides give for it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from core.accounts import Actor, Permission
from core.data.exporter import build_preference_rows, response_text
from core.scoring.engine import RewardScorer
from storage.engine import Store
from storage.queries import prompt_excerpt
from storage.queue import requeue_comparisons

REVIEW_PRIORITY = 100


@dataclass(frozen=True)
class PairDiagnosis:
    comparison_id: int
    prompt_excerpt: str
    chosen_reward: float
    rejected_reward: float
    chosen_tokens: int
    rejected_tokens: int
    answer_margin: float  # chosen answer reward - rejected answer reward
    thinking_margin: float | None  # when both sides have a thinking segment

    @property
    def margin(self) -> float:
        return self.chosen_reward - self.rejected_reward


@dataclass(frozen=True)
class HealthCheck:
    symptom: str
    evidence: str
    fix: str


@dataclass
class Diagnostics:
    model: str
    pairs: list[PairDiagnosis]
    accuracy: float
    mean_margin: float
    answer_accuracy: float
    thinking_accuracy: float | None
    length_correlation: float | None  # Pearson r between a response's token count and its reward
    suspected_label_errors: list[PairDiagnosis] = field(default_factory=list)
    near_ties: list[PairDiagnosis] = field(default_factory=list)
    health: list[HealthCheck] = field(default_factory=list)


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def _ids_and_rows(store: Store, prompt_format: str) -> tuple[list[int], list[dict]]:
    prepared = build_preference_rows(store, prompt_format=prompt_format)
    return prepared.comparison_ids, prepared.rows


def _pairs(store: Store, model: RewardScorer, limit: int) -> list[PairDiagnosis]:
    # One dataset cannot mix text and chat prompts, but a diagnosis can: read both kinds.
    rows = sorted(
        (comparison_id, row)
        for kind in ("text", "chat")
        for comparison_id, row in zip(*_ids_and_rows(store, kind), strict=True)
    )[-limit:]
    examples = []
    for _, row in rows:
        examples += [(row["prompt"], response_text(row["chosen"])), (row["prompt"], response_text(row["rejected"]))]
    results = model.score_responses(examples)
    pairs = []
    for index, (comparison_id, row) in enumerate(rows):
        chosen, rejected = results[2 * index], results[2 * index + 1]
        thinking = (chosen.thinking_reward - rejected.thinking_reward
                    if chosen.thinking_reward is not None and rejected.thinking_reward is not None else None)
        prompt = row["prompt"]
        excerpt = prompt_excerpt(None, prompt) if isinstance(prompt, list) else prompt_excerpt(prompt, None)
        pairs.append(PairDiagnosis(comparison_id, excerpt, chosen.reward, rejected.reward, chosen.n_tokens,
                                   rejected.n_tokens, chosen.answer_reward - rejected.answer_reward, thinking))
    return pairs


def diagnose(store: Store, model: RewardScorer, *, name: str, limit: int = 500) -> Diagnostics:
    """Score up to ``limit`` of the most recent labeled comparisons with ``model`` and report."""
    pairs = _pairs(store, model, limit)
    if not pairs:
        raise ValueError("no labeled comparison with a majority preference to diagnose")
    margins = [p.margin for p in pairs]
    thinking = [p.thinking_margin for p in pairs if p.thinking_margin is not None]
    rewards = [r for p in pairs for r in (p.chosen_reward, p.rejected_reward)]
    lengths = [t for p in pairs for t in (p.chosen_tokens, p.rejected_tokens)]
    typical = statistics.median(abs(m) for m in margins) or 1e-9
    result = Diagnostics(
        model=name,
        pairs=pairs,
        accuracy=sum(m > 0 for m in margins) / len(margins),
        mean_margin=statistics.fmean(margins),
        answer_accuracy=sum(p.answer_margin > 0 for p in pairs) / len(pairs),
        thinking_accuracy=sum(m > 0 for m in thinking) / len(thinking) if thinking else None,
        length_correlation=_pearson([float(n) for n in lengths], rewards),
    )
    result.suspected_label_errors = sorted((p for p in pairs if p.margin <= -0.5 * typical), key=lambda p: p.margin)
    result.near_ties = sorted((p for p in pairs if abs(p.margin) < 0.1 * typical), key=lambda p: abs(p.margin))
    result.health = _health(result, rewards, typical)
    return result


def _health(result: Diagnostics, rewards: list[float], typical_margin: float) -> list[HealthCheck]:
    checks = []
    spread = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    if result.accuracy < 0.6 or typical_margin < 0.05 * max(spread, 1e-9):
        checks.append(HealthCheck(
            "poor discrimination",
            f"accuracy {result.accuracy:.2f}, median |margin| {typical_margin:.3g} against a reward spread of {spread:.3g}",
            "train longer or with a higher learning rate; check the labels (agreement on the Team tab, the suspected "
            "label errors below)",
        ))
    extreme = max(abs(r) for r in rewards)
    center = statistics.fmean(rewards)
    if extreme > 20 or abs(center) > 3 * max(spread, 1e-9) and abs(center) > 1:
        checks.append(HealthCheck(
            "overconfident or extreme rewards",
            f"largest |reward| {extreme:.3g}, mean reward {center:.3g}, spread {spread:.3g}",
            "train with center_rewards_coefficient (e.g. 0.01) to keep rewards near zero; z-score normalize and clip "
            "rewards before RL (RewardNormalizer)",
        ))
    if result.length_correlation is not None and result.length_correlation > 0.5:
        checks.append(HealthCheck(
            "reward grows with length",
            f"correlation between a response's token count and its reward: {result.length_correlation:.2f}",
            "check whether chosen responses are simply longer; balance lengths in the data or add a length penalty "
            "in RL, and compare the answer-only accuracy",
        ))
    return checks


@dataclass(frozen=True)
class ModelDisagreement:
    comparison_id: int
    prompt_excerpt: str
    first_margin: float
    second_margin: float


def compare_models(store: Store, first: RewardScorer, second: RewardScorer, *, limit: int = 500) -> list[ModelDisagreement]:
    """Comparisons whose preferred side flips between two models."""
    a, b = _pairs(store, first, limit), _pairs(store, second, limit)
    return [ModelDisagreement(x.comparison_id, x.prompt_excerpt, x.margin, y.margin)
            for x, y in zip(a, b, strict=True) if (x.margin > 0) != (y.margin > 0)]


def send_for_review(store: Store, actor: Actor, comparison_ids: list[int], *, priority: int = REVIEW_PRIORITY) -> int:
    """Send comparisons back to the labeling queue for one more label, at high priority."""
    actor.require(Permission.REQUEUE)
    if not comparison_ids:
        raise ValueError("no comparisons to send")
    with store.write() as session:
        return requeue_comparisons(session, comparison_ids, priority=priority)
