"""The child process of one training job: ``python -m core.jobs.worker --job ID`` (store from ``$REWARDLAB_DB`` or ``--db URL``).

It reads the job's config from the store, trains, and records the ending: succeeded, cancelled
(SIGTERM or a cancel request: it stops at the next step) or failed with the reason.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from core.loop.competence_refit import REFIT_KIND, refit_competence
from core.loop.evaluation import evaluate_before_retrain
from core.loop.rescore import rescore_queue
from core.loop.retraining import after_training
from core.training.config import TrainingConfig
from storage.jobs import job_dir
from core.process.training import is_step_training, run_step_training
from core.training.trainer import TrainingError, run_training
from storage.engine import Store
from storage.jobs import finish_job, get_job, mark_started
from storage.models import JobStatus


def process_rank() -> int:
    """This process's rank when launched as several (torchrun / accelerate launch set ``RANK``); 0 alone."""
    return int(os.environ.get("RANK", "0") or 0)


def execute_job(store: Store, job_id: int, *, cancel_flag: list[bool] | None = None, log=print) -> int:  # noqa: ANN001
    """Run job ``job_id`` in this process and record how it ended; returns the exit code.

    Used by the worker process and by ``python app.py train`` (the foreground path). Launched as
    several processes (one per GPU), every rank trains, and only the main one (rank 0) writes: the job's
    state, metrics, the model folder and the registry. Ctrl-C (KeyboardInterrupt) ends the job as
    cancelled before the exception goes on, so no job is left "running" without a process.
    """
    main_process = process_rank() == 0
    with store.read() as session:
        job = get_job(session, job_id)
    if job is None:
        log(f"there is no job {job_id}")
        return 2
    folder = job_dir(store, job.id)
    if main_process:
        with store.write() as session:
            mark_started(session, job.id, pid=os.getpid(), log_path=str(folder / "train.log"), output_dir=str(folder))
    if job.kind == "rescore":
        return _rescore(store, job, log=log)
    if job.kind == REFIT_KIND:
        return _refit_competence(store, job, log=log)
    try:
        config = TrainingConfig.from_record(job.config)
        # A job on steps datasets trains a process reward model; on pairs (or rankings), a reward model.
        train = run_step_training if is_step_training(store, config) else run_training
        outcome = train(store, config, folder, job_id=job.id, resume=job.resume, cancel_flag=cancel_flag, log=log)
    except KeyboardInterrupt:
        if main_process:
            with store.write() as session:
                finish_job(session, job.id, JobStatus.CANCELLED, error="interrupted (Ctrl-C) before it finished")
            log(f"job {job.id} cancelled: interrupted")
        raise
    except Exception as error:  # noqa: BLE001 (any failure must end the job as failed, with its reason)
        if not isinstance(error, TrainingError):  # a TrainingError's message is the whole story
            traceback.print_exc()
        reason = str(error) if isinstance(error, TrainingError) else f"{type(error).__name__}: {error}"
        if main_process:
            with store.write() as session:
                finish_job(session, job.id, JobStatus.FAILED, error=reason)
        log(f"training failed: {reason}")
        return 1
    finally:
        _end_process_group()
    if not main_process:
        return 0
    status = JobStatus.SUCCEEDED if outcome.status == "succeeded" else JobStatus.CANCELLED
    note = None
    loop_dataset = (job.config or {}).get("loop_dataset")
    if loop_dataset and outcome.model_name:
        evaluated = evaluate_before_retrain(store, loop_dataset)
        if evaluated:
            log(f"loop: {evaluated}")
        note = after_training(store, loop_dataset, outcome.model_name, outcome.held_out)
        log(f"loop: {note}")
    with store.write() as session:
        finish_job(session, job.id, status, reward_model_name=outcome.model_name,
                   error="cancelled on request" if status is JobStatus.CANCELLED else None, note=note)
    log(f"job {job.id} {status.value}" + (f": {outcome.model_name} (held-out accuracy {outcome.eval_accuracy}, "
                                          f"margin {outcome.eval_margin})" if outcome.model_name else ""))
    return 0


def _rescore(store: Store, job, *, log=print) -> int:  # noqa: ANN001
    """A rescore job of the loop: order a dataset's queue by its model's margins (or its ensemble's
    disagreement; the fitted heads are kept in the job's folder as ``ensemble-heads.pt``)."""
    return _dataset_job(store, job, lambda dataset: rescore_queue(store, dataset, log=log,
                                                                  work_dir=job_dir(store, job.id)))


def _refit_competence(store: Store, job, *, log=print) -> int:  # noqa: ANN001
    """The background refit of a dataset's annotator model (``core.loop.competence_refit``)."""
    return _dataset_job(store, job, lambda dataset: refit_competence(store, dataset, log=log))


def _dataset_job(store: Store, job, work) -> int:  # noqa: ANN001
    """Run ``work(dataset)`` for the job's dataset and record its note, or the failure with its reason."""
    try:
        note = work((job.config or {}).get("loop_dataset", ""))
    except Exception as error:  # noqa: BLE001 (any failure must end the job as failed, with its reason)
        traceback.print_exc()
        with store.write() as session:
            finish_job(session, job.id, JobStatus.FAILED, error=f"{type(error).__name__}: {error}")
        return 1
    with store.write() as session:
        finish_job(session, job.id, JobStatus.SUCCEEDED, note=note)
    return 0


def _end_process_group() -> None:
    """Ranks that exit with the process group still up end with SIGABRT (gloo): close it first."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stop_at_next_step_on_signals(cancel_flag: list[bool], log=print) -> None:  # noqa: ANN001
    """SIGTERM or a first Ctrl-C: stop at the next step and record the job cancelled; a second Ctrl-C
    interrupts at once (the job is still recorded cancelled, by ``execute_job``)."""

    def first(signum: int, _frame) -> None:  # noqa: ANN001
        cancel_flag[0] = True
        log(f"{signal.Signals(signum).name}: stopping at the next step (Ctrl-C again to stop now)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, first)
    signal.signal(signal.SIGINT, first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one RewardLab training job.")
    # The app passes the store through $REWARDLAB_DB, not --db: a URL may hold a password, which
    # every user of the machine could read in a process's arguments.
    parser.add_argument("--db", default=None, help="store URL (default: $REWARDLAB_DB)")
    parser.add_argument("--job", required=True, type=int)
    args = parser.parse_args(argv)
    cancel_flag = [False]
    stop_at_next_step_on_signals(cancel_flag)
    return execute_job(Store(args.db), args.job, cancel_flag=cancel_flag, log=lambda message: print(message, flush=True))


if __name__ == "__main__":
    sys.exit(main())
