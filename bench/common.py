"""What the benchmarks share: percentiles, and the real app served on a free loopback port."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the reward model reads each token and the answer follows a chain of thought about numbers such as "
         "seven plus five equals twelve so we check again before writing the final result").split()


def texts_with_lengths(count: int, seed: int = 0) -> list[str]:
    """``count`` texts of a long-tailed (log-normal) mix of lengths, as reasoning responses are:
    median ~100 words, a few up to 1,500."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = int(min(1500, max(3, rng.lognormvariate(4.6, 1.0))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    return texts


def parse_with_smoke(parser, argv=None, **smoke):  # noqa: ANN001, ANN201
    """Parse arguments, with ``--smoke``: a seconds-long run at the tiny sizes given in ``smoke`` (CI
    runs every benchmark so, to keep them from rotting; the figures of a smoke run mean nothing)."""
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run at tiny sizes (what CI runs)")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank; NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app_server(url: str, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py serve --no-demo`` on the store at ``url`` (passed in the environment);
    returns the process and its address once it accepts connections."""
    port = free_port()
    env = {**os.environ, "REWARDLAB_DB": url, "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (the child writes to it)
    process = subprocess.Popen([sys.executable, "app.py", "serve", "--port", str(port), "--no-demo"], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}" + (f":\n{log_path.read_text()}" if log_path else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the app did not start in 120 s")
