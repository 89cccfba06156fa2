"""Jobs on a machine without a GPU are forked from one warm process (core/jobs/forking.py): the process tree is read
from the OS (psutil), the outcome from the store with SQL, and the trained weights against a job run by a fresh
``python -m core.jobs.worker``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import PROJECT_ROOT, sql
from safetensors.torch import load_file

from core.accounts import actor_for
from core.data.importer import import_rows
from core.jobs import scheduling
from core.jobs.forking import ForkerError
from core.jobs.scheduling import start_next_job, submit_job
from core.training.config import TrainingConfig
from storage.jobs import job_dir

pytestmark = pytest.mark.slow


def _pairs(n: int = 24) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": "no idea"}]} for i in range(n)]


def _wait_for_end(store, job_id: int, seconds: float = 240) -> str:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = sql(store, f"SELECT status FROM trainingjob WHERE id = {job_id}")[0][0]
        if status not in ("queued", "running"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {status}:\n{(job_dir(store, job_id) / 'train.log').read_text()[-3000:]}")


def _pid(store, job_id: int) -> int:  # noqa: ANN001
    return sql(store, f"SELECT pid FROM trainingjob WHERE id = {job_id}")[0][0]


def _weights(store, name: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    path = sql(store, f"SELECT path FROM rewardmodel WHERE name = '{name}'")[0][0]
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture
def small_store(store):  # noqa: ANN001
    import_rows(store, _pairs(), source="import:forking")
    return store


def test_jobs_are_forked_from_one_warm_process_replaced_if_it_dies_and_train_exactly_as_a_fresh_worker(
        small_store, monkeypatch):  # noqa: ANN001
    store, admin = small_store, actor_for(small_store, None)
    config = dict(max_steps=4, logging_steps=2, save_steps=1000, eval_fraction=0.25, seed=0)
    first = submit_job(store, admin, TrainingConfig(**config, output_name="forked-one"))
    assert start_next_job(store) == first
    forker = psutil.Process(_pid(store, first)).ppid()
    assert "core.jobs.forking" in psutil.Process(forker).cmdline()
    assert os.getpgid(_pid(store, first)) == _pid(store, first)  # its own process group, as a fresh one has
    assert _wait_for_end(store, first) == "succeeded"
    second = submit_job(store, admin, TrainingConfig(max_steps=2, save_steps=1000, output_name="forked-two"))
    assert start_next_job(store) == second
    assert psutil.Process(_pid(store, second)).ppid() == forker  # the same warm process: no second import
    assert _wait_for_end(store, second) == "succeeded"
    assert f"job {second} succeeded" in (job_dir(store, second) / "train.log").read_text()

    os.kill(forker, signal.SIGKILL)  # a forker that died between jobs is replaced
    third = submit_job(store, admin, TrainingConfig(max_steps=2, save_steps=1000, output_name="after-the-kill"))
    start_next_job(store)
    replacement = psutil.Process(_pid(store, third)).ppid()
    assert replacement != forker and "core.jobs.forking" in psutil.Process(replacement).cmdline()
    assert _wait_for_end(store, third) == "succeeded"

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003
        raise ForkerError("the job forker failed: no answer within 45 s")

    monkeypatch.setattr(scheduling.JOB_FORKER, "start_job", failing)  # a forker that fails: the job starts fresh
    fresh = submit_job(store, admin, TrainingConfig(**config, output_name="fresh"))
    start_next_job(store)
    assert psutil.Process(_pid(store, fresh)).ppid() == os.getpid()  # started here, a fresh interpreter
    assert _wait_for_end(store, fresh) == "succeeded"
    assert "no answer within 45 s; starting the job in a fresh process" in \
        (job_dir(store, fresh) / "train.log").read_text()
    forked, fresh_weights = _weights(store, "forked-one"), _weights(store, "fresh")
    assert forked.keys() == fresh_weights.keys()
    assert all(torch.equal(forked[name], fresh_weights[name]) for name in forked)


_APP_THAT_EXITS = """
import sys
from storage.engine import Store
from core.jobs import scheduling
store = Store(sys.argv[1])
scheduling.start_next_job(store)
print(scheduling.JOB_FORKER.pid, flush=True)
"""


def test_the_forker_ends_with_the_app_that_started_it_and_its_job_runs_on(small_store):
    store, admin = small_store, actor_for(small_store, None)
    job_id = submit_job(store, admin, TrainingConfig(max_steps=5000, logging_steps=50, save_steps=5000))
    done = subprocess.run([sys.executable, "-c", _APP_THAT_EXITS, store.url], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    forker, job_pid = int(done.stdout.split()[0]), _pid(store, job_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and psutil.pid_exists(forker) and \
            psutil.Process(forker).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.2)
    assert not psutil.pid_exists(forker) or psutil.Process(forker).status() == psutil.STATUS_ZOMBIE
    assert psutil.Process(job_pid).is_running() and psutil.Process(job_pid).status() != psutil.STATUS_ZOMBIE
    os.killpg(job_pid, signal.SIGKILL)
