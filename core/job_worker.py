"""The child process of one training job: ``python -m core.job_worker --db URL --job ID``.

It reads the job's config from the store, trains, and records the ending: succeeded, cancelled
(SIGTERM or a cancel request: it stops at the next step) or failed with the reason.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from core.jobs import job_dir
from core.training import TrainingError, run_training
from core.training_config import TrainingConfig
from storage.engine import Store
from storage.jobs import finish_job, get_job, mark_started
from storage.models import JobStatus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one RewardLab training job.")
    parser.add_argument("--db", required=True)
    parser.add_argument("--job", required=True, type=int)
    args = parser.parse_args(argv)
    store = Store(args.db)
    with store.read() as session:
        job = get_job(session, args.job)
    if job is None:
        print(f"there is no job {args.job}", file=sys.stderr)
        return 2
    folder = job_dir(store, job.id)
    with store.write() as session:
        mark_started(session, job.id, pid=os.getpid(), log_path=str(folder / "train.log"), output_dir=str(folder))
    cancel_flag = [False]
    signal.signal(signal.SIGTERM, lambda *_: cancel_flag.__setitem__(0, True))
    try:
        config = TrainingConfig.from_record(job.config)
        outcome = run_training(store, config, folder, job_id=job.id, resume=job.resume, cancel_flag=cancel_flag,
                               log=lambda message: print(message, flush=True))
    except (TrainingError, Exception) as error:  # noqa: BLE001 (any failure must end the job as failed)
        traceback.print_exc()
        reason = str(error) if isinstance(error, TrainingError) else f"{type(error).__name__}: {error}"
        with store.write() as session:
            finish_job(session, job.id, JobStatus.FAILED, error=reason)
        return 1
    status = JobStatus.SUCCEEDED if outcome.status == "succeeded" else JobStatus.CANCELLED
    with store.write() as session:
        finish_job(session, job.id, status, reward_model_name=outcome.model_name,
                   error="cancelled on request" if status is JobStatus.CANCELLED else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
