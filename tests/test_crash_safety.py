"""Nothing acknowledged is lost: the real server is killed with SIGKILL while 8 clients label through
the API, then restarted; every label whose submit returned is there exactly once, the database
passes its integrity check, and the queue carries on. Three kills, at different moments after labels start
flowing; each run must have acknowledged labels, so a run that checked nothing fails."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time

import pytest
from conftest import add_users, setup_cli, start_app

from storage.engine import Store
from storage.models import Label, User

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
PASSWORD = "correct horse battery"
CLIENTS = 8
KILL_AFTER_SECONDS = (1.0, 3.0, 6.0)  # early, middle and late in a run (five kills cost ~40 s more per pass for no new case)


def _labels(db_url: str) -> list[tuple[str, int]]:
    from sqlalchemy import select

    store = Store(db_url)
    with store.read() as session:
        rows = session.execute(select(User.name, Label.comparison_id).join(Label, Label.annotator_id == User.id)).all()
    store.dispose()
    return [tuple(row) for row in rows]


def test_sigkill_while_labeling_loses_no_acknowledged_label(db_url, tmp_path, capsys):
    from gradio_client import Client

    rows = [{"prompt": f"Prompt {i}", "completions": [f"one {i}", f"two {i}"]} for i in range(2000)]
    source = tmp_path / "queue.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert setup_cli("import", str(source), db_url=db_url).returncode == 0
    names = [f"annotator{n}" for n in range(CLIENTS)]
    add_users(db_url, dict.fromkeys(names, "annotator"), PASSWORD)

    acknowledged: set[tuple[str, int]] = set()
    lock = threading.Lock()
    summary = []
    for run, kill_after in enumerate(KILL_AFTER_SECONDS):
        app = start_app(db_url, tmp_path / f"app{run}.log", "--no-demo")
        clients = [Client(app.url, auth=(name, PASSWORD), verbose=False) for name in names]
        stop = threading.Event()

        def label(name: str, client, stop: threading.Event = stop) -> None:  # noqa: ANN001
            while not stop.is_set():
                try:
                    item = client.predict(api_name="/next")
                    if item is None:
                        return
                    choice = "a" if item["comparison_id"] % 2 else "b"
                    client.predict(item["comparison_id"], choice, "", "", api_name="/label")
                except Exception:  # noqa: BLE001 (the server is gone: this client is done)
                    return
                with lock:  # only a returned submit counts as acknowledged
                    acknowledged.add((name, item["comparison_id"]))

        threads = [threading.Thread(target=label, args=(n, c)) for n, c in zip(names, clients, strict=True)]
        before = len(acknowledged)
        for thread in threads:
            thread.start()
        # The kill comes while labels are flowing: after the run's first acknowledged label (the app and its
        # clients take seconds to warm up under load), then the run's own delay.
        deadline = time.monotonic() + 180
        while len(acknowledged) == before and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        time.sleep(kill_after)
        os.kill(app.process.pid, signal.SIGKILL)
        app.process.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        stored = _labels(db_url)
        store = Store(db_url)
        if store.is_sqlite:  # PostgreSQL checks its own pages (WAL replay at restart)
            connection = sqlite3.connect(store.sqlite_path)
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            connection.close()
        store.dispose()
        assert len(stored) == len(set(stored)), "a label was stored twice"
        per_comparison = [c for _, c in stored]
        assert len(per_comparison) == len(set(per_comparison)), "a comparison got two labels with overlap 1"
        lost = acknowledged - set(stored)
        assert len(acknowledged) > before, f"kill run {run + 1} acknowledged no label: it checked nothing"
        assert not lost, f"acknowledged labels missing after the kill: {sorted(lost)[:10]}"
        summary.append((run + 1, kill_after, len(acknowledged) - before, len(stored)))

    # After the last kill the queue carries on.
    app = start_app(db_url, tmp_path / "final.log", "--no-demo")
    try:
        client = Client(app.url, auth=(names[0], PASSWORD), verbose=False)
        item = client.predict(api_name="/next")
        assert client.predict(item["comparison_id"], "tie", "", "", api_name="/label")["changed"] is True
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
    with capsys.disabled():
        for run, kill_after, new, total in summary:
            print(f"\ncrash run {run}: SIGKILL after {kill_after}s, {new} labels acknowledged in the run, "
                  f"{total} stored in all, lost 0")
        print(f"crash safety: {len(summary)} kills, {len(acknowledged)} acknowledged labels, lost 0, duplicates 0")
