"""Starting the web app: open the store, load the demo data into an empty one, launch Gradio."""

from __future__ import annotations

import os

# Before gradio is imported: no usage analytics leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue recomputes its per-endpoint latency summary (a pandas groupby over up to 10,000
# recorded events) after every event by default, which the load test (bench/load_test.py) found to
# be a fifth of the server's CPU under load. The summary only feeds the "View API" page's figures;
# refresh it every 500 events over the last 2,000. https://github.com/gradio-app/gradio/pull/11764
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")

import subprocess  # noqa: E402
import sys  # noqa: E402

import anyio  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from app.http_guard import RequestGuard  # noqa: E402
from core.accounts import accounts_exist, authenticate, operator_actor, unknown_name_hash  # noqa: E402
from core.loopback import is_loopback  # noqa: E402
from core.data.demo_data import load_demo_data_if_empty  # noqa: E402
from core.limits import DEFAULT_MAX_UPLOAD_MB  # noqa: E402
from core.model_folders import model_folder  # noqa: E402
from core.scoring.inspection import registered_models  # noqa: E402
from core.training.demo_model import DEMO_MODEL_NAME  # noqa: E402
from core.jobs.scheduling import PROJECT_ROOT, JobScheduler, recover_orphaned_jobs, worker_environment  # noqa: E402
from storage.engine import Store  # noqa: E402


# Gradio's queue looks for new events every 1 ms while it has none, and for progress to send every 10 ms
# (gradio/queueing.py, Queue.__init__: sleep_when_free, progress_update_sleep_when_free, on every platform but
# Windows): an idle app spent ~0.1 CPU-s every second on it (measured: 0.54 CPU-s per 5 idle s; 0.27 with the
# values below) on a machine that also trains. 5 ms and 50 ms keep a click's wait for its handler to start below
# what anyone sees and a progress bar smooth. (Gradio once busy-looped outright: gradio-app/gradio#228)
QUEUE_IDLE_POLL_SECONDS = 0.005
QUEUE_PROGRESS_POLL_SECONDS = 0.05


class UnsafeListenAddress(RuntimeError):
    pass


def start_demo_model_training(store: Store) -> None:
    """With no reward model registered, train the offline demo model in a child process, so the
    Inspect tab has a model a minute after a fresh start (the page does not wait for it)."""
    if registered_models(store, operator_actor(store)):
        return
    out = model_folder(store, DEMO_MODEL_NAME)
    log = open(store.data_dir / "demo-model.log", "w")  # noqa: SIM115 (the child writes to it)
    subprocess.Popen(
        [sys.executable, "-m", "core.training.demo_model", "--out", str(out), "--parent-pid", str(os.getpid())],
        cwd=PROJECT_ROOT, env=worker_environment(store), stdout=log, stderr=subprocess.STDOUT,
    )
    print(f"training the demo reward model in the background (log: {log.name})")


def login_check(store: Store):  # noqa: ANN201
    """Gradio's ``auth`` callable, run off the event loop: Argon2 verification takes ~100 ms of CPU,
    and a synchronous check would stall every user's page for that long per attempt."""

    async def check(name: str, password: str) -> bool:
        return await anyio.to_thread.run_sync(authenticate, store, name, password)

    unknown_name_hash()  # made now, so the first unknown name takes as long as any other check
    return check


def serve(*, db_url: str | None, host: str, port: int, load_demo: bool,
          max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB) -> None:
    """Serve the app. Raises ``UnsafeListenAddress`` for a non-loopback host without accounts."""
    # Everything this process writes (the store's files, exports, Gradio's copies of them, models) is for
    # its own user: other local users cannot read labels, password hashes or exports.
    os.umask(0o077)
    if ":" in host.strip("[]"):
        # Gradio 6.31 builds its own start-up URL as http://HOST:PORT/ without brackets, so an IPv6 literal
        # crashes its launch ("Invalid port: ':1:7860'"): refuse it with the way round instead.
        raise UnsafeListenAddress(
            f"the web app cannot listen on the IPv6 address {host} (Gradio builds http://{host}:PORT without the "
            "brackets an IPv6 URL needs); listen on 127.0.0.1 (or 0.0.0.0 with accounts) and put a reverse proxy in "
            "front for IPv6. The reward server (serve-rm) listens on IPv6 as it is.")
    store = Store(db_url)
    # Models, job folders and logs live here; on PostgreSQL it is ./data, which may not exist yet.
    store.data_dir.mkdir(parents=True, exist_ok=True)
    # Gradio copies every file it serves into its cache, by default a world-listable folder in /tmp:
    # a private one beside the store instead (read by Gradio when it is imported, just below).
    cache = store.data_dir / "gradio-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    cache.chmod(0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(cache.resolve())

    from app.label_tab import shortcuts_script
    from app.rendering import LABEL_CSS
    from app.ui import build_ui
    with_logins = accounts_exist(store)
    if not with_logins and not is_loopback(host):
        raise UnsafeListenAddress(
            f"refusing to listen on {host}: without user accounts anyone who reaches the port would act as the "
            "admin. Add an account first (python app.py adduser NAME --role admin), or listen on 127.0.0.1."
        )
    if load_demo and load_demo_data_if_empty(store):
        print(f"loaded the demo dataset into the empty store {store.display_url}")
    if load_demo:
        start_demo_model_training(store)
    interrupted = recover_orphaned_jobs(store, operator_actor(store))
    if interrupted:
        print(f"marked interrupted (their process is gone): jobs {interrupted}; resume them from the Train tab")
    JobScheduler(store).start()
    print(f"RewardLab store: {store.display_url}")
    print("logins required (user accounts exist)" if with_logins else
          "no user accounts: single local user on this machine; add one with `python app.py adduser` and restart")
    blocks = build_ui(store)
    blocks.queue(default_concurrency_limit=8)
    blocks._queue.sleep_when_free = QUEUE_IDLE_POLL_SECONDS
    blocks._queue.progress_update_sleep_when_free = QUEUE_PROGRESS_POLL_SECONDS
    blocks.launch(
        server_name=host,
        server_port=port,
        auth=login_check(store) if with_logins else None,
        auth_message="RewardLab: log in with the account an admin created for you.",
        ssr_mode=False,
        # Unexpected errors show as a plain "Error" (the detail goes to the server log); the errors
        # meant for users are returned as messages by each handler.
        show_error=False,
        max_file_size=f"{max_upload_mb}mb",
        app_kwargs={"middleware": [Middleware(RequestGuard, store=store if with_logins else None)]},
        footer_links=[],
        # Gradio's run history keeps every call's inputs and results in the browser (labels and completions on
        # a shared annotator machine) and lets a user send future runs to a Hugging Face bucket: off.
        run_history=False,
        enable_monitoring=False,
        css=LABEL_CSS,
        head=shortcuts_script(),
    )
