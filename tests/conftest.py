"""Shared fixtures: a temporary store per test, the real server in a child process, Chromium."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

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
# then gets a database of its own in the state of a template migrated once per session (database_url).
TEST_POSTGRES_ENV = "REWARDLAB_TEST_POSTGRES"


STORE_FIXTURES = frozenset({"db_url", "store", "module_db_url"})


def runs_on_postgres(item) -> bool:  # noqa: ANN001
    """The PostgreSQL pass, chosen by what a test uses rather than a list of files: every test that opens a
    store (one of ``STORE_FIXTURES``, directly or through another fixture), unless it tests SQLite's own
    mechanics (``sqlite_only``); of the slow ones (training, browsers), those marked ``postgres`` (their point
    is the store: concurrency, crash safety, sessions), so the pass fits CI's budget."""
    if item.get_closest_marker("sqlite_only") is not None:
        return False
    if not STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return False
    return item.get_closest_marker("slow") is None or item.get_closest_marker("postgres") is not None


# CI runs the SQLite tests in two pytest processes that share them file by file (scripts/test.sh): one goes
# through the files from the first, the other (after the PostgreSQL pass) from the last, and each runs a file only
# if it is the first to claim it in the folder named here, so the two meet wherever the work balances.
SHARED_FILES_ENV = "REWARDLAB_TEST_SHARED_FILES"
SHARED_FILES_FROM_END_ENV = "REWARDLAB_TEST_SHARED_FILES_FROM_END"


def claim_name(nodeid: str) -> str:
    """The claim folder's entry for the test file of ``nodeid`` (tests/test_x.py -> tests__test_x.py)."""
    return nodeid.split("::")[0].replace("/", "__")


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if os.environ.get(TEST_POSTGRES_ENV):
        kept = [item for item in items if runs_on_postgres(item)]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    elif os.environ.get(SHARED_FILES_ENV) and os.environ.get(SHARED_FILES_FROM_END_ENV):
        files = list(dict.fromkeys(claim_name(item.nodeid) for item in items))
        position = {name: index for index, name in enumerate(reversed(files))}
        items.sort(key=lambda item: position[claim_name(item.nodeid)])  # stable: a file keeps its own order


_claims: dict[str, bool] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ANN001, ARG001
    """With ``SHARED_FILES_ENV`` set, a file the other process claimed first is left to it: its tests are
    neither run nor reported here (that process reports them)."""
    folder = os.environ.get(SHARED_FILES_ENV)
    if not folder or os.environ.get(TEST_POSTGRES_ENV):
        return None
    name = claim_name(item.nodeid)
    if name not in _claims:
        try:
            os.mkdir(Path(folder) / name)  # atomic: exactly one process creates it
            _claims[name] = True
        except FileExistsError:
            _claims[name] = False
    return None if _claims[name] else True


@pytest.fixture(autouse=True, scope="session")
def _cheapest_password_hashes_in_this_process() -> None:
    """Accounts a test makes in this process (``add_user``, ``add_users``) are hashed with argon2-cffi's
    ``CHEAPEST`` parameters, meant for tests: the real ones cost ~0.3 CPU-s a hash and as much a login, and
    tests/test_permissions.py alone makes 130 accounts a pass. A stored hash carries its parameters, so the apps
    the tests start check these logins cheaply too, while every account they or the commands make
    (``run_cli("adduser")``, the Users tab) gets the real parameters, which tests/test_accounts_admin.py reads back
    from the store. Django's test docs advise the same:
    https://docs.djangoproject.com/en/stable/topics/testing/overview/#password-hashing"""
    from argon2 import PasswordHasher, profiles

    import core.accounts

    real = core.accounts._hasher
    core.accounts._hasher = PasswordHasher.from_parameters(profiles.CHEAPEST)
    yield
    core.accounts._hasher = real


@pytest.fixture(autouse=True, scope="session")
def _one_job_forker_across_tests() -> None:
    """Jobs this process starts (``start_next_job``) are forked from one warm forker for the whole session, as in
    an app: pytest sets ``PYTEST_CURRENT_TEST`` anew for every test, and the forker would start over (~9 CPU-s of
    imports) whenever a variable changed, so that one is passed per job like the store's URL; nothing reads it at
    import. Every other change (a test's ``monkeypatch.setenv``) still starts a new forker."""
    from core.jobs import scheduling

    real = scheduling.JOB_FORKER.per_job_variables
    scheduling.JOB_FORKER.per_job_variables = real | {"PYTEST_CURRENT_TEST"}
    yield
    scheduling.JOB_FORKER.per_job_variables = real


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
        for pooled in [*_POOLED_DATABASES, name]:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{pooled}" WITH (FORCE)'))
    _POOLED_DATABASES.clear()
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path | None:  # noqa: ANN001
    """A SQLite store migrated to the newest schema once per session (the migrations take ~1 s, and
    some 450 tests open a store): each test gets a byte copy, which ``Store`` finds already at head.
    None in the PostgreSQL pass, whose stores come from ``postgres_template``."""
    if os.environ.get(TEST_POSTGRES_ENV):
        return None
    path = tmp_path_factory.mktemp("sqlite-template") / "store.db"
    Store(f"sqlite:///{path}").dispose()  # the last connection closed: the WAL is checkpointed into the file
    return path


# The PostgreSQL pass hands each test a database from a pool of this process's: a database is copied from the
# template once, and after each test emptied back to the template's state (every row deleted, every sequence
# restarted) when its schema is still the template's, else dropped. Copying and dropping a database per test cost
# the server ~0.25 CPU-s a test (CREATE DATABASE ... TEMPLATE writes the whole catalog to the WAL, and a new
# database's first connections build their catalog caches from scratch); emptying one, ~0.03 CPU-s.
_POOLED_DATABASES: list[str] = []
_SCHEMA_FINGERPRINT = text("""
    SELECT md5(coalesce(string_agg(item, ',' ORDER BY item), '')) FROM (
        SELECT 'r:' || c.relname || ':' || c.relkind::text || ':' || coalesce(a.attname::text, '') || ':' || coalesce(a.atttypid::text, '')
               || ':' || coalesce(a.attnotnull::text, '') AS item
        FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relnamespace = 'public'::regnamespace
        UNION ALL SELECT 'i:' || indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL SELECT 'c:' || conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint
                  WHERE connamespace = 'public'::regnamespace
        UNION ALL SELECT 't:' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                  WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
        UNION ALL SELECT 'f:' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        UNION ALL SELECT 'v:' || version_num FROM alembic_version
    ) AS items""")


def _schema_fingerprint(url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(_SCHEMA_FINGERPRINT).scalar_one()
    finally:
        engine.dispose()


@functools.lru_cache(maxsize=None)
def _template_fingerprint(server: str, template: str) -> str:
    return _schema_fingerprint(make_url(server).set(database=template).render_as_string(hide_password=False))


def _empty_back_to_template(server: str, template: str, name: str) -> bool:
    """Delete every row (but alembic_version's) and restart every sequence of database ``name`` if its schema is
    the template's (True); False, with nothing changed, when a test altered the schema."""
    expected = _template_fingerprint(server, template)
    engine = create_engine(make_url(server).set(database=name).render_as_string(hide_password=False), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if connection.execute(_SCHEMA_FINGERPRINT).scalar_one() != expected:
                return False
            tables = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                             "AND tablename <> 'alembic_version'")).scalars().all()
            sequences = connection.execute(text("SELECT sequencename FROM pg_sequences "
                                                "WHERE schemaname = 'public'")).scalars().all()
            connection.execute(text("SET LOCAL session_replication_role = replica"))  # no foreign-key order to follow
            for table in tables:
                connection.execute(text(f'DELETE FROM "{table}"'))
            for sequence in sequences:
                connection.execute(text(f'ALTER SEQUENCE "{sequence}" RESTART'))
    finally:
        engine.dispose()
    return True


@contextmanager
def database_url(folder: Path, postgres_template: str | None, label: str, sqlite_template: Path | None = None):  # noqa: ANN201
    """A fresh store URL: a SQLite file in ``folder`` (a copy of the migrated template when given), or, in
    the PostgreSQL pass, a database in the state of the migrated template (from the pool above)."""
    server = os.environ.get(TEST_POSTGRES_ENV)
    if not server:
        path = folder / "store.db"
        if sqlite_template is not None:
            shutil.copyfile(sqlite_template, path)
            path.chmod(0o600)  # as Store creates it: the store holds password hashes
        yield f"sqlite:///{path}"
        return
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    if _POOLED_DATABASES:
        name = _POOLED_DATABASES.pop()
    else:
        name = f"rewardlab_test_{os.getpid()}_{label}".lower()[:63]
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # Whatever the test left connected (an app it killed, a pool it did not dispose) goes first, and is
            # gone (a terminated backend ends its transaction) before the rows are deleted.
            others = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name "
                          "AND pid <> pg_backend_pid()")
            deadline = time.monotonic() + 30
            while (still_connected := connection.execute(others, {"name": name}).first() is not None) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        # A database something still holds after 30 s is dropped (FORCE) rather than emptied under it.
        if not still_connected and _empty_back_to_template(server, postgres_template, name):
            _POOLED_DATABASES.append(name)
        else:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _record_database(node, url: str) -> None:  # noqa: ANN001
    node.user_properties.append(("database", make_url(url).get_backend_name()))


@pytest.fixture
def db_url(tmp_path: Path, postgres_template: str | None, sqlite_template: Path | None, request,  # noqa: ANN001
           monkeypatch) -> str:  # noqa: ANN001
    # A PostgreSQL store keeps its files (models, jobs, downloads) in $REWARDLAB_DATA_DIR: the test's own.
    monkeypatch.setenv("REWARDLAB_DATA_DIR", str(tmp_path / "data"))
    with database_url(tmp_path, postgres_template, tmp_path.name, sqlite_template) as url:
        _record_database(request.node, url)
        yield url


@pytest.fixture(scope="module")
def module_db_url(tmp_path_factory, postgres_template: str | None, sqlite_template: Path | None,  # noqa: ANN001
                  request) -> str:  # noqa: ANN001
    """One store URL shared by a module's tests (for fixtures that start an app once)."""
    folder = tmp_path_factory.mktemp("module-store")
    with database_url(folder, postgres_template, f"m_{folder.name}", sqlite_template) as url:
        yield url


@pytest.fixture(autouse=True)
def _database_of_module_stores(request) -> None:  # noqa: ANN001
    if "module_db_url" in request.fixturenames:
        _record_database(request.node, request.getfixturevalue("module_db_url"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001
    """Which database each test ran on: the PostgreSQL pass must really run on PostgreSQL."""
    counts: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) == "call":
                backend = dict(getattr(report, "user_properties", ())).get("database", "no store")
                counts[backend] = counts.get(backend, 0) + 1
    if counts:
        terminalreporter.write_line("tests by database: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    left = sorted(name for name, ours in _claims.items() if not ours)
    if left:
        terminalreporter.write_line(f"{len(left)} test files ran in the other process (claimed first there): "
                                    + ", ".join(name.replace("__", "/") for name in left))
    _write_time_per_file(terminalreporter)


def _write_time_per_file(terminalreporter) -> None:  # noqa: ANN001
    """Where CI's time goes: seconds per test file (setup, call and teardown; module fixtures land on
    the first test that uses them), largest first, so a file that grew is seen in every run."""
    seconds: dict[str, float] = {}
    tests: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            duration, nodeid = getattr(report, "duration", None), getattr(report, "nodeid", "")
            if duration is None or not nodeid:
                continue
            path = nodeid.split("::")[0]
            seconds[path] = seconds.get(path, 0.0) + duration
            if getattr(report, "when", None) == "call":
                tests[path] = tests.get(path, 0) + 1
    if not seconds:
        return
    terminalreporter.write_sep("-", f"time per test file ({sum(seconds.values()) / 60:.1f} min in all)")
    for path, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{spent:8.1f} s  {tests.get(path, 0):4d} tests  {path}")


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


@functools.cache
def _command_line():  # noqa: ANN202
    """app.py loaded as a module (its name clashes with the app/ package, hence by path)."""
    spec = importlib.util.spec_from_file_location("rewardlab_command_line", PROJECT_ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_cli(*args: str, db_url: str) -> subprocess.CompletedProcess:
    """``app.py ARGS --db URL`` for a test's setup (import, datasets), run in this process by the command's own
    ``main``: the same parsing and code as ``run_cli`` without a fresh interpreter's ~2.5 CPU-s. The commands'
    own tests (tests/test_import.py, tests/test_datasets.py, ...) run them as a user does, with ``run_cli``."""
    argv = [*args, "--db", db_url]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        returncode = _command_line().main(argv)
    return subprocess.CompletedProcess(["app.py", *argv], returncode, out.getvalue(), err.getvalue())


def add_users(db_url: str, roles: dict[str, str], password: str) -> None:
    """Accounts for a test's setup, made in this process by the function ``adduser`` calls (a process per
    account cost ~3 s of interpreter start each; tests/test_accounts_admin.py runs the command itself)."""
    from core.accounts import add_user

    store = Store(db_url)
    try:
        for name, role in roles.items():
            add_user(store, name, role, password)
    finally:
        store.dispose()


def run_worker_on_two_processes(db_url: str, job_id: int) -> subprocess.CompletedProcess:
    """Job ``job_id``'s worker launched as two ranks, ``python -m torch.distributed.run --nproc_per_node 2``
    (gloo on CPU, one thread each), as several GPUs run it."""
    env = {**os.environ, "REWARDLAB_DB": db_url, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "core.jobs.worker", "--job", str(job_id)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def run_app(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python app.py ARGS`` for the commands that take no store (score, eval)."""
    return subprocess.run([sys.executable, "app.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


_REPORT_PEAK_RSS = """
import resource, runpy, sys
sys.argv = ["app.py", *sys.argv[1:]]
try:
    runpy.run_path("app.py", run_name="__main__")
finally:
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run_app_measuring_peak_rss(*args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, int]:
    """``python app.py ARGS`` in a fresh process that reports its own peak RSS, returned in bytes: the
    OS's figure, an oracle independent of the code under test."""
    done = subprocess.run([sys.executable, "-c", _REPORT_PEAK_RSS, *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return done, int(done.stderr.rsplit("peak_rss_kib", 1)[1].split()[0]) * 1024


def sql(store: Store, statement: str) -> list:
    """Rows of a raw SQL statement on the store: the tests' oracle, independent of the code under test."""
    with store.read() as session:
        return session.execute(text(statement)).all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningApp:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process, self.url, self.log_path = process, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_app(db_url: str, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> RunningApp:
    port = _free_port()
    log = open(log_path, "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
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


@pytest.fixture(scope="session")
def trained_demo_model(tmp_path_factory) -> tuple[Path, dict[str, float]]:  # noqa: ANN001
    """The demo reward model exactly as a fresh app trains it (``train_demo_reward_model``), trained once per
    session (~25 CPU-s) and returned with its metrics: the apps the browser tests start get a registered copy
    (``install_demo_model``) instead of training one each in the background.
    tests/test_browser_inspect.py::test_inspect_a_demo_pair keeps the fresh start's own training."""
    from core.training.demo_model import DEMO_MODEL_NAME, train_demo_reward_model

    folder = tmp_path_factory.mktemp("demo-model") / DEMO_MODEL_NAME
    return folder, train_demo_reward_model(folder)


def install_demo_model(db_url: str, trained: tuple[Path, dict[str, float]]) -> None:
    """Copy the session's demo model into the store's models folder and register it, as the app's
    background training ends (``register_demo_model``)."""
    from core.model_folders import model_folder
    from core.training.demo_model import DEMO_MODEL_NAME, register_demo_model

    folder, metrics = trained
    store = Store(db_url)
    try:
        target = model_folder(store, DEMO_MODEL_NAME)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("run"))
        assert register_demo_model(store, target, metrics)
    finally:
        store.dispose()


def stop_app(app: RunningApp) -> None:
    app.process.terminate()
    try:
        app.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        app.process.kill()


@pytest.fixture
def running_app(db_url: str, tmp_path: Path, trained_demo_model) -> RunningApp:  # noqa: ANN001
    """The app as a user starts it (demo data, the demo model), on the test's store."""
    install_demo_model(db_url, trained_demo_model)
    app = start_app(db_url, tmp_path / "app.log")
    yield app
    stop_app(app)


@pytest.fixture
def fresh_app(db_url: str, tmp_path: Path) -> RunningApp:
    """The app's first start on an empty store: it loads the demo data and trains the demo model itself."""
    app = start_app(db_url, tmp_path / "app.log")
    yield app
    stop_app(app)


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
