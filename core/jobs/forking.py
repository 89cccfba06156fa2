"""A job process forked from a warm one: ``python -m core.jobs.forking`` imports the training stack once and forks
one child per job, so a job on a machine without a GPU starts in a fraction of a second instead of spending ~9 CPU-s
importing torch, transformers, TRL, PEFT, bitsandbytes and datasets again (measured: 8.8 CPU-s of a tiny job's
~12; the loop starts a retrain, a rescore and a competence refit per round).

The child is what ``python -m core.jobs.worker --job ID`` would be: its own session (process group) as
``start_new_session`` gives, stdout and stderr appended to the job's log, stdin from /dev/null, the environment
and working folder the app asked for, and ``core.jobs.worker.main`` run to its exit code. The app's scheduler owns
the forker (``JobForker``): it talks to it over two pipes only it holds (no socket another user could reach), and
the forker exits when the app's end of the pipe closes (an app crash), or after
``core.limits.MAX_FORKER_IDLE_SECONDS`` without a job so that its ~600 MB of imported modules do not sit beside an app nobody trains in. Jobs already forked keep
running either way, exactly as jobs started fresh do.

Only on machines without a GPU: a process that has imported bitsandbytes may have initialised the CUDA driver,
which a forked child cannot use (https://github.com/pytorch/pytorch/issues/40403), so with a GPU visible every job
starts a fresh interpreter as before (``core.jobs.scheduling.worker_command``). The forker also refuses to fork
(and the scheduler then starts the job fresh) if importing left torch's CUDA initialised or started a Python thread.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.limits import MAX_FORKER_IDLE_SECONDS, MAX_FORKER_REPLY_SECONDS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ForkerError(RuntimeError):
    """The forker could not start a job (it died, timed out or refused); the caller starts the job fresh."""


def import_training_stack() -> None:
    """Everything a job imports on its way to its first step (``core.training.trainer`` imports these lazily)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback  # noqa: F401
    from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: F401
    from trl import ModelConfig, RewardConfig, RewardTrainer, get_peft_config, get_quantization_config  # noqa: F401
    from trl.trainer.reward_trainer import DataCollatorForPreference  # noqa: F401

    import core.jobs.worker  # noqa: F401
    import core.training.trainer  # noqa: F401


def fork_refusal() -> str | None:
    """Why this process must not fork a job, or None. A Python thread would be copied without its lock owners,
    and a CUDA context cannot be used in a child (native threads such as pyarrow's jemalloc background thread
    are harmless: jemalloc resets itself at fork, as datasets' own forked ``map`` workers rely on)."""
    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads are running"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised"
    return None


def _run_child(request: dict, private_fds: list[int], session_made_fd: int, go_fd: int) -> int:
    """In the forked child: become the job's process (see the module's docstring) and run the worker, once the
    forker says the app has our pid; if the forker died first (the app then retries or starts the job fresh), end
    without running the job, so a job never runs twice."""
    os.setsid()
    os.close(session_made_fd)  # the forker answers with our pid only now: a cancel can signal our whole group
    for fd in private_fds:
        os.close(fd)
    go = os.read(go_fd, 1)
    os.close(go_fd)
    if go != b"1":
        return 1
    # The dispositions a fresh interpreter starts with (Python itself ignores SIGPIPE, so that stays).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.argv = [sys.executable, "-m", "core.jobs.worker", "--job", str(request["job"])]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # a fresh interpreter seeds numpy's global generator from the OS; so does each job
    fingerprint = sys.modules.get("datasets.fingerprint")
    if fingerprint is not None:
        fingerprint.fingerprint_rng.seed()  # datasets' own generator for random fingerprints, made at import
    from core.jobs.worker import main

    return main(["--job", str(request["job"])])


def serve(requests_fd: int, replies_fd: int) -> int:
    """The forker's loop: first one line saying whether it will fork (``{"ready": ..., "error": ...}``), then for each
    JSON request line in (a job), one reply line out with the forked child's pid (``{"pid": N}``)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our children: a finished job leaves no zombie
    import_training_stack()
    refusal = fork_refusal()
    replies = os.fdopen(replies_fd, "w", buffering=1)
    replies.write(json.dumps({"ready": refusal is None, "error": refusal}) + "\n")
    if refusal is not None:
        return 1
    requests = os.fdopen(requests_fd, "r")
    while True:
        readable, _, _ = select.select([requests], [], [], MAX_FORKER_IDLE_SECONDS)
        if not readable:
            return 0  # idle: the next job starts a new forker
        line = requests.readline()
        if not line:
            return 0  # the app is gone
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        session_made_read, session_made_write = os.pipe()
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(session_made_read)
                os.close(go_write)
                code = _run_child(request, [requests_fd, replies_fd], session_made_write, go_read)
            except SystemExit as stop:  # as a fresh interpreter ends on it: None is 0, a message is printed and 1
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 (the child must end here, never return into the forker's loop)
                import traceback

                traceback.print_exc()
            finally:
                try:
                    import atexit

                    atexit._run_exitfuncs()  # what a fresh interpreter runs at exit (loggers, temp folders)
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(session_made_write)
        os.close(go_read)
        os.read(session_made_read, 1)  # end of file once the child is in its own session (or died)
        os.close(session_made_read)
        replies.write(json.dumps({"pid": pid}) + "\n")
        os.write(go_write, b"1")  # the app has the pid: the job may run
        os.close(go_write)


class JobForker:
    """The scheduler's handle on a forker process; started on the first job, again if it died or went idle.

    ``start_job`` returns the job's pid, or raises ``ForkerError`` (then start the job fresh). Each job gets the
    whole environment it asked for, but a library reads some variables once, at import (``HF_HUB_OFFLINE``,
    ``OMP_NUM_THREADS``, ...): so the forker starts over when any variable changed since it started, except
    ``per_job_variables``, which RewardLab reads when a job runs (the store's URL, which may hold a password, is
    one: it never enters the forker's own environment).
    """

    def __init__(self, per_job_variables: tuple[str, ...] = ()) -> None:
        self.per_job_variables = frozenset(per_job_variables)
        self._process: subprocess.Popen | None = None
        self._environment: dict[str, str] | None = None
        self._refusal: str | None = None  # why a forker refused to fork: then every job of this app starts fresh
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The forker's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start_job(self, job_id: int, *, environment: dict[str, str], log_path: Path) -> int:
        request = {"job": job_id, "env": environment, "cwd": str(PROJECT_ROOT), "log": str(log_path)}
        base = {key: value for key, value in environment.items() if key not in self.per_job_variables}
        with self._lock:
            if self._refusal is not None:
                raise ForkerError(f"the job forker refused to fork: {self._refusal}")
            if self._process is not None and (self._process.poll() is not None or base != self._environment):
                self.close()
            # A forker that died since its last job (killed, out of memory) may not be reaped yet: one more try,
            # with a new one, before the job is left to a fresh process. Either way a child forked without its pid
            # reaching us never runs the job (it waits for the forker's go), so a job cannot run twice. All of it
            # within MAX_FORKER_REPLY_SECONDS, well inside the starting grace of a claimed job.
            deadline = time.monotonic() + MAX_FORKER_REPLY_SECONDS
            for attempt in range(2):
                started_now = self._process is None
                try:
                    if started_now:
                        self._start(base, deadline)
                    self._process.stdin.write(json.dumps(request) + "\n")
                    self._process.stdin.flush()
                    return int(self._read_reply(deadline)["pid"])
                except (OSError, ValueError, KeyError, ForkerError) as error:
                    self.close()
                    if started_now or attempt == 1:
                        raise ForkerError(f"the job forker failed: {error}") from error
        raise AssertionError("unreachable")

    def _start(self, environment: dict[str, str], deadline: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "core.jobs.forking"], cwd=PROJECT_ROOT, env=environment, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, start_new_session=True,
        )
        self._environment = environment
        ready = self._read_reply(deadline)
        if not ready.get("ready"):
            self._refusal = ready.get("error") or "no reason given"
            raise ForkerError(f"it refuses to fork: {self._refusal}")

    def _read_reply(self, deadline: float) -> dict:
        readable, _, _ = select.select([self._process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise ForkerError(f"no answer within {MAX_FORKER_REPLY_SECONDS} s")
        line = self._process.stdout.readline()
        if not line:
            raise ForkerError(f"it exited (code {self._process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            process.wait(timeout=2)  # it exits at the end of its pipe; a hung or stopped one is killed
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    # Requests and replies move to private descriptors, and fd 1 points at stderr, so a library that prints while
    # importing cannot corrupt the replies.
    requests_fd, replies_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return serve(requests_fd, replies_fd)


if __name__ == "__main__":
    sys.exit(main())
