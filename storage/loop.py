"""Reads and writes of the active-learning loop: the open items a scoring job scores, the keys it
writes, the label counts that trigger a retrain, and the loop's jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlmodel import Session

from storage.bulk import chunked, execute_many
from storage.models import Comparison, Dataset, JobStatus, Label, RankingSlot, Role, TrainingJob, User


@dataclass(frozen=True)
class QueueKey:
    comparison_id: int
    margin: float | None
    key: float
    arm: str


def open_item_ids(session: Session, dataset_id: int) -> list[int]:
    """The items of a dataset that still want labels (not archived), in id order."""
    return list(session.execute(
        select(Comparison.id).where(Comparison.dataset_id == dataset_id, Comparison.done.is_(False),
                                    Comparison.archived.is_(False)).order_by(Comparison.id)
    ).scalars())


def pair_completions(session: Session, item_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """(prompt id, completion a id, completion b id) of each pairwise item among ``item_ids`` (ranking items, whose
    completions are their slots, are left out)."""
    found: dict[int, tuple[int, int, int]] = {}
    for chunk in chunked(sorted(item_ids), 1):
        statement = (select(Comparison.id, Comparison.prompt_id, Comparison.completion_a_id, Comparison.completion_b_id)
                     .where(Comparison.id.in_(chunk), ~Comparison.id.in_(select(RankingSlot.comparison_id))))
        found.update({cid: (prompt_id, a, b) for cid, prompt_id, a, b in session.execute(statement)})
    return found


def write_queue_keys(session: Session, keys: list[QueueKey]) -> None:
    """Store the scoring job's margin, queue key and arm of each item."""
    execute_many(
        session,
        update(Comparison.__table__).where(Comparison.__table__.c.id == bindparam("item_id"))
        .values(model_margin=bindparam("margin"), queue_key=bindparam("key"), arm=bindparam("arm_name")),
        [{"item_id": k.comparison_id, "margin": k.margin, "key": k.key, "arm_name": k.arm} for k in keys],
    )


def clear_queue_keys(session: Session, dataset_id: int) -> None:
    """Back to priority order: the keys of the dataset's items are removed (margins and arms kept)."""
    session.execute(update(Comparison).where(Comparison.dataset_id == dataset_id).values(queue_key=None))


def human_label_count(session: Session, dataset_id: int) -> int:
    """Labels other than skips given by people (not import sources) in a dataset."""
    return session.execute(
        select(func.count()).select_from(Label)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(User, User.id == Label.annotator_id)
        .where(Comparison.dataset_id == dataset_id, Label.choice != "skip", User.role != Role.SOURCE.value)
    ).scalar_one()


def human_label_counts(session: Session) -> dict[str, int]:
    """``human_label_count`` of every dataset that is not archived and has human labels, by name."""
    return dict(session.execute(
        select(Dataset.name, func.count()).select_from(Label)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(Dataset, Dataset.id == Comparison.dataset_id)
        .join(User, User.id == Label.annotator_id)
        .where(Dataset.archived.is_(False), Label.choice != "skip", User.role != Role.SOURCE.value)
        .group_by(Dataset.name)
    ).all())


def _loop_jobs(session: Session, dataset: str, kind: str, statuses: list[JobStatus], *, newest_first: bool = False):  # noqa: ANN202
    """The loop's jobs of ``kind`` for ``dataset`` in one of ``statuses``, oldest first unless ``newest_first``
    (the dataset is in the job's config, so the filter on it runs here)."""
    order = TrainingJob.id.desc() if newest_first else TrainingJob.id
    return (job for job in session.execute(
        select(TrainingJob).where(TrainingJob.kind == kind, TrainingJob.status.in_([s.value for s in statuses]))
        .order_by(order)
    ).scalars() if (job.config or {}).get("loop_dataset") == dataset)


def loop_job_active(session: Session, dataset: str, kind: str) -> bool:
    """Whether a job of ``kind`` for ``dataset`` is queued or running."""
    return next(_loop_jobs(session, dataset, kind, [JobStatus.QUEUED, JobStatus.RUNNING]), None) is not None


def loop_datasets(session: Session) -> list[Dataset]:
    """Datasets whose loop retrains as labels arrive."""
    return list(session.execute(
        select(Dataset).where(Dataset.retrain_every.is_not(None), Dataset.archived.is_(False)).order_by(Dataset.id)
    ).scalars())


def pending_loop_job(session: Session, dataset: str, kind: str) -> TrainingJob | None:
    """The loop's queued job of ``kind`` for ``dataset``, if one waits."""
    return next(_loop_jobs(session, dataset, kind, [JobStatus.QUEUED]), None)


def last_succeeded_loop_job(session: Session, dataset: str, kind: str) -> TrainingJob | None:
    """The loop's newest job of ``kind`` for ``dataset`` that succeeded, if any."""
    return next(_loop_jobs(session, dataset, kind, [JobStatus.SUCCEEDED], newest_first=True), None)


def open_item_flags(session: Session, item_ids: list[int]) -> dict[int, bool]:
    """Per comparison id: whether it still waits for a label (not done and not archived)."""
    if not item_ids:
        return {}
    return {row.id: not row.done and not row.archived for row in session.execute(
        select(Comparison.id, Comparison.done, Comparison.archived).where(Comparison.id.in_(item_ids)))}


def queue_loop_job(session: Session, dataset: str, kind: str, config: dict[str, Any]) -> int:
    """Queue the loop's job of ``kind`` for ``dataset``; a queued one is replaced (its config updated),
    so there is never more than one waiting."""
    config = {**config, "loop_dataset": dataset}
    waiting = pending_loop_job(session, dataset, kind)
    if waiting is not None:
        waiting.config = config
        session.add(waiting)
        session.flush()
        return waiting.id
    job = TrainingJob(config=config, kind=kind)
    session.add(job)
    session.flush()
    return job.id


def last_training_config(session: Session, dataset: str) -> dict[str, Any] | None:
    """The config of the newest training job that trained on ``dataset`` alone."""
    for job in session.execute(
        select(TrainingJob).where(TrainingJob.kind == "train").order_by(TrainingJob.id.desc()).limit(200)
    ).scalars():
        if (job.config or {}).get("dataset") == [dataset]:
            return dict(job.config)
    return None


def dataset_versions(session: Session, dataset: str) -> list[Any]:
    """Registered models trained on ``dataset`` alone, oldest first."""
    from storage.models import RegisteredModel

    records = session.execute(select(RegisteredModel).order_by(RegisteredModel.created_at, RegisteredModel.id)).scalars()
    return [r for r in records if (r.config or {}).get("dataset") == [dataset]]


def arm_label_counts(session: Session, dataset_id: int) -> dict[str, int]:
    """Human labels (not skips) by the arm of their item; items never scored are 'before the loop'."""
    rows = session.execute(
        select(Comparison.arm, func.count()).select_from(Label)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(User, User.id == Label.annotator_id)
        .where(Comparison.dataset_id == dataset_id, Label.choice != "skip", User.role != Role.SOURCE.value)
        .group_by(Comparison.arm)
    ).all()
    counts = {"uncertainty": 0, "random": 0, "before the loop": 0}
    for arm, count in rows:
        counts[arm or "before the loop"] += count
    return counts


def fresh_votes(session: Session, dataset_id: int, *, since: Any, limit: int) -> tuple[dict[int, list[str]], dict[int, str]]:
    """The votes on the pairs of a dataset labeled at or after ``since`` (the newest ``limit`` pairs),
    and the arm of each pair."""
    newest = (
        select(Label.comparison_id).join(Comparison, Comparison.id == Label.comparison_id)
        .where(Comparison.dataset_id == dataset_id, Comparison.archived.is_(False), Label.updated_at >= since,
               Label.choice.in_(("a", "b", "tie", "both_bad")))
        .group_by(Label.comparison_id).order_by(func.max(Label.updated_at).desc()).limit(limit)
    )
    ids = list(session.execute(newest).scalars())
    votes: dict[int, list[str]] = {}
    arms: dict[int, str] = {}
    if not ids:
        return votes, arms
    for comparison_id, choice, arm in session.execute(
        select(Label.comparison_id, Label.choice, Comparison.arm).join(Comparison, Comparison.id == Label.comparison_id)
        .where(Label.comparison_id.in_(ids))
    ).all():
        votes.setdefault(comparison_id, []).append(choice)
        arms[comparison_id] = arm or "before the loop"
    return votes, arms


def record_evaluation(session: Session, dataset_id: int, model: str, report: Any) -> None:
    from storage.models import LoopEvaluation, RegisteredModel

    record = session.execute(select(RegisteredModel).where(RegisteredModel.name == model)).scalar_one_or_none()
    session.add(LoopEvaluation(
        dataset_id=dataset_id, model_name=model, labels=(record.n_pairs or 0) if record else 0,
        heldout_accuracy=record.eval_accuracy if record else None,
        arms={a.arm: {"labels": a.labels, "fresh_pairs": a.fresh_pairs, "accuracy": a.accuracy} for a in report.arms},
        calibration=report.calibration, human_ceiling=report.human_ceiling,
    ))


def loop_evaluations(session: Session, dataset_id: int) -> list[dict[str, Any]]:
    from storage.models import LoopEvaluation

    return [
        {"model": e.model_name, "labels": e.labels, "heldout_accuracy": e.heldout_accuracy, "arms": e.arms,
         "human_ceiling": e.human_ceiling, "at": e.created_at.isoformat()}
        for e in session.execute(select(LoopEvaluation).where(LoopEvaluation.dataset_id == dataset_id)
                                 .order_by(LoopEvaluation.id)).scalars()
    ]


def labeled_pair_count(session: Session, dataset_id: int) -> int:
    """Comparisons of a dataset with at least one label that is not a skip (imported or human): what a
    training snapshot can hold at most."""
    return session.execute(
        select(func.count(func.distinct(Label.comparison_id))).join(Comparison, Comparison.id == Label.comparison_id)
        .where(Comparison.dataset_id == dataset_id, Label.choice != "skip")
    ).scalar_one()
