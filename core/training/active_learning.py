"""The loop: a dataset's reward model picks what to label next, and retrains as labels arrive.

* **Queue order.** A dataset ordered by ``uncertainty`` serves, among comparisons of equal priority,
  first those whose reward margin |r(a) - r(b)| under the dataset's model is smallest (a ranking
  item: the smallest gap between two of its completions). A fraction ``random_fraction`` of items
  (chosen by a hash of the item, so the same item stays in its arm) is the control arm: served in
  random order and marked ``random``, so the two arms can be compared. The margins are written by a
  background job (kind ``rescore``, run by the job scheduler like training), never inside a labeling
  request, so labeling latency does not change; items imported after the last scoring have no key
  and count as most uncertain (served first). Margin uncertainty costs one forward pass per
  completion per rescore. ``uncertainty = "ensemble"`` orders the uncertainty arm by the disagreement
  of bootstrap reward heads on the model's features instead (``core.training.ensemble``: its choice
  and cost); the stored ``model_margin`` stays the model's own margin.
* **Retraining.** With ``retrain_every`` N, the scheduler queues a training job after every N new
  human labels in the dataset, with the dataset's last training config (one waits at a time: a newer
  trigger replaces a queued one). When it finishes, the new version is promoted to the dataset's
  model unless its held-out accuracy is lower than the current model's by more than
  ``promotion_tolerance``; the job's note says which and why. A promotion re-scores the queue.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.accounts import Actor, Permission
from core.training.config import TrainingConfig
from storage.datasets import require_dataset
from storage.engine import Store
from storage.loop import (
    QueueKey,
    clear_queue_keys,
    human_label_count,
    last_training_config,
    loop_datasets,
    open_item_ids,
    queue_loop_job,
    write_queue_keys,
)
from storage.queries import comparison_contents
from storage.ranking import completion_texts, slots_of
from storage.registry import find_model

QUEUE_ORDERS = ("priority", "uncertainty")
UNCERTAINTY_KINDS = ("margin", "ensemble")
MIN_ENSEMBLE_PAIRS = 8  # labeled prompts below which the heads would fit noise: margin order meanwhile
LATEST = "latest"  # the queue model that follows the loop's promoted version
SCORE_CHUNK = 256  # items scored and written per step of a rescore job


class LoopError(ValueError):
    """A loop setting that cannot be taken; the message says what to change."""


@dataclass(frozen=True)
class LoopSettings:
    """The loop's settings of one dataset; None leaves a setting as it is."""

    order: str | None = None  # "priority" or "uncertainty"
    model: str | None = None  # a registered model (name or name@vN), or "latest"
    random_fraction: float | None = None  # 0 to 1: the share of items in the random control arm
    retrain_every: int | None = None  # new human labels between retrains; 0 turns retraining off
    promotion_tolerance: float | None = None  # 0 to 1
    uncertainty: str | None = None  # "margin" or "ensemble"
    ensemble_size: int | None = None  # 2 to 16 heads


@dataclass
class LoopStatus:
    dataset: str
    order: str
    model: str | None
    promoted_model: str | None
    random_fraction: float
    retrain_every: int | None
    promotion_tolerance: float
    human_labels: int
    labels_at_retrain: int
    queued_job: int | None = None
    notes: list[str] = field(default_factory=list)
    uncertainty: str = "margin"
    ensemble_size: int = 5


def _status(session, dataset, queued_job: int | None = None) -> LoopStatus:  # noqa: ANN001
    return LoopStatus(dataset.name, dataset.queue_order, dataset.queue_model, dataset.promoted_model,
                      dataset.random_fraction, dataset.retrain_every, dataset.promotion_tolerance,
                      human_label_count(session, dataset.id), dataset.labels_at_retrain, queued_job,
                      uncertainty=dataset.uncertainty, ensemble_size=dataset.ensemble_size)


def configure_loop(store: Store, actor: Actor, dataset: str, settings: LoopSettings) -> LoopStatus:
    """Change a dataset's loop settings (admins). Choosing uncertainty order with a model queues a
    rescore job at once; turning retraining on keeps the dataset's last training config for it."""
    actor.require(Permission.CHANGE_SETTINGS)
    if settings.order is not None and settings.order not in QUEUE_ORDERS:
        raise LoopError(f"order must be one of {', '.join(QUEUE_ORDERS)}, got {settings.order!r}")
    if settings.random_fraction is not None and not 0 <= settings.random_fraction <= 1:
        raise LoopError(f"the random fraction is a share of items, 0 to 1; got {settings.random_fraction}")
    if settings.retrain_every is not None and not 0 <= settings.retrain_every <= 1_000_000:
        raise LoopError(f"retrain every N labels needs N from 1 to 1000000 (0 turns it off); got {settings.retrain_every}")
    if settings.promotion_tolerance is not None and not 0 <= settings.promotion_tolerance <= 1:
        raise LoopError(f"the promotion tolerance is an accuracy difference, 0 to 1; got {settings.promotion_tolerance}")
    if settings.uncertainty is not None and settings.uncertainty not in UNCERTAINTY_KINDS:
        raise LoopError(f"uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}, got {settings.uncertainty!r}")
    if settings.ensemble_size is not None and not 2 <= settings.ensemble_size <= 16:
        raise LoopError(f"an ensemble has 2 to 16 heads; got {settings.ensemble_size}")
    with store.write() as session:
        target = require_dataset(session, dataset)
        if settings.model is not None and settings.model != LATEST and find_model(session, settings.model) is None:
            raise LoopError(f"no registered model named {settings.model!r}: name one from `python app.py models`, "
                            f"or '{LATEST}' for the loop's promoted version")
        order = settings.order or target.queue_order
        model = settings.model if settings.model is not None else target.queue_model
        if order == "uncertainty" and (not model or (model == LATEST and not target.promoted_model)):
            raise LoopError("uncertainty order needs a model to score the queue: --model NAME, or --model latest "
                            "once the loop has promoted a version")
        if settings.model not in (None, LATEST) and target.promoted_model is None:
            target.promoted_model = settings.model  # the loop starts from the model it is given
        for name, value in (("queue_order", settings.order), ("queue_model", settings.model),
                            ("random_fraction", settings.random_fraction),
                            ("promotion_tolerance", settings.promotion_tolerance),
                            ("uncertainty", settings.uncertainty), ("ensemble_size", settings.ensemble_size)):
            if value is not None:
                setattr(target, name, value)
        notes = []
        if settings.retrain_every is not None:
            target.retrain_every = settings.retrain_every or None
            if target.retrain_every and target.retrain_config is None:
                target.retrain_config = last_training_config(session, dataset) or TrainingConfig(dataset=[dataset]).to_record()
            target.labels_at_retrain = human_label_count(session, target.id)
        session.add(target)
        session.flush()
        queued = None
        if target.queue_order == "priority":
            clear_queue_keys(session, target.id)
        elif any(value is not None for value in (settings.order, settings.model, settings.random_fraction,
                                                  settings.uncertainty, settings.ensemble_size)):
            queued = queue_loop_job(session, dataset, "rescore", {})
            notes.append(f"rescore job {queued} queued: the queue is ordered by the new scores when it finishes")
        status = _status(session, target, queued)
        status.notes = notes
        return status


def loop_status(store: Store, actor: Actor, dataset: str) -> LoopStatus:
    actor.require(Permission.VIEW_TEAM)
    with store.read() as session:
        return _status(session, require_dataset(session, dataset))


def queue_model_of(store: Store, dataset: str) -> str | None:
    """The registered model that orders ``dataset``'s queue now ('latest' resolved), or None."""
    with store.read() as session:
        target = require_dataset(session, dataset)
        return target.promoted_model if target.queue_model == LATEST else target.queue_model


def _unit_hash(*parts: Any) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def arm_of(dataset_id: int, comparison_id: int, random_fraction: float) -> str:
    """The arm an item is in: the same for the item whenever it is scored (a hash, not a draw)."""
    return "random" if _unit_hash("arm", dataset_id, comparison_id) < random_fraction else "uncertainty"


def queue_keys(dataset_id: int, margins: dict[int, float | None], random_fraction: float,
               spreads: dict[int, float | None] | None = None) -> list[QueueKey]:
    """Keys in [0, 1): the uncertainty arm by rank of margin (smallest first) or, given ``spreads``
    (an ensemble's disagreement), by rank of spread (largest first); an item the model could not
    score (e.g. longer than its max_length) last. The random arm by a hash of the item, so the two
    arms interleave with the random arm at its share."""
    arms = {cid: arm_of(dataset_id, cid, random_fraction) for cid in margins}
    order = margins if spreads is None else {cid: None if v is None else -v for cid, v in spreads.items()}
    uncertain = sorted((cid for cid in margins if arms[cid] == "uncertainty"),
                       key=lambda cid: (order[cid] is None, order[cid] if order[cid] is not None else 0.0, cid))
    keys = [QueueKey(cid, margins[cid], rank / max(1, len(uncertain)), "uncertainty")
            for rank, cid in enumerate(uncertain)]
    keys += [QueueKey(cid, margins[cid], _unit_hash("order", dataset_id, cid), "random")
             for cid in margins if arms[cid] == "random"]
    return keys


def _scorer_for(store: Store, model: str) -> Any:
    """The scorer of a loop's model (registered name, or a folder under the models folder), with the
    max_length it was trained with: what the rescore job and the loop's evaluation both score with."""
    from core.model_folders import folder_under_models_root
    from core.scoring.inspection import load_scorer
    from core.scoring.model_names import model_folder_for, trained_max_length

    folder = model_folder_for(store, model, local_folder=lambda path: folder_under_models_root(store, path))
    return load_scorer(str(folder), trained_max_length(store, model))


def _ensemble_heads(store: Store, dataset: str, dataset_id: int, scorer: Any, size: int,
                    log: Callable[[str], None]) -> Any:
    """The ensemble's residual heads, fitted on the dataset's newest labeled pairs (None, with a log
    line, when there are too few: the queue is ordered by margin until there are enough)."""
    import torch

    from core.data.exporter import NothingToExport, build_preference_rows, response_text
    from core.training.ensemble import ENSEMBLE_PAIRS, fit_heads

    try:
        rows = build_preference_rows(store, datasets=[dataset]).rows[-ENSEMBLE_PAIRS:]
    except NothingToExport:
        rows = []
    examples = [(row["prompt"], response_text(row[side])) for row in rows for side in ("chosen", "rejected")]
    features = scorer.reward_features(examples)
    kept = [i for i in range(len(rows)) if features[2 * i] is not None and features[2 * i + 1] is not None]
    # Counted in labeled items (prompts), not pairs: one ranking of 9 completions gives 36 pairs.
    prompts = len({json.dumps(rows[i]["prompt"], sort_keys=True) for i in kept})
    if prompts < MIN_ENSEMBLE_PAIRS:
        log(f"ensemble uncertainty needs labels on {MIN_ENSEMBLE_PAIRS} prompts within max_length, {dataset} has "
            f"{prompts}: ordered by the model's margin until it has")
        return None
    chosen, rejected = torch.stack([features[2 * i] for i in kept]), torch.stack([features[2 * i + 1] for i in kept])
    margins = _head_rewards(scorer, chosen) - _head_rewards(scorer, rejected)
    # A ranking's pairs weigh 1/C(K,2), as in training, so one ranking counts as one label.
    weights = torch.tensor([1.0 if rows[i].get("weight") is None else float(rows[i]["weight"]) for i in kept])
    log(f"fitting {size} ensemble heads on {len(kept)} labeled pair(s) of {prompts} prompt(s)")
    return fit_heads(chosen - rejected, margins, size, seed=dataset_id, weights=weights)


def _head_rewards(scorer: Any, features: Any) -> Any:
    """The model's own rewards from reward-token features (its score head applied to them)."""
    import torch

    with torch.inference_mode():
        return scorer.head(features.to(scorer.device, scorer.dtype)).squeeze(-1).float().cpu()


def _item_margins(store: Store, scorer: Any, item_ids: list[int],
                  heads: Any = None) -> tuple[dict[int, float | None], dict[int, float | None]]:
    """|r(a) - r(b)| of each pair, the smallest gap between two completions of a ranking item; None
    when a text is over the model's max_length (never truncated). With ensemble ``heads``, also each
    item's disagreement (``core.training.ensemble``; a ranking item: the largest over its pairs)."""
    with store.read() as session:
        slots = slots_of(session, item_ids)
        contents = comparison_contents(session, item_ids)  # prompts of pairs and ranking items alike
        texts = completion_texts(session, [c for ids in slots.values() for c in ids])
    examples: list[tuple[Any, str]] = []
    spans: dict[int, tuple[int, int]] = {}
    for item_id in item_ids:
        content = contents[item_id]
        prompt = content.prompt_messages if content.prompt_messages is not None else (content.prompt_text or "")
        responses = [texts[c][0] for c in slots[item_id]] if item_id in slots else [content.a_text, content.b_text]
        spans[item_id] = (len(examples), len(examples) + len(responses))
        examples += [(prompt, response) for response in responses]
    margins: dict[int, float | None] = {}
    spreads: dict[int, float | None] = {}
    if heads is None:
        rewards_of = [None if r.exceeds_max_length else r.reward for r in scorer.score_responses(examples)]
    else:  # one pass gives both: the model's reward is its head applied to the features
        import torch

        from core.training.ensemble import disagreement, member_rewards

        features = scorer.reward_features(examples)
        known = [i for i, f in enumerate(features) if f is not None]
        rewards_of = [None] * len(examples)
        if known:
            for i, reward in zip(known, _head_rewards(scorer, torch.stack([features[i] for i in known])).tolist(),
                                 strict=True):
                rewards_of[i] = reward
    for item_id, (start, end) in spans.items():
        chunk = rewards_of[start:end]
        if any(r is None for r in chunk):
            margins[item_id] = spreads[item_id] = None
            continue
        ordered = sorted(chunk)
        margins[item_id] = min(b - a for a, b in zip(ordered, ordered[1:]))
        if heads is not None:
            members = member_rewards(heads, torch.stack(features[start:end]), torch.tensor(chunk))
            spreads[item_id] = max(disagreement(members[:, i], members[:, j])
                                   for i in range(end - start) for j in range(i + 1, end - start))
    return margins, spreads


def rescore_queue(store: Store, dataset: str, *, log: Callable[[str], None] = print,
                  work_dir: Path | None = None) -> str:
    """Score the open items of ``dataset`` with its queue model and store their margins, arms and
    queue keys (the job of kind ``rescore``). With ensemble uncertainty, the heads are fitted first
    and saved to ``work_dir / "ensemble-heads.pt"`` when given. Returns the job's note: how many
    items were scored, by what (and why margin, when an ensemble was asked for but could not be fitted)."""
    model = queue_model_of(store, dataset)
    if not model:
        raise LoopError(f"dataset {dataset!r} has no model to score its queue (set one with --model)")
    with store.read() as session:
        target = require_dataset(session, dataset)
        dataset_id, fraction = target.id, target.random_fraction
        uncertainty, ensemble_size = target.uncertainty, target.ensemble_size
        item_ids = open_item_ids(session, dataset_id)
    scorer = _scorer_for(store, model)
    fallback: list[str] = []
    heads = _ensemble_heads(store, dataset, dataset_id, scorer, ensemble_size, fallback.append) \
        if uncertainty == "ensemble" else None
    for line in fallback:
        log(line)
    if heads is not None and work_dir is not None:
        import torch

        work_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model, "heads": heads}, work_dir / "ensemble-heads.pt")
    log(f"scoring {len(item_ids)} open item(s) of {dataset} with {model}"
        + (f" and {len(heads)} ensemble heads" if heads is not None else ""))
    margins: dict[int, float | None] = {}
    spreads: dict[int, float | None] | None = {} if heads is not None else None
    for start in range(0, len(item_ids), SCORE_CHUNK):
        chunk_margins, chunk_spreads = _item_margins(store, scorer, item_ids[start:start + SCORE_CHUNK], heads)
        margins.update(chunk_margins)
        if spreads is not None:
            spreads.update(chunk_spreads)
        log(f"scored {min(start + SCORE_CHUNK, len(item_ids))}/{len(item_ids)}")
    keys = queue_keys(dataset_id, margins, fraction, spreads)
    for start in range(0, len(keys), SCORE_CHUNK):  # short write transactions: labeling goes on meanwhile
        with store.write() as session:
            write_queue_keys(session, keys[start:start + SCORE_CHUNK])
    how = (f"the disagreement of {len(heads)} ensemble heads on {model}" if heads is not None
           else f"{model}'s margins" + (f" ({fallback[0]})" if fallback else ""))
    log(f"queue of {dataset} ordered by {how}: {sum(k.arm == 'random' for k in keys)} item(s) in the random arm")
    return f"ordered the queue of {dataset} by {how}: {len(keys)} item(s) scored"


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
            queued.append(queue_loop_job(session, target.name, "train", config))
            target.labels_at_retrain = count
            session.add(target)
    return queued


def _loop_model_name(dataset: str) -> str:
    return f"{dataset}-loop"


def after_training(store: Store, dataset: str, model_name: str, accuracy: float | None) -> str:
    """Promote ``model_name`` to the dataset's model unless its held-out accuracy is worse than the
    current one's by more than the tolerance; queue a rescore after a promotion. Returns the note."""
    with store.write() as session:
        target = require_dataset(session, dataset)
        current = find_model(session, target.promoted_model) if target.promoted_model else None
        current_accuracy = current.eval_accuracy if current is not None else None
        tolerance = target.promotion_tolerance
        if current_accuracy is not None and (accuracy is None or accuracy < current_accuracy - tolerance):
            shown = "none (no held-out pairs)" if accuracy is None else f"{accuracy:.3f}"
            return (f"not promoted: held-out accuracy {shown} is below the current model {target.promoted_model}'s "
                    f"{current_accuracy:.3f} by more than the tolerance {tolerance}; {target.promoted_model} stays")
        target.promoted_model = model_name
        session.add(target)
        note = (f"promoted to the model of {dataset}: held-out accuracy "
                f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}"
                + (f" against {current_accuracy:.3f} of {current.name}" if current_accuracy is not None else ""))
        if target.queue_order == "uncertainty" and target.queue_model == LATEST:
            job = queue_loop_job(session, dataset, "rescore", {})
            note += f"; rescore job {job} queued"
        return note


# ----- Seeing the loop: versions against labels, and how the current model does on fresh labels

MAX_EVALUATED_PAIRS = 2_000  # the newest labeled pairs an evaluation scores
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class VersionPoint:
    name: str
    labels: int  # pairs its training snapshot held
    heldout_accuracy: float | None
    promoted: bool  # the loop's model now
    created_at: str


@dataclass(frozen=True)
class ArmResult:
    arm: str  # "uncertainty", "random", or "before the loop"
    labels: int  # human labels on items of this arm
    fresh_pairs: int  # pairs labeled after the evaluated model was trained
    accuracy: float | None  # of the evaluated model on those pairs


@dataclass
class LoopReport:
    status: LoopStatus
    versions: list[VersionPoint]
    arms: list[ArmResult]
    evaluated_model: str | None = None
    calibration: list[dict[str, float]] = field(default_factory=list)  # {"predicted", "observed", "pairs"}
    human_ceiling: float | None = None  # agreement of two humans on pairs with 2+ votes
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier evaluations


def loop_report(store: Store, actor: Actor, dataset: str | None, *, evaluate: bool = False) -> LoopReport | None:
    """The loop of ``dataset``: its settings, the model versions trained on it (held-out accuracy
    against labels), labels per arm and, with ``evaluate``, how its current model does on the pairs
    labeled after it was trained (never seen in training), per arm, with its calibration
    (reliability bins of sigma(r_a - r_b) against the humans' share of votes for a) and the
    human-human agreement ceiling; an evaluation is stored, so the page shows its history. None
    without a dataset (after the permission checks)."""
    from storage.loop import arm_label_counts, dataset_versions, loop_evaluations

    actor.require(Permission.VIEW_TEAM)
    if evaluate:
        actor.require(Permission.INSPECT)
    if not dataset:
        return None  # the page asks for a dataset first
    with store.read() as session:
        target = require_dataset(session, dataset)
        status = _status(session, target)
        records = dataset_versions(session, dataset)
        counts = arm_label_counts(session, target.id)
        history = loop_evaluations(session, target.id)
    current = status.promoted_model
    versions = [VersionPoint(r.name, r.n_pairs or 0, r.eval_accuracy, r.name == current, r.created_at.isoformat())
                for r in records]
    report = LoopReport(status, versions, [ArmResult(arm, n, 0, None) for arm, n in counts.items()], history=history)
    if evaluate and current:
        _evaluate(store, target.id, dataset, current, report)
    return report


def evaluate_before_retrain(store: Store, dataset: str) -> str | None:
    """Test, then train: when a retrain of ``dataset`` finishes, the model it may replace is scored on
    the pairs labeled since that model was trained, which it never saw, per arm (stored, so the loop
    page draws each arm's accuracy against labels, one point per version). Returns a summary for the
    job's log, or None when the dataset has no promoted model yet."""
    from storage.loop import arm_label_counts

    with store.read() as session:
        target = require_dataset(session, dataset)
        status = _status(session, target)
        counts = arm_label_counts(session, target.id)
    if not status.promoted_model:
        return None
    report = LoopReport(status, [], [ArmResult(arm, n, 0, None) for arm, n in counts.items()])
    _evaluate(store, target.id, dataset, status.promoted_model, report)
    arms = ", ".join(f"{a.arm} arm {a.accuracy:.3f} on {a.fresh_pairs}" if a.accuracy is not None
                     else f"{a.arm} arm n/a" for a in report.arms)
    return f"{status.promoted_model} on the labels it had not seen: {arms or 'none yet'}"


def _evaluate(store: Store, dataset_id: int, dataset: str, model: str, report: LoopReport) -> None:
    import math

    from storage.loop import fresh_votes, record_evaluation

    with store.read() as session:
        record = find_model(session, model)
        votes, arms = fresh_votes(session, dataset_id, since=record.created_at, limit=MAX_EVALUATED_PAIRS)
        contents = comparison_contents(session, list(votes))
    pairs = [cid for cid in votes if cid in contents and any(v in ("a", "b") for v in votes[cid])]
    report.evaluated_model = model
    agreements = [_pair_agreement(votes[cid]) for cid in pairs if sum(v in ("a", "b") for v in votes[cid]) >= 2]
    report.human_ceiling = sum(agreements) / len(agreements) if agreements else None
    if pairs:
        scorer = _scorer_for(store, model)
        examples = []
        for cid in pairs:
            content = contents[cid]
            prompt = content.prompt_messages if content.prompt_messages is not None else (content.prompt_text or "")
            examples += [(prompt, content.a_text), (prompt, content.b_text)]
        results = scorer.score_responses(examples)
    else:
        results = []
    by_arm: dict[str, list[bool]] = {}
    bins: list[list[tuple[float, float]]] = [[] for _ in range(CALIBRATION_BINS)]
    for index, cid in enumerate(pairs):
        r_a, r_b = results[2 * index].reward, results[2 * index + 1].reward
        cast = [v for v in votes[cid] if v in ("a", "b")]
        share_a = cast.count("a") / len(cast)
        p_a = 1 / (1 + math.exp(-(r_a - r_b)))
        bins[min(CALIBRATION_BINS - 1, int(p_a * CALIBRATION_BINS))].append((p_a, share_a))
        if share_a != 0.5:
            by_arm.setdefault(arms[cid], []).append((r_a > r_b) == (share_a > 0.5))
    report.calibration = [{"predicted": sum(p for p, _ in b) / len(b), "observed": sum(o for _, o in b) / len(b),
                           "pairs": len(b)} for b in bins if b]
    report.arms = [ArmResult(a.arm, a.labels, len(by_arm.get(a.arm, [])),
                             sum(by_arm[a.arm]) / len(by_arm[a.arm]) if by_arm.get(a.arm) else None)
                   for a in report.arms]
    with store.write() as session:
        record_evaluation(session, dataset_id, model, report)


def _pair_agreement(votes: list[str]) -> float:
    """The chance that two different annotators of a pair gave the same a/b vote."""
    cast = [v for v in votes if v in ("a", "b")]
    n, same = len(cast), cast.count("a") * (cast.count("a") - 1) + cast.count("b") * (cast.count("b") - 1)
    return same / (n * (n - 1))
