"""The child process of one training job: ``python -m core.training.worker --job ID`` (store from ``$REWARDLAB_DB`` or ``--db URL``).

It reads the job's config from the store, trains, and records the ending: succeeded, cancelled
(SIGTERM or a cancel request: it stops at the next step) or failed with the reason.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from core.training.jobs import job_dir
from core.training.trainer import TrainingError, run_training
from core.training.config import TrainingConfig
from storage.engine import Store
from storage.jobs import finish_job, get_job, mark_started
from storage.models import JobStatus


def execute_job(store: Store, job_id: int, *, cancel_flag: list[bool] | None = None, log=print) -> int:  # noqa: ANN001
    """Run job ``job_id`` in this process and record how it ended; returns the exit code.

    Used by the worker process and by ``python app.py train`` (the foreground path).
    """
    with store.read() as session:
        job = get_job(session, job_id)
    if job is None:
        log(f"there is no job {job_id}")
        return 2
    folder = job_dir(store, job.id)
    with store.write() as session:
        mark_started(session, job.id, pid=os.getpid(), log_path=str(folder / "train.log"), output_dir=str(folder))
    try:
        config = TrainingConfig.from_record(job.config)
        outcome = run_training(store, config, folder, job_id=job.id, resume=job.resume, cancel_flag=cancel_flag, log=log)
    except Exception as error:  # noqa: BLE001 (any failure must end the job as failed, with its reason)
        traceback.print_exc()
        reason = str(error) if isinstance(error, TrainingError) else f"{type(error).__name__}: {error}"
        with store.write() as session:
            finish_job(session, job.id, JobStatus.FAILED, error=reason)
        log(f"training failed: {reason}")
        return 1
    status = JobStatus.SUCCEEDED if outcome.status == "succeeded" else JobStatus.CANCELLED
    with store.write() as session:
        finish_job(session, job.id, status, reward_model_name=outcome.model_name,
                   error="cancelled on request" if status is JobStatus.CANCELLED else None)
    log(f"job {job.id} {status.value}" + (f": {outcome.model_name} (held-out accuracy {outcome.eval_accuracy}, "
                                          f"margin {outcome.eval_margin})" if outcome.model_name else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one RewardLab training job.")
    # The app passes the store through $REWARDLAB_DB, not --db: a URL may hold a password, which
    # every user of the machine could read in a process's arguments.
    parser.add_argument("--db", default=None, help="store URL (default: $REWARDLAB_DB)")
    parser.add_argument("--job", required=True, type=int)
    args = parser.parse_args(argv)
    cancel_flag = [False]
    signal.signal(signal.SIGTERM, lambda *_: cancel_flag.__setitem__(0, True))
    return execute_job(Store(args.db), args.job, cancel_flag=cancel_flag, log=lambda message: print(message, flush=True))


if __name__ == "__main__":
    sys.exit(main())
