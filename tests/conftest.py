"""Shared fixtures: a temporary store per test, the real server in a child process, Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.engine import Store

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
HH_RLHF_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# The storage and API tests run twice in CI: on a SQLite file, and on a real PostgreSQL server when
# REWARDLAB_TEST_POSTGRES names one (scripts/test.sh starts it with scripts/postgres.sh). Each test
# then gets a database of its own, copied from a template that is migrated once per session.
TEST_POSTGRES_ENV = "REWARDLAB_TEST_POSTGRES"


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if os.environ.get(TEST_POSTGRES_ENV):
        # Tests of SQLite's own mechanics (WAL, BEGIN IMMEDIATE, the online backup API, the file)
        # ran in the SQLite pass; on PostgreSQL they are not run rather than reported as skipped.
        kept = [item for item in items if item.get_closest_marker("sqlite_only") is None]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def postgres_template() -> str | None:
    server = os.environ.get(TEST_POSTGRES_ENV)
    if not server:
        yield None
        return
    name = f"rewardlab_template_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    Store(make_url(server).set(database=name).render_as_string(hide_password=False)).dispose()
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db_url(tmp_path: Path, postgres_template: str | None) -> str:
    server = os.environ.get(TEST_POSTGRES_ENV)
    if not server:
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = f"rewardlab_test_{os.getpid()}_{tmp_path.name}".lower()[:63]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def store(db_url: str) -> Store:
    opened = Store(db_url)
    yield opened
    opened.dispose()


def run_cli(*args: str, db_url: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python app.py ARGS --db URL`` as a user would, from the project root."""
    return subprocess.run(
        [sys.executable, "app.py", *args, "--db", db_url],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningApp:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process, self.url, self.log_path = process, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_app(db_url: str, log_path: Path, *extra: str) -> RunningApp:
    port = _free_port()
    log = open(log_path, "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "serve", "--db", db_url, "--port", str(port), *extra],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    app = RunningApp(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{app.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return app
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the app did not start within 90 s:\n{app.log()}")


@pytest.fixture
def running_app(db_url: str, tmp_path: Path) -> RunningApp:
    app = start_app(db_url, tmp_path / "app.log")
    yield app
    app.process.terminate()
    try:
        app.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        app.process.kill()


@pytest.fixture(scope="session")
def chromium():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (the README's test command does)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, tmp_path: Path):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    yield opened
    context.close()


def save_screenshot(page, name: str) -> None:  # noqa: ANN001
    """Keep a screenshot when REWARDLAB_SCREENSHOTS names a folder (for a human to look at)."""
    folder = os.environ.get("REWARDLAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
