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


def line_chart_svg(panels: list[dict], path: Path, width: int = 420, height: int = 300) -> None:
    """Side-by-side line charts as a small SVG by hand (matplotlib is not installed and plotly's static
    export needs kaleido). Each panel: ``title``, ``x_label``, ``y_label`` and ``series``, a dict of
    name -> (colour, [(x, y), ...]); a name starting with "goal" is drawn dashed. Optional: ``y_low`` (where the
    y axis starts, 0 unless given: accuracies that differ by 0.02 need a cut axis, which the tick labels show) and
    ``y_format`` (the tick labels' format, ",.0f" unless given)."""
    pad, parts = 55, []
    for index, panel in enumerate(panels):
        x0 = index * width
        points = [p for _, values in panel["series"].values() for p in values]
        x_high, y_top = max(x for x, _ in points), max(y for _, y in points)
        y_low = panel.get("y_low", 0)
        y_high = y_low + (y_top - y_low) * 1.3  # headroom: the legend sits above the highest line
        y_format = panel.get("y_format", ",.0f")

        def x_of(x: float, x0: int = x0, x_high: float = x_high) -> float:
            return x0 + pad + x / x_high * (width - 1.4 * pad)

        def y_of(y: float, y_high: float = y_high, y_low: float = y_low) -> float:
            return height - pad - (y - y_low) / (y_high - y_low) * (height - 1.7 * pad)

        parts += [f'<text x="{x0 + width / 2}" y="18" text-anchor="middle" font-size="13">{panel["title"]}</text>',
                  f'<polyline fill="none" stroke="#888" points="{x_of(0):.1f},{y_of(y_high):.1f} {x_of(0):.1f},'
                  f'{y_of(y_low):.1f} {x_of(x_high):.1f},{y_of(y_low):.1f}"/>',
                  f'<text x="{x_of(x_high / 2):.1f}" y="{height - 12}" text-anchor="middle" font-size="11">'
                  f'{panel["x_label"]}</text>',
                  f'<text x="{x0 + 12}" y="{y_of((y_low + y_high) / 2):.1f}" font-size="11" text-anchor="middle" '
                  f'transform="rotate(-90 {x0 + 12} {y_of((y_low + y_high) / 2):.1f})">{panel["y_label"]}</text>']
        parts += [f'<text x="{x_of(0) - 4:.1f}" y="{y_of(t) + 4:.1f}" text-anchor="end" font-size="10">'
                  f'{format(t, y_format)}</text>' for t in (y_low, (y_low + y_top) / 2, y_top)]
        xs = sorted({x for x, _ in points})
        shown = xs[(len(xs) - 1) % 2::2] if len(xs) > 10 else xs  # every other label when crowded, the last one kept
        parts += [f'<text x="{x_of(x):.1f}" y="{y_of(y_low) + 14:.1f}" text-anchor="middle" font-size="10">{x:,.0f}</text>'
                  for x in shown]
        for row, (name, (colour, values)) in enumerate(panel["series"].items()):
            dash = ' stroke-dasharray="5,4"' if name.startswith("goal") else ""
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="'
                         + " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in values) + '"/>')
            parts.append(f'<text x="{x0 + pad + 10}" y="{40 + 14 * row}" font-size="11" fill="{colour}">{name}</text>')
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(panels)}" height="{height}" '
                    'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
                    + "".join(parts) + "</svg>\n")
