"""Job start: how long a training job takes from the scheduler starting it to its first step and to its end, and
the machine's CPU time per job, for a worker forked from the warm job forker (core/jobs/forking.py) against a fresh
``python -m core.jobs.worker`` interpreter (the scheduler's fallback, and every job on a machine with a GPU), in one
run.

    python bench/job_start.py [--jobs 5] [--steps 4] [--smoke]

Each job trains the demo model for ``--steps`` steps on 32 pairs, one job at a time, through ``start_next_job`` as
the app's scheduler runs it. The forker's first job pays for the forker's own imports and is reported on its own
row; the warm rows are the jobs after it. CPU is the whole machine's busy time while the job ran (/proc/stat), so
run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import parse_with_smoke  # noqa: E402


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and I/O wait since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_one(store, admin, steps: int) -> tuple[float, float, float]:  # noqa: ANN001
    """Seconds to the first step, seconds to the end, and machine CPU-s of one job started as the scheduler does."""
    from sqlalchemy import text

    from core.jobs.scheduling import start_next_job, submit_job
    from core.training.config import TrainingConfig

    job_id = submit_job(store, admin, TrainingConfig(max_steps=steps, logging_steps=1, save_steps=10_000,
                                                     eval_fraction=0.25, seed=0))
    busy, started = machine_busy_seconds(), time.perf_counter()
    assert start_next_job(store) == job_id
    first_step = None
    while True:
        with store.read() as session:
            status, step = session.execute(text("SELECT status, current_step FROM trainingjob WHERE id = :id"),
                                           {"id": job_id}).one()
        now = time.perf_counter()
        if first_step is None and (step or 0) >= 1:
            first_step = now - started
        if status not in ("queued", "running"):
            break
        time.sleep(0.05)
    if status != "succeeded":
        raise SystemExit(f"job {job_id} ended {status}")
    return first_step if first_step is not None else now - started, now - started, machine_busy_seconds() - busy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per way of starting them (default: 5)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per job (default: 4)")
    args = parse_with_smoke(parser, argv, jobs=1, steps=1)

    from core.accounts import actor_for
    from core.data.importer import import_rows
    from core.jobs import scheduling
    from core.jobs.forking import ForkerError, JobForker
    from storage.engine import Store

    pairs = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
              "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
              "rejected": [{"role": "assistant", "content": "no idea"}]} for i in range(32)]
    shared_forker = scheduling.JOB_FORKER
    forker = JobForker(per_job_variables=tuple(shared_forker.per_job_variables))
    scheduling.JOB_FORKER = forker  # a forker of this run's own, started cold
    rows: list[tuple[str, int, float, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = Store(f"sqlite:///{Path(folder) / 'bench.db'}")
            import_rows(store, pairs, source="import:bench")
            admin = actor_for(store, None)

            forked = [run_one(store, admin, args.steps) for _ in range(1 + args.jobs)]

            def refuse(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
                raise ForkerError("fresh interpreters for this row")

            forker.start_job = refuse  # the scheduler's fallback: a fresh interpreter per job
            fresh = [run_one(store, admin, args.steps) for _ in range(args.jobs)]
            store.dispose()
        for name, runs in (("forked, the forker's first job", forked[:1]), ("forked, warm forker", forked[1:]),
                           ("fresh interpreter", fresh)):
            rows.append((name, len(runs), *(statistics.median(run[i] for run in runs) for i in range(3))))
    finally:
        forker.close()
        scheduling.JOB_FORKER = shared_forker

    print(f"{args.jobs} job(s) per way, {args.steps} step(s) each, one at a time (medians)\n")
    print("| started as | jobs | s to first step | s to end | machine CPU-s per job |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, count, first, end, cpu in rows:
        print(f"| {name} | {count} | {first:.1f} | {end:.1f} | {cpu:.1f} |")
    warm, cold = rows[1], rows[2]
    print(f"\nwarm forker vs fresh interpreter: first step {cold[2] / warm[2]:.1f}x sooner, "
          f"{cold[4] / warm[4]:.1f}x less CPU per job")


if __name__ == "__main__":
    main()
