"""Every script in bench/ runs in its smoke mode (tiny sizes, seconds), so none rots between the
full runs whose figures are in the README. Figures are printed, never asserted: timed assertions do
not belong in tests.

The scripts run as ``__main__`` inside the test process (``runpy``), as ``python bench/X.py --smoke`` would run
them, so that torch, transformers and gradio are imported once for all of them rather than once per script (about
four seconds each on this CPU); a script that starts servers still starts them as child processes."""

from __future__ import annotations

import runpy
import sys

import pytest
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow
BENCHMARKS = sorted(p.name for p in (PROJECT_ROOT / "bench").glob("*.py") if p.name != "common.py")


def test_every_benchmark_is_found():
    assert {"import_speed.py", "scoring_speed.py", "label_latency.py", "load_test.py", "grouped_training.py",
            "active_replay.py", "serve_load.py"} <= set(BENCHMARKS)


@pytest.mark.parametrize("script", BENCHMARKS)
def test_the_benchmark_runs_in_smoke_mode_and_prints_its_table(script, capsys, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setattr(sys, "argv", [f"bench/{script}", "--smoke"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put bench/ and the root on it
    import torch

    threads = torch.get_num_threads()  # a script may set its own (active_replay: 1); later tests keep theirs
    try:
        runpy.run_path(str(PROJECT_ROOT / "bench" / script), run_name="__main__")
    except SystemExit as ended:
        assert ended.code in (0, None), f"bench/{script} --smoke exited with {ended.code}"
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    print(printed[-1500:])
    assert "|" in printed or "x" in printed  # a results table or ratio line came out
