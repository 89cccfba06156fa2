"""Every script in bench/ runs in its smoke mode (tiny sizes, seconds), so none rots between the
full runs whose figures are in the README. Figures are printed, never asserted: timed assertions do
not belong in tests."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow
BENCHMARKS = sorted(p.name for p in (PROJECT_ROOT / "bench").glob("*.py") if p.name != "common.py")


def test_every_benchmark_is_found():
    assert {"import_speed.py", "scoring_speed.py", "label_latency.py", "load_test.py", "grouped_training.py",
            "active_replay.py", "serve_load.py"} <= set(BENCHMARKS)


@pytest.mark.parametrize("script", BENCHMARKS)
def test_the_benchmark_runs_in_smoke_mode_and_prints_its_table(script):
    done = subprocess.run([sys.executable, f"bench/{script}", "--smoke"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    print(done.stdout[-1500:])
    assert "|" in done.stdout or "x" in done.stdout  # a results table or ratio line came out
