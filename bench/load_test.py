"""Load test: N annotators labeling at once over HTTP, on SQLite and on PostgreSQL.

    python bench/load_test.py [--seconds 20] [--annotators 1 8 32] [--comparisons 100000]
                              [--postgres URL] [--out docs/load]

For each database a store gets ``--comparisons`` comparisons to label and one login account per
simulated annotator, and the real app serves it (``python app.py serve``, loopback only). Then, for
each N, N separate processes each log in with ``gradio_client`` as their own annotator and loop
"label the comparison on screen, fetch the next" (the ``/label`` and ``/next`` API, the same code as
the Label tab) for ``--seconds``. Reported per (database, N): labels per second, p50/p95/p99 of one
label+next round trip, errors (must be 0), comparisons labeled twice (must be 0: overlap is 1), and
acknowledged labels missing from the store (must be 0). The baseline is the same run with N = 1 on
SQLite: throughput and latency are also given as ratios to it.

PostgreSQL: ``--postgres`` names a server (a database is created on it per run); without it a
throwaway server is started on loopback with ``scripts/postgres.sh`` and removed at the end.
Results go to OUT/results.json, OUT/results.md (the README table) and OUT/load-latency.png (a plotly
chart rendered by Debian's Chromium).

Every process shares this machine's cores with the server, so the figures describe this machine
(``nproc`` is printed with them), not the servers' ceilings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port, parse_with_smoke, percentile, start_app_server  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from core.accounts import add_user  # noqa: E402
from core.data.importer import ImportConfig, import_file  # noqa: E402
from storage.engine import Store  # noqa: E402

PASSWORD = "load-test-password"
CHOICES = ("a", "b", "a", "b", "tie")  # mostly preferences, like a real queue


# --- one simulated annotator (a child process) -------------------------------------------------

class GradioHttpApi:
    """The app's named endpoints over Gradio's plain HTTP API (``POST /gradio_api/call/NAME`` for an
    event id, then its server-sent events until ``complete`` or ``error``), logged in with a cookie.

    gradio_client speaks the same protocol but polls its message queue every 50 ms
    (``gradio_client/utils.py``), which would put ~50 ms of client sleep into every call measured here.
    """

    def __init__(self, url: str, name: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        response = self.http.post("/login", data={"username": name, "password": PASSWORD})
        response.raise_for_status()
        # One session per annotator, as a browser tab or gradio_client has: without it every call
        # would open a new Gradio session, whose setup costs more than the call.
        self.session_hash = secrets.token_hex(8)

    def call(self, api_name: str, *data):  # noqa: ANN002, ANN201
        response = self.http.post(f"/gradio_api/call/{api_name}", json={"data": list(data), "session_hash": self.session_hash})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        with self.http.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line.removeprefix("data:"))
                    if event == "error":
                        raise RuntimeError(f"/{api_name}: {payload}")
                    return payload[0]
        raise RuntimeError(f"/{api_name}: the event stream ended without a result")


def run_annotator(url: str, name: str, start_at: float, stop_at: float, out: Path) -> None:
    api = GradioHttpApi(url, name)
    item = api.call("next")  # logged in and holding a comparison before the clock starts
    latencies: list[float] = []
    errors: list[str] = []
    acknowledged: list[int] = []
    rng = random.Random(name)
    time.sleep(max(0.0, start_at - time.time()))
    while item is not None and time.time() < stop_at:
        started = time.perf_counter()
        try:
            api.call("label", item["comparison_id"], rng.choice(CHOICES), "", "")
            acknowledged.append(item["comparison_id"])
            item = api.call("next")
            latencies.append(time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 (counted and reported: must be none)
            errors.append(f"{type(error).__name__}: {str(error)[:300]}")
            try:
                item = api.call("next")
            except Exception as again:  # noqa: BLE001
                errors.append(f"{type(again).__name__}: {str(again)[:300]}")
                break
    out.write_text(json.dumps({"name": name, "latencies": latencies, "errors": errors, "acknowledged": acknowledged}))


# --- the driver ---------------------------------------------------------------------------------

def prepare_store(url: str, comparisons: int, annotators: list[str], folder: Path) -> float:
    """Fill the store; returns the import time in seconds."""
    rows = folder / "queue.jsonl"
    if not rows.exists():
        with open(rows, "w") as handle:
            for i in range(comparisons):
                handle.write(json.dumps({"prompt": f"Prompt {i}: explain item {i} in two sentences.",
                                         "completions": [f"First answer to {i}.", f"Second answer to {i}."]}) + "\n")
    store = Store(url)
    started = time.perf_counter()
    import_file(store, ImportConfig(rows))
    seconds = time.perf_counter() - started
    for name in annotators:
        add_user(store, name, "annotator", PASSWORD)
    store.dispose()
    return seconds


def stored_check(url: str, names: list[str]) -> tuple[int, set[tuple[str, int]]]:
    """Comparisons with more non-skip labels than the overlap (1), and the stored (annotator, comparison) pairs."""
    engine = create_engine(url)
    with engine.connect() as connection:
        twice = connection.execute(text(
            "SELECT COUNT(*) FROM (SELECT comparison_id FROM label WHERE choice <> 'skip' "
            "GROUP BY comparison_id HAVING COUNT(*) > 1) AS twice")).scalar_one()
        stored = connection.execute(text(
            'SELECT u.name, l.comparison_id FROM label l JOIN "user" u ON u.id = l.annotator_id')).all()
    engine.dispose()
    wanted = set(names)
    return twice, {(name, comparison) for name, comparison in stored if name in wanted}


def run_level(url: str, app_url: str, names: list[str], seconds: float, folder: Path) -> dict:
    start_at = time.time() + 8 + 0.6 * len(names)  # every client connected and logged in before the clock
    stop_at = start_at + seconds
    outputs = [folder / f"{name}.json" for name in names]
    children = [
        subprocess.Popen([sys.executable, __file__, "--worker", app_url, name, str(start_at), str(stop_at), str(out)],
                         cwd=ROOT)
        for name, out in zip(names, outputs, strict=True)
    ]
    for child in children:
        child.wait(timeout=seconds + 300)
    latencies, errors, acknowledged = [], [], set()
    for name, out in zip(names, outputs, strict=True):
        if not out.exists():
            errors.append(f"{name}: the client process failed before reporting")
            continue
        result = json.loads(out.read_text())
        latencies += result["latencies"]
        errors += result["errors"]
        acknowledged |= {(name, comparison) for comparison in result["acknowledged"]}
    twice, stored = stored_check(url, names)
    return {
        "labels": len(acknowledged),
        "labels_per_second": len(acknowledged) / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": len(errors),
        "error_samples": errors[:5],
        "labeled_twice": twice,
        "acknowledged_missing": len(acknowledged - stored),
    }


def run_database(kind: str, url: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    names_by_level = {n: [f"{kind}-n{n}-{i}" for i in range(n)] for n in args.annotators}
    all_names = [name for names in names_by_level.values() for name in names]
    import_seconds = prepare_store(url, args.comparisons, all_names, folder)
    print(f"{kind}: {args.comparisons} comparisons imported in {import_seconds:.1f} s", flush=True)
    server, app_url = start_app_server(url, folder / f"{kind}-app.log")
    results = []
    try:
        for n, names in names_by_level.items():
            level_folder = folder / f"{kind}-{n}"
            level_folder.mkdir()
            result = {"database": kind, "annotators": n, **run_level(url, app_url, names, args.seconds, level_folder)}
            print(json.dumps({k: v for k, v in result.items() if k != "error_samples"}), flush=True)
            for sample in result["error_samples"]:
                print(f"  error: {sample}", flush=True)
            results.append(result)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def postgres_database(server_url: str, name: str) -> str:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def write_report(results: list[dict], args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = next(r for r in results if r["database"] == "sqlite" and r["annotators"] == min(args.annotators))
    meta = {"seconds_per_level": args.seconds, "comparisons": args.comparisons, "cpu_cores": os.cpu_count()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        "| database | annotators | labels/s | vs SQLite N=1 | p50 ms | p95 ms | p99 ms | errors | labeled twice | lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {'SQLite' if r['database'] == 'sqlite' else 'PostgreSQL'} | {r['annotators']} | "
            f"{r['labels_per_second']:.1f} | {r['labels_per_second'] / base['labels_per_second']:.2f}x | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {r['labeled_twice']} | "
            f"{r['acknowledged_missing']} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    draw_chart(results, meta, out / "load-latency.png")


def draw_chart(results: list[dict], meta: dict, png: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("label + next round trip (ms)", "labels per second"))
    colors = {"sqlite": "#1f77b4", "postgresql": "#d62728"}
    for database in ("sqlite", "postgresql"):
        rows = [r for r in results if r["database"] == database]
        if not rows:
            continue
        n = [r["annotators"] for r in rows]
        label = "SQLite" if database == "sqlite" else "PostgreSQL"
        for key, dash in (("p50_ms", "solid"), ("p95_ms", "dash"), ("p99_ms", "dot")):
            figure.add_trace(go.Scatter(x=n, y=[r[key] for r in rows], name=f"{label} {key[:3]}", mode="lines+markers",
                                        line={"color": colors[database], "dash": dash}), row=1, col=1)
        figure.add_trace(go.Scatter(x=n, y=[r["labels_per_second"] for r in rows], name=f"{label} labels/s",
                                    mode="lines+markers", line={"color": colors[database]}, showlegend=False),
                         row=1, col=2)
    for col in (1, 2):
        figure.update_xaxes(type="log", title_text="simulated annotators (processes)", tickvals=sorted({r["annotators"] for r in results}),
                            row=1, col=col)
    figure.update_yaxes(type="log", row=1, col=1)
    figure.update_layout(
        title=f"RewardLab load test: {meta['comparisons']:,} comparisons, {meta['seconds_per_level']} s per level, "
              f"{meta['cpu_cores']} CPU cores shared by server and clients",
        width=1200, height=520, template="plotly_white",
    )
    html = png.with_suffix(".html")
    figure.write_html(html, include_plotlyjs=True)  # inline plotly.js: renders offline
    # Static export through Debian's Chromium (kaleido would download its own browser).
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1220, "height": 540})
        page.goto(html.resolve().as_uri())
        page.wait_for_selector(".main-svg")
        page.screenshot(path=str(png))
        browser.close()
    html.unlink()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, name, start_at, stop_at, out = sys.argv[2:7]
        run_annotator(url, name, float(start_at), float(stop_at), Path(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="labeling time per level (default 20)")
    parser.add_argument("--annotators", type=int, nargs="+", default=[1, 8, 32], help="levels of N (default 1 8 32)")
    parser.add_argument("--comparisons", type=int, default=100_000, help="comparisons in the store (default 100000)")
    parser.add_argument("--postgres", help="a PostgreSQL server URL (default: start a throwaway one)")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "load")
    args = parse_with_smoke(parser, seconds=2.0, annotators=[2], comparisons=300, databases=["sqlite"], out=None)
    if args.out is None:  # a smoke run's figures are not results: they go to a temporary folder
        args.out = Path(tempfile.mkdtemp(prefix="rewardlab-load-smoke-"))
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rewardlab-load-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # the PostgreSQL server may run as the `postgres` user (scripts/postgres.sh)
        pg_data = folder / "pg"
        server_url = args.postgres
        try:
            for kind in args.databases:
                db_folder = folder / kind
                db_folder.mkdir()
                if kind == "sqlite":
                    url = f"sqlite:///{db_folder / 'store.db'}"
                else:
                    if server_url is None:
                        started = subprocess.run(["bash", "scripts/postgres.sh", "start", str(pg_data), str(free_port())],
                                                 cwd=ROOT, check=True, capture_output=True, text=True)
                        server_url = started.stdout.strip().splitlines()[-1]
                    url = postgres_database(server_url, "rewardlab_load")
                results += run_database(kind, url, args, db_folder)
        finally:
            if pg_data.exists():
                subprocess.run(["bash", "scripts/postgres.sh", "stop", str(pg_data)], cwd=ROOT, check=False)
    write_report(results, args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
