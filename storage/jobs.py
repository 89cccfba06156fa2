"""Training jobs and their metrics in the store: the state a restarted app reads back."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from sqlalchemy import select, update
from sqlmodel import Session

from storage.bulk import dialect_insert
from storage.models import JobStatus, TrainingJob, TrainingMetric, utc_now

if TYPE_CHECKING:
    from storage.engine import Store

# A job claimed by the scheduler runs without a pid until its child process has started.
STARTING_GRACE = timedelta(seconds=60)


def job_dir(store: Store, job_id: int) -> Path:
    """The job's folder under the store's data folder: its log, checkpoints and the loop's records."""
    return store.data_dir / "jobs" / f"job-{job_id}"


def create_job(session: Session, config: dict[str, Any]) -> int:
    job = TrainingJob(status=JobStatus.QUEUED.value, config=config)
    session.add(job)
    session.flush()
    return job.id


def get_job(session: Session, job_id: int) -> TrainingJob | None:
    return session.get(TrainingJob, job_id)


def list_jobs(session: Session, limit: int = 50) -> list[TrainingJob]:
    return list(session.execute(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)).scalars())


def next_queued_job(session: Session) -> TrainingJob | None:
    return session.execute(
        select(TrainingJob).where(TrainingJob.status == JobStatus.QUEUED.value).order_by(TrainingJob.id).limit(1)
    ).scalar_one_or_none()


def running_job(session: Session) -> TrainingJob | None:
    return session.execute(
        select(TrainingJob).where(TrainingJob.status == JobStatus.RUNNING.value).limit(1)
    ).scalar_one_or_none()


def mark_started(session: Session, job_id: int, *, pid: int | None, log_path: str, output_dir: str) -> None:
    session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(
        status=JobStatus.RUNNING.value, pid=pid, log_path=log_path, output_dir=output_dir, started_at=utc_now(),
        heartbeat_at=utc_now(), error=None, finished_at=None,
    ))


def record_pid(session: Session, job_id: int, pid: int) -> None:
    session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(pid=pid))


def beat(session: Session, job_id: int, *, step: int, total_steps: int | None) -> bool:
    """Record progress; returns whether a cancel was requested."""
    session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(
        heartbeat_at=utc_now(), current_step=step, total_steps=total_steps,
    ))
    return bool(session.execute(select(TrainingJob.cancel_requested).where(TrainingJob.id == job_id)).scalar())


def finish_job(session: Session, job_id: int, status: JobStatus, *, error: str | None = None,
               reward_model_name: str | None = None, note: str | None = None) -> None:
    session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(
        status=status.value, error=error, finished_at=utc_now(), reward_model_name=reward_model_name, note=note,
    ))


def request_cancel(session: Session, job_id: int) -> TrainingJob | None:
    """Ask a running job to stop at its next step; a queued job is cancelled at once."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        return None
    if job.status == JobStatus.QUEUED.value:
        finish_job(session, job_id, JobStatus.CANCELLED, error="cancelled before it started")
    elif job.status == JobStatus.RUNNING.value:
        job.cancel_requested = True
    session.flush()
    return job


def requeue_for_resume(session: Session, job_id: int) -> None:
    session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(
        status=JobStatus.QUEUED.value, resume=True, cancel_requested=False, error=None, pid=None, finished_at=None,
    ))


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def mark_orphans_interrupted(session: Session, *, stale_after: timedelta = timedelta(minutes=15),
                             now: datetime | None = None) -> list[int]:
    """Jobs marked running whose process is gone (or silent past ``stale_after``) become interrupted."""
    now = now or utc_now()
    orphans = []
    for job in session.execute(select(TrainingJob).where(TrainingJob.status == JobStatus.RUNNING.value)).scalars():
        silent = job.heartbeat_at is None or now - job.heartbeat_at > stale_after
        starting = job.pid is None and job.heartbeat_at is not None and now - job.heartbeat_at <= STARTING_GRACE
        if (not starting and not process_alive(job.pid)) or silent:
            job.status = JobStatus.INTERRUPTED.value
            job.error = "the training process ended without reporting (crash, kill or app restart)"
            job.finished_at = now
            orphans.append(job.id)
    session.flush()
    return orphans


def record_metrics(session: Session, job_id: int, step: int, values: dict[str, float]) -> None:
    if not values:
        return
    statement = dialect_insert(session)(TrainingMetric).values(
        [{"job_id": job_id, "step": step, "name": name, "value": value} for name, value in values.items()]
    )
    session.execute(statement.on_conflict_do_update(
        index_elements=["job_id", "step", "name"], set_={"value": statement.excluded.value}
    ))


def metrics_of(session: Session, job_id: int) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, name, value in session.execute(
        select(TrainingMetric.step, TrainingMetric.name, TrainingMetric.value)
        .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step)
    ):
        series.setdefault(name, []).append((step, value))
    return series
