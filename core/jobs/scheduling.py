"""Training jobs as background processes: submit, run one at a time, cancel, resume.

Each job runs in a child process started with an argument list (never a shell string):
``python -m core.jobs.worker --job ID`` (store URL in ``$REWARDLAB_DB``), or ``accelerate launch --num_processes N -m
core.jobs.worker ...`` when several GPUs are visible; on a machine without a GPU the same process is forked from a
warm one that has imported the training stack already (``core.jobs.forking``), and started fresh if that fails. Its state (status, pid, heartbeat, progress,
log file, error) lives in the store, so a restarted app knows what was running; a job marked running
whose process is gone is marked interrupted, and can be resumed from its last complete checkpoint.
The process exits when the job ends, which frees its GPU memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from core.limits import MIN_STEPS_FOR_ETA
from core.accounts import Actor, Permission
from core.jobs.forking import ForkerError, JobForker
from core.preferences.pairs import resolve_datasets
from core.training.config import TrainingConfig
from core.training.trainer import STEP_CLOCK_METRIC
from core.model_folders import MODELS_ROOT_ENV
from storage.engine import DATA_DIR_ENV, DB_URL_ENV, Store
from storage.jobs import (
    create_job,
    finish_job,
    get_job,
    job_dir,
    mark_orphans_interrupted,
    mark_started,
    next_queued_job,
    record_pid,
    request_cancel,
    requeue_for_resume,
    running_job,
)
from storage.models import JobStatus

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # core/jobs/scheduling.py -> the project


class JobError(ValueError):
    pass


def worker_command(job_id: int, *, gpus: int) -> list[str]:
    """The child's argument list: plain Python on one device, ``accelerate launch`` on several.
    The store URL travels in the environment (``worker_environment``), never in the arguments."""
    worker = ["-m", "core.jobs.worker", "--job", str(job_id)]
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus), *worker]
    return [sys.executable, *worker]


def worker_environment(store: Store) -> dict[str, str]:
    # A URL may carry a password: in the environment only the same user (and root) can read it,
    # where a process's arguments are visible to every user of the machine.
    return {**os.environ, DB_URL_ENV: store.url}


# One per app process (the scheduler's thread starts one job at a time; JobForker also locks). The store's URL, its
# data folder and the models' root are read when a job runs, so a forker serves any store.
JOB_FORKER = JobForker(per_job_variables=(DB_URL_ENV, DATA_DIR_ENV, MODELS_ROOT_ENV))


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def submit_job(store: Store, actor: Actor, config: TrainingConfig) -> int:
    """Queue a training job. Refuses at once (``DatasetError``) datasets that do not exist or mix
    prompt kinds, rather than failing when the job starts."""
    actor.require(Permission.TRAIN)
    resolve_datasets(store, config.dataset)
    with store.write() as session:
        return create_job(session, config.to_record())


def cancel_job(store: Store, actor: Actor, job_id: int) -> str:
    actor.require(Permission.TRAIN)
    with store.write() as session:
        job = request_cancel(session, job_id)
    if job is None:
        raise JobError(f"there is no job {job_id}")
    return job.status


def resume_job(store: Store, actor: Actor, job_id: int) -> None:
    actor.require(Permission.TRAIN)
    with store.write() as session:
        job = get_job(session, job_id)
        if job is None:
            raise JobError(f"there is no job {job_id}")
        if job.status not in (JobStatus.INTERRUPTED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            raise JobError(f"job {job_id} is {job.status}; only an interrupted, failed or cancelled job can resume")
        requeue_for_resume(session, job_id)


def start_next_job(store: Store) -> int | None:
    """Start the oldest queued job when none is running (one at a time on this machine).

    The write transaction only claims the job (marks it running, with no process yet): counting
    GPUs imports torch (~2 s) and starting the child takes longer still, and a transaction held that
    long would make every label write wait. A claimed job without a pid is "starting" for
    ``STARTING_GRACE``; if the child cannot be started the job fails with the reason. GPUs are counted
    only once a job waits: an app nobody trains in never imports torch for it (measured: 3.1 CPU-s, 210 MB).
    """
    with store.write() as session:
        mark_orphans_interrupted(session)
        if running_job(session) is not None or next_queued_job(session) is None:
            return None
    gpus = visible_gpus()
    with store.write() as session:
        if running_job(session) is not None:
            return None
        job = next_queued_job(session)
        if job is None:
            return None
        job_id = job.id
        if job.kind != "train":
            gpus = min(gpus, 1)  # a rescore or competence job runs in one process
        folder = job_dir(store, job_id)
        log_path = folder / "train.log"
        mark_started(session, job_id, pid=None, log_path=str(log_path), output_dir=str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        pid = start_worker_process(job_id, gpus=gpus, environment=worker_environment(store), log_path=log_path)
    except OSError as error:
        with store.write() as session:
            finish_job(session, job_id, JobStatus.FAILED, error=f"could not start the training process: {error}")
        return None
    with store.write() as session:
        record_pid(session, job_id, pid)
    return job_id


def start_worker_process(job_id: int, *, gpus: int, environment: dict[str, str], log_path: Path) -> int:
    """The job's process, its pid: forked from the warm forker where no GPU is visible, else (or if the forker
    fails, which the job's log says) a fresh interpreter running ``worker_command``."""
    if gpus == 0:
        try:
            return JOB_FORKER.start_job(job_id, environment=environment, log_path=log_path)
        except ForkerError as error:
            with open(log_path, "a") as log:
                print(f"{error}; starting the job in a fresh process", file=log)
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            worker_command(job_id, gpus=gpus), cwd=PROJECT_ROOT, env=environment, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return process.pid


def recover_orphaned_jobs(store: Store, actor: Actor) -> list[int]:
    """Mark jobs whose process is gone (a crash, a kill, an app restart) interrupted, so they can be
    resumed; returns their ids."""
    actor.require(Permission.TRAIN)
    with store.write() as session:
        return mark_orphans_interrupted(session)


class JobScheduler:
    """A background thread of the app: marks orphans interrupted and starts queued jobs."""

    def __init__(self, store: Store, interval: float = 2.0) -> None:
        self.store, self.interval = store, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rewardlab-jobs", daemon=True)

    def start(self) -> "JobScheduler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        from core.loop.competence_refit import competence_tick
        from core.loop.frozen_queue import queue_refit_tick
        from core.loop.retraining import loop_tick

        while not self._stop.wait(self.interval):
            try:
                loop_tick(self.store)  # datasets whose loop has enough new labels get a training job
                competence_tick(self.store)  # and, when the store asks for it, a refit of their annotator model
                queue_refit_tick(self.store)  # queues ranked by a frozen encoder refit their heads every few labels
                start_next_job(self.store)
            except Exception as error:  # noqa: BLE001 (the scheduler must outlive one bad job)
                print(f"job scheduler: {type(error).__name__}: {error}", file=sys.stderr)


def log_tail(store: Store, job_id: int, lines: int = 30) -> str:
    path = job_dir(store, job_id) / "train.log"
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 16_384))
        text = handle.read().decode("utf-8", errors="replace")
    # Progress bars redraw with carriage returns: keep the last state of each line.
    cleaned = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(cleaned[-lines:])


@dataclass(frozen=True)
class JobReport:
    id: int
    status: str
    base_model: str
    step: int
    total_steps: int | None
    eta_seconds: float | None
    error: str | None
    reward_model_name: str | None
    metrics: dict[str, list[tuple[int, float]]]
    log: str
    note: str | None = None  # the loop's decision: promoted or not, and why

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


def job_report(store: Store, actor: Actor, job_id: int) -> JobReport | None:
    """Everything the Train tab shows about one job (its config, metrics and log: training roles only)."""
    from storage.jobs import metrics_of

    actor.require(Permission.TRAIN)
    with store.read() as session:
        job = get_job(session, job_id)
        if job is None:
            return None
        metrics = metrics_of(session, job_id)
    clock = metrics.pop(STEP_CLOCK_METRIC, [])
    eta = None
    if job.status == JobStatus.RUNNING.value and job.total_steps:
        eta = eta_from_step_clock(clock, job.total_steps)
    return JobReport(job.id, job.status, job.config.get("base_model", ""), job.current_step, job.total_steps, eta,
                     job.error, job.reward_model_name, metrics, log_tail(store, job_id), job.note)




def eta_from_step_clock(clock: list[tuple[int, float]], total_steps: int) -> float | None:
    """Seconds left, from the job's measured step times: the mean seconds per step between the first recorded
    point (the end of step 1 or so: loading and warm-up are before it) and the last. None until
    ``MIN_STEPS_FOR_ETA`` steps have been measured (the Train tab then says it is measuring)."""
    if len(clock) < 2:
        return None
    (first_step, first_time), (last_step, last_time) = clock[0], clock[-1]
    if last_step - first_step < MIN_STEPS_FOR_ETA:
        return None
    return (last_time - first_time) / (last_step - first_step) * max(0, total_steps - last_step)


def recent_jobs(store: Store, actor: Actor, limit: int = 20) -> list:
    from storage.jobs import list_jobs

    actor.require(Permission.TRAIN)
    with store.read() as session:
        return list_jobs(session, limit)


def preview_training(store: Store, actor: Actor, config: TrainingConfig) -> str:
    """What a job with this config would train on, before any GPU time: pair counts, what
    max_length drops, token lengths, and the suggested learning rate and batch size."""
    from core.training.config import DEMO_BASE, suggest_hyperparameters
    from core.training.grouped import group_summary, responses_per_group
    from core.process.training import is_step_training, preview_step_training
    from core.training.trainer import length_report, preview_tokenizer, take_snapshot, use_separator_as_eos

    actor.require(Permission.TRAIN)
    if is_step_training(store, config):
        return preview_step_training(store, config)
    snapshot = take_snapshot(store, config)
    tokenizer = preview_tokenizer(config, snapshot)
    use_separator_as_eos(tokenizer, config.base_model)
    report = length_report(tokenizer, snapshot, config.max_length)
    parameters = count_parameters(config.base_model) if config.base_model != DEMO_BASE else None
    per_example = responses_per_group(snapshot.train) if config.group_by_prompt else 2.0
    learning_rate, batch = suggest_hyperparameters(parameters, demo=config.base_model == DEMO_BASE,
                                                   responses_per_example=per_example)
    size = f"{parameters / 1e9:.2f}B parameters; " if parameters else ""
    left = ", ".join(f"{n} {why}" for why, n in sorted(snapshot.left_out.items())) or "none"
    grouped = f" Training {group_summary(snapshot.train)}." if config.group_by_prompt else ""
    return (f"{report.summary()} Left out of the data: {left}.{grouped} {size}suggested learning rate {learning_rate}, "
            f"batch size {batch} {'prompts' if config.group_by_prompt else 'pairs'} (used when those fields are 0).")


def count_parameters(base_model: str) -> int | None:
    """Parameters of a model from its config alone (no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from core.training.trainer import hub_token, local_files_only

    try:
        config = AutoConfig.from_pretrained(base_model, token=hub_token(), num_labels=1,
                                            local_files_only=local_files_only(base_model))
    except OSError:
        return None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())
