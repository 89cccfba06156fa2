"""Labeling latency with 100,000 comparisons in the store.

    python bench/label_latency.py [--comparisons 100000] [--labels 1000] [--clicks 40] [--smoke]

1. Server side: the work of one click on "Left is better", as the Label tab's handler does it
   (``label_and_next``: store the label, claim and load the next comparison, progress, history, in
   one transaction), timed per click.
   Baseline in the same process: one label row inserted and committed with plain ``sqlite3``
   (same file, WAL, synchronous=FULL), the floor for an acknowledged write.
2. In Chromium: the round trip of one click, from the click until the next comparison is on screen.

Half the comparisons are labeled before timing starts (a project in mid-flight), so the queue must
skip past finished work.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import parse_with_smoke, percentile, start_app_server  # noqa: E402

from core.accounts import actor_for  # noqa: E402
from core.data.importer import ImportConfig, import_file  # noqa: E402
from core.labeling.actions import label_and_next, open_labeling_screen  # noqa: E402
from storage.engine import Store  # noqa: E402


def build_store(path: Path, comparisons: int) -> Store:
    rows = path.parent / "queue.jsonl"
    with open(rows, "w") as handle:
        for i in range(comparisons):
            handle.write(json.dumps({"prompt": f"Prompt {i}: explain item {i}.",
                                     "completions": [f"Answer one to {i}.", f"Answer two to {i}."]}) + "\n")
    store = Store(f"sqlite:///{path}")
    import_file(store, ImportConfig(rows))
    # Half the queue already labeled by someone else, in one set-based statement.
    with store.write() as session:
        session.connection().exec_driver_sql("INSERT INTO user (name, role, created_at) VALUES ('earlier', 'annotator', '2026-01-01')")
        session.connection().exec_driver_sql(
            "INSERT INTO label (comparison_id, annotator_id, choice, created_at, updated_at) "
            "SELECT id, (SELECT id FROM user WHERE name = 'earlier'), 'a', '2026-01-01', '2026-01-01' "
            f"FROM comparison WHERE id <= {comparisons // 2}"
        )
        session.connection().exec_driver_sql(
            f"UPDATE comparison SET label_count = 1, done = 1 WHERE id <= {comparisons // 2}"
        )
    return store


def time_server_side(store: Store, labels: int) -> list[float]:
    actor = actor_for(store, None)
    view = open_labeling_screen(store, actor).view
    timings = []
    for _ in range(labels):
        start = time.perf_counter()
        view = label_and_next(store, actor, view, "left", strength="clearly", seconds_spent=1.0).view
        timings.append(time.perf_counter() - start)
    return timings


def time_raw_commit(path: Path, labels: int) -> list[float]:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    user = connection.execute("SELECT id FROM user WHERE name = 'earlier'").fetchone()[0]
    first = connection.execute("SELECT max(comparison_id) FROM label").fetchone()[0] + 1
    timings = []
    for offset in range(labels):
        start = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO label (comparison_id, annotator_id, choice, created_at, updated_at) VALUES (?, ?, 'a', ?, ?)",
            (first + 20_000 + offset, user, "2026-01-01", "2026-01-01"),
        )
        connection.execute("COMMIT")
        timings.append(time.perf_counter() - start)
    connection.close()
    return timings


def time_clicks(db_path: Path, clicks: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    server, app_url = start_app_server(f"sqlite:///{db_path}")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.goto(app_url)
            page.locator("#label-left .rl-response").wait_for(timeout=60_000)
            page.locator("#label-current").get_by_text("Comparison #").wait_for()
            timings = []
            for _ in range(clicks + 3):
                before = page.locator("#label-current").inner_text()
                start = time.perf_counter()
                page.locator("#btn-left").click()
                page.wait_for_function("(b) => document.querySelector('#label-current').innerText !== b", arg=before)
                timings.append(time.perf_counter() - start)
            browser.close()
        return timings[3:]  # the first clicks warm the page up
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--clicks", type=int, default=40)
    args = parse_with_smoke(parser, comparisons=200, labels=20, clicks=2)
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "bench.db"
        start = time.perf_counter()
        store = build_store(db_path, args.comparisons)
        print(f"store with {args.comparisons:,} comparisons ({args.comparisons // 2:,} labeled) built in "
              f"{time.perf_counter() - start:.1f} s")
        ours = time_server_side(store, args.labels)
        store.dispose()
        raw = time_raw_commit(db_path, args.labels)
        clicks = time_clicks(db_path, args.clicks) if args.clicks else []

    def row(name: str, values: list[float]) -> str:
        return (f"| {name} | {len(values)} | {1000 * statistics.median(values):.1f} | "
                f"{1000 * percentile(values, 95):.1f} | {1000 * percentile(values, 99):.1f} |")

    print("| what | n | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    print(row("baseline: one label row, plain sqlite3 insert + commit", raw))
    print(row("server side: save label + next comparison + progress + history", ours))
    if clicks:
        print(row("Chromium: click to next comparison on screen", clicks))
    print(f"server-side p50 / baseline p50: {statistics.median(ours) / statistics.median(raw):.1f}x")


if __name__ == "__main__":
    main()
