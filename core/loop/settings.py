"""The loop: a dataset's reward model picks what to label next, and retrains as labels arrive.

This module holds a dataset's loop settings and their checks; the wing's other modules do the work:
``queue_keys`` (arms and order), ``rescore`` (the job that scores the queue), ``ensemble`` (bootstrap
heads), ``retraining`` (cadence and promotion) and ``evaluation`` (the loop page's figures).

* **Queue order.** A dataset ordered by ``uncertainty`` serves, among comparisons of equal priority,
  first those whose reward margin |r(a) - r(b)| under the dataset's model is smallest (a ranking
  item: the smallest gap between two of its completions). A fraction ``random_fraction`` of items
  (chosen by a hash of the item, so the same item stays in its arm) is the control arm: served in
  random order and marked ``random``, so the two arms can be compared. The margins are written by a
  background job (kind ``rescore``, run by the job scheduler like training), never inside a labeling
  request, so labeling latency does not change; items imported after the last scoring have no key
  and count as most uncertain (served first). Margin uncertainty costs one forward pass per
  completion per rescore. ``uncertainty = "ensemble"`` orders the uncertainty arm by the disagreement
  of bootstrap reward heads on the model's features instead (``core.loop.ensemble``: its choice
  and cost); the stored ``model_margin`` stays the model's own margin.
* **Retraining.** With ``retrain_every`` N, the scheduler queues a training job after every N new
  human labels in the dataset, with the dataset's last training config (one waits at a time: a newer
  trigger replaces a queued one). When it finishes, the new version is promoted to the dataset's
  model unless its held-out accuracy is lower than the current model's by more than
  ``promotion_tolerance``; the job's note says which and why. A promotion re-scores the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.accounts import Actor, Permission
from core.limits import (
    MAX_ENSEMBLE_SIZE,
    MAX_HELDOUT_PAIRS,
    MAX_RETRAIN_EVERY,
    MIN_ENSEMBLE_SIZE,
    MIN_HELDOUT_PAIRS,
)
from core.loop.acquisition import ACQUISITIONS
from core.training.config import TrainingConfig
from storage.datasets import require_dataset
from storage.engine import Store
from storage.loop import clear_queue_keys, human_label_count, last_training_config, queue_loop_job
from storage.registry import find_model
from storage.settings import acquisition_of, queue_encoder_of, set_acquisition, set_queue_encoder


QUEUE_ORDERS = ("priority", "uncertainty")
UNCERTAINTY_KINDS = ("margin", "ensemble")
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
    min_heldout_pairs: int | None = None  # held-out pairs a new version is judged on, at least (MIN..MAX_HELDOUT_PAIRS)
    uncertainty: str | None = None  # "margin" or "ensemble"
    ensemble_size: int | None = None  # 2 to 16 heads
    acquisition: str | None = None  # which pair of a prompt's candidates is served first (core.loop.acquisition)
    queue_encoder: str | None = None  # a frozen encoder the queue ranks with (core.loop.frozen_queue); "" removes it
    refit_every: int | None = None  # new human labels between refits of the queue encoder's heads; 0: on rescores only


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
    min_heldout_pairs: int = 30
    acquisition: str = "all"
    queue_encoder: str | None = None
    refit_every: int = 0


def loop_status_of(session, dataset, queued_job: int | None = None) -> LoopStatus:  # noqa: ANN001
    encoder = queue_encoder_of(session, dataset.name)
    return LoopStatus(dataset.name, dataset.queue_order, dataset.queue_model, dataset.promoted_model,
                      dataset.random_fraction, dataset.retrain_every, dataset.promotion_tolerance,
                      human_label_count(session, dataset.id), dataset.labels_at_retrain, queued_job,
                      uncertainty=dataset.uncertainty, ensemble_size=dataset.ensemble_size,
                      min_heldout_pairs=dataset.min_heldout_pairs, acquisition=acquisition_of(session, dataset.name),
                      queue_encoder=(encoder or {}).get("folder"), refit_every=(encoder or {}).get("refit_every", 0))


def configure_loop(store: Store, actor: Actor, dataset: str, settings: LoopSettings) -> LoopStatus:
    """Change a dataset's loop settings (admins). Choosing uncertainty order with a model queues a
    rescore job at once; turning retraining on keeps the dataset's last training config for it."""
    actor.require(Permission.CHANGE_SETTINGS)
    if settings.order is not None and settings.order not in QUEUE_ORDERS:
        raise LoopError(f"order must be one of {', '.join(QUEUE_ORDERS)}, got {settings.order!r}")
    if settings.random_fraction is not None and not 0 <= settings.random_fraction <= 1:
        raise LoopError(f"the random fraction is a share of items, 0 to 1; got {settings.random_fraction}")
    if settings.retrain_every is not None and not 0 <= settings.retrain_every <= MAX_RETRAIN_EVERY:
        raise LoopError(f"retrain every N labels needs N from 1 to {MAX_RETRAIN_EVERY} (0 turns it off); "
                        f"got {settings.retrain_every}")
    if settings.promotion_tolerance is not None and not 0 <= settings.promotion_tolerance <= 1:
        raise LoopError(f"the promotion tolerance is an accuracy difference, 0 to 1; got {settings.promotion_tolerance}")
    if settings.min_heldout_pairs is not None and not MIN_HELDOUT_PAIRS <= settings.min_heldout_pairs <= MAX_HELDOUT_PAIRS:
        raise LoopError(f"the minimum of held-out pairs is {MIN_HELDOUT_PAIRS} to {MAX_HELDOUT_PAIRS} (a verdict on fewer "
                        f"is noise); got {settings.min_heldout_pairs}")
    if settings.uncertainty is not None and settings.uncertainty not in UNCERTAINTY_KINDS:
        raise LoopError(f"uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}, got {settings.uncertainty!r}")
    if settings.acquisition is not None and settings.acquisition not in ACQUISITIONS:
        raise LoopError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {settings.acquisition!r}")
    if settings.ensemble_size is not None and not MIN_ENSEMBLE_SIZE <= settings.ensemble_size <= MAX_ENSEMBLE_SIZE:
        raise LoopError(f"an ensemble has {MIN_ENSEMBLE_SIZE} to {MAX_ENSEMBLE_SIZE} heads; got {settings.ensemble_size}")
    if settings.refit_every is not None and not 0 <= settings.refit_every <= MAX_RETRAIN_EVERY:
        raise LoopError(f"refit every N labels needs N from 1 to {MAX_RETRAIN_EVERY} (0 refits on rescores only); "
                        f"got {settings.refit_every}")
    if settings.queue_encoder:
        from core.loop.frozen_queue import encoder_folder

        if encoder_folder(store, settings.queue_encoder) is None:
            raise LoopError(f"no registered model or folder inside the models folder named {settings.queue_encoder!r}: "
                            "copy the encoder's folder (e.g. all-MiniLM-L6-v2) under the models folder and name it")
    with store.write() as session:
        target = require_dataset(session, dataset)
        if settings.model is not None and settings.model != LATEST and find_model(session, settings.model) is None:
            raise LoopError(f"no registered model named {settings.model!r}: name one from `python app.py models`, "
                            f"or '{LATEST}' for the loop's promoted version")
        order = settings.order or target.queue_order
        model = settings.model if settings.model is not None else target.queue_model
        encoder = settings.queue_encoder if settings.queue_encoder is not None else \
            (queue_encoder_of(session, dataset) or {}).get("folder")
        if order == "uncertainty" and not encoder and (not model or (model == LATEST and not target.promoted_model)):
            raise LoopError("uncertainty order needs a model to score the queue: --model NAME, --model latest "
                            "once the loop has promoted a version, or --queue-encoder FOLDER")
        if settings.model not in (None, LATEST) and target.promoted_model is None:
            target.promoted_model = settings.model  # the loop starts from the model it is given
        # What the queue order depends on, as it was: a setting given again unchanged (a form sends them all)
        # queues no rescore.
        shown_before = _shown_settings(session, target)
        ordering_before = (target.queue_order, target.queue_model, target.random_fraction, target.uncertainty,
                           target.ensemble_size, acquisition_of(session, dataset),
                           (queue_encoder_of(session, dataset) or {}).get("folder"))
        for name, value in (("queue_order", settings.order), ("queue_model", settings.model),
                            ("random_fraction", settings.random_fraction),
                            ("promotion_tolerance", settings.promotion_tolerance),
                            ("min_heldout_pairs", settings.min_heldout_pairs),
                            ("uncertainty", settings.uncertainty), ("ensemble_size", settings.ensemble_size)):
            if value is not None:
                setattr(target, name, value)
        if settings.acquisition is not None:
            set_acquisition(session, dataset, settings.acquisition)
        if settings.queue_encoder is not None or settings.refit_every is not None:
            set_queue_encoder(session, dataset, settings.queue_encoder, settings.refit_every)
        notes = []
        if settings.retrain_every is not None and (settings.retrain_every or None) != target.retrain_every:
            target.retrain_every = settings.retrain_every or None
            if target.retrain_every and target.retrain_config is None:
                target.retrain_config = last_training_config(session, dataset) or TrainingConfig(dataset=[dataset]).to_record()
            target.labels_at_retrain = human_label_count(session, target.id)
        session.add(target)
        session.flush()
        queued = None
        if target.queue_order == "priority":
            clear_queue_keys(session, target.id)
        elif ordering_before != (target.queue_order, target.queue_model, target.random_fraction, target.uncertainty,
                                 target.ensemble_size, acquisition_of(session, dataset),
                                 (queue_encoder_of(session, dataset) or {}).get("folder")):
            queued = queue_loop_job(session, dataset, "rescore", {})
            notes.append(f"rescore job {queued} queued: the queue is ordered by the new scores when it finishes")
        shown_after = _shown_settings(session, target)
        changed = [f"{label} {'none' if shown_before[label] is None else shown_before[label]} → "
                   f"{'none' if value is None else value}" for label, value in shown_after.items()
                   if value != shown_before[label]]
        # Say what changed, so a form sent with stale values reads "nothing changed" rather than a bare "saved".
        notes.insert(0, "changed: " + ", ".join(changed) if changed else "nothing changed")
        status = loop_status_of(session, target, queued)
        status.notes = notes
        return status


def _shown_settings(session, dataset) -> dict[str, object]:  # noqa: ANN001
    """The loop settings of ``dataset`` by the names the page and the command line show them under."""
    encoder = queue_encoder_of(session, dataset.name) or {}
    return {"order": dataset.queue_order, "model": dataset.queue_model, "random arm": dataset.random_fraction,
            "retrain every": dataset.retrain_every or 0, "promotion tolerance": dataset.promotion_tolerance,
            "held-out pairs at least": dataset.min_heldout_pairs, "uncertainty": dataset.uncertainty,
            "ensemble heads": dataset.ensemble_size, "acquisition": acquisition_of(session, dataset.name),
            "queue encoder": encoder.get("folder"), "refit every": encoder.get("refit_every", 0)}




def queue_model_of(store: Store, dataset: str) -> str | None:
    """The registered model that orders ``dataset``'s queue now ('latest' resolved), or None."""
    with store.read() as session:
        target = require_dataset(session, dataset)
        return target.promoted_model if target.queue_model == LATEST else target.queue_model
