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
from core.preferences.pairs import build_preference_rows, response_text
from core.limits import MAX_DIAGNOSED_PAIRS, MIN_VERDICT_PAIRS
from core.scoring.confounds import Confounds, ScoredPair, confound_baselines, pearson
from core.scoring.engine import Progress, RewardScorer
from core.scoring.inspection import require_inspect, resolve_model
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
    skipped_over_max_length: int = 0  # pairs with a side longer than the model takes: not scored
    confounds: Confounds | None = None  # length baselines on the same pairs (token counts), with their verdict


def _ids_and_rows(store: Store, prompt_format: str, dataset: str | None) -> tuple[list[int], list[dict]]:
    prepared = build_preference_rows(store, prompt_format=prompt_format, datasets=[dataset] if dataset else None)
    return prepared.comparison_ids, prepared.rows


def _pairs(store: Store, model: RewardScorer, limit: int, progress: Progress | None = None,
           dataset: str | None = None) -> tuple[list[PairDiagnosis], int]:
    """The most recent ``limit`` labeled pairs scored by ``model``, and how many were skipped for a
    side longer than the model's ``max_length`` (scoring them would truncate nothing and read past
    the model's positions, or allocate attention for a length nobody bounded)."""
    # One dataset cannot mix text and chat prompts, but a diagnosis can: read both kinds.
    rows = sorted(
        (comparison_id, row)
        for kind in ("text", "chat")
        for comparison_id, row in zip(*_ids_and_rows(store, kind, dataset), strict=True)
    )[-min(limit, MAX_DIAGNOSED_PAIRS):]
    kept, skipped = [], 0
    for comparison_id, row in rows:
        sides = [(row["prompt"], response_text(row[key])) for key in ("chosen", "rejected")]
        if model.max_length and any(len(model.format(p, r).ids) > model.max_length for p, r in sides):
            skipped += 1
            continue
        kept.append((comparison_id, row, sides))
    results = model.score_responses([side for _, _, sides in kept for side in sides], progress=progress)
    pairs = []
    for index, (comparison_id, row, _) in enumerate(kept):
        chosen, rejected = results[2 * index], results[2 * index + 1]
        thinking = (chosen.thinking_reward - rejected.thinking_reward
                    if chosen.thinking_reward is not None and rejected.thinking_reward is not None else None)
        prompt = row["prompt"]
        excerpt = prompt_excerpt(None, prompt) if isinstance(prompt, list) else prompt_excerpt(prompt, None)
        pairs.append(PairDiagnosis(comparison_id, excerpt, chosen.reward, rejected.reward, chosen.n_tokens,
                                   rejected.n_tokens, chosen.answer_reward - rejected.answer_reward, thinking))
    return pairs, skipped


def diagnose(store: Store, model: RewardScorer, *, name: str, limit: int = 500,
             progress: Progress | None = None, dataset: str | None = None) -> Diagnostics:
    """Score up to ``limit`` of the most recent labeled comparisons (of ``dataset``, or of all) with
    ``model`` and report."""
    pairs, skipped = _pairs(store, model, limit, progress, dataset)
    if not pairs:
        raise ValueError("no labeled comparison with a majority preference to diagnose"
                         + (f" ({skipped} skipped: longer than the model's max_length)" if skipped else ""))
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
        length_correlation=pearson([float(n) for n in lengths], rewards),
        skipped_over_max_length=skipped,
    )
    result.confounds = confound_baselines([ScoredPair(p.chosen_tokens, p.rejected_tokens, p.chosen_reward,
                                                      p.rejected_reward) for p in pairs])
    result.suspected_label_errors = sorted((p for p in pairs if p.margin <= -0.5 * typical), key=lambda p: p.margin)
    result.near_ties = sorted((p for p in pairs if abs(p.margin) < 0.1 * typical), key=lambda p: abs(p.margin))
    result.health = _health(result, rewards, typical)
    return result


def _health(result: Diagnostics, rewards: list[float], typical_margin: float) -> list[HealthCheck]:
    """Symptoms, each stating its n; none below ``MIN_VERDICT_PAIRS`` pairs (a symptom of a handful is noise)."""
    n = len(result.pairs)
    if n < MIN_VERDICT_PAIRS:
        return [HealthCheck("no health verdict", f"{n} pair(s) diagnosed, fewer than {MIN_VERDICT_PAIRS}",
                            "label or import more pairs, or diagnose a larger sample (limit)")]
    checks = []
    spread = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    if result.accuracy < 0.6 or typical_margin < 0.05 * max(spread, 1e-9):
        checks.append(HealthCheck(
            "poor discrimination",
            f"accuracy {result.accuracy:.2f} on {n} pairs, median |margin| {typical_margin:.3g} against a reward spread "
            f"of {spread:.3g}",
            "train longer or with a higher learning rate; check the labels (agreement on the Team tab, the suspected "
            "label errors below)",
        ))
    extreme = max(abs(r) for r in rewards)
    center = statistics.fmean(rewards)
    if extreme > 20 or abs(center) > 3 * max(spread, 1e-9) and abs(center) > 1:
        checks.append(HealthCheck(
            "overconfident or extreme rewards",
            f"largest |reward| {extreme:.3g}, mean reward {center:.3g}, spread {spread:.3g} over {2 * n} responses",
            "train with center_rewards_coefficient (e.g. 0.01) to keep rewards near zero; z-score normalize and clip "
            "rewards before RL (RewardNormalizer)",
        ))
    if result.length_correlation is not None and result.length_correlation > 0.5:
        checks.append(HealthCheck(
            "reward grows with length",
            f"correlation between a response's token count and its reward: {result.length_correlation:.2f} over "
            f"{2 * n} responses",
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


def compare_models(store: Store, first: RewardScorer, second: RewardScorer, *, limit: int = 500,
                   progress: Progress | None = None, dataset: str | None = None) -> list[ModelDisagreement]:
    """Comparisons (scored by both) whose preferred side flips between two models."""
    by_id = {pair.comparison_id: pair for pair in _pairs(store, second, limit, progress, dataset)[0]}
    return [ModelDisagreement(x.comparison_id, x.prompt_excerpt, x.margin, y.margin)
            for x in _pairs(store, first, limit, dataset=dataset)[0]
            if (y := by_id.get(x.comparison_id)) is not None and (x.margin > 0) != (y.margin > 0)]


def run_diagnostics(store: Store, actor: Actor, first_name: str, second_name: str | None = None, *,
                    limit: int = 500, progress: Progress | None = None,
                    dataset: str | None = None) -> tuple[Diagnostics, list[ModelDisagreement]]:
    """The Inspect tab's diagnosis: ``first_name`` over the labeled pairs of ``dataset`` (all datasets
    when None), and where it disagrees with ``second_name``. Engineers and admins only (it reads every label). Raises
    ``PermissionDenied``, ``UnknownModel``, ``ModelLoadError`` or ``ValueError`` (nothing to diagnose)."""
    require_inspect(store, actor, stored_data=True)
    if not first_name:
        raise ValueError("choose a registered model (the demo model appears a minute after a fresh start)")
    if not 2 <= limit <= MAX_DIAGNOSED_PAIRS:
        raise ValueError(f"diagnose between 2 and {MAX_DIAGNOSED_PAIRS:,} comparisons, not {limit:,}")
    first = resolve_model(store, actor, first_name)
    # Half the bar for the diagnosis, half for the second model when there is one.
    part = (lambda start, width: (lambda done: progress(start + width * done))) if progress else (lambda *_: None)
    report = diagnose(store, first, name=first_name, limit=limit, progress=part(0.0, 0.5 if second_name else 1.0),
                      dataset=dataset)
    disagreements = compare_models(store, first, resolve_model(store, actor, second_name), limit=limit,
                                   progress=part(0.5, 0.5), dataset=dataset) if second_name else []
    return report, disagreements


def send_for_review(store: Store, actor: Actor, comparison_ids: list[int], *, priority: int = REVIEW_PRIORITY) -> int:
    """Send comparisons back to the labeling queue for one more label, at high priority."""
    actor.require(Permission.REQUEUE)
    if not comparison_ids:
        raise ValueError("no comparisons to send")
    with store.write() as session:
        return requeue_comparisons(session, comparison_ids, priority=priority)
