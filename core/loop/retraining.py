"""Retraining and promotion: a training job after every N new human labels, and the rule that
promotes its model to the dataset's model (or keeps the current one)."""

from __future__ import annotations

from core.loop.settings import LATEST
from core.training.config import TrainingConfig
from storage.datasets import require_dataset
from storage.engine import Store
from storage.loop import human_label_count, loop_datasets, queue_loop_job
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
