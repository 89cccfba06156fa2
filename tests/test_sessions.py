"""Sessions, logins and files under attack (round 3): sessions live in the store (a restart logs nobody out;
a password reset, a role change or a disable ends them), logout is a POST, an event's result belongs to the
user who started it, a login flood waits for a bounded number of password checks, and files are private.

Oracles: SQL on the store, HTTP status codes of the running app, the OS's file modes and the app process's
RSS (psutil), and Gradio's own route table.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import stat
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import add_users, run_cli, setup_cli, sql, start_app

from core.accounts import AccountError, add_user, change_role, disable_account, operator_actor, set_password
from core.sessions import session_user, start_session
from storage.engine import Store

PASSWORD = "correct horse battery"


def _open_sessions(store: Store, name: str) -> int:
    return sql(store, "SELECT count(*) FROM login_session JOIN \"user\" ON \"user\".id = login_session.user_id "
                      f"WHERE \"user\".name = '{name}' AND login_session.ended_at IS NULL")[0][0]


def test_a_password_reset_a_role_change_and_a_disable_each_end_the_users_open_sessions(store):
    add_user(store, "ann", "annotator", PASSWORD)
    add_user(store, "boss", "admin", PASSWORD)
    admin = operator_actor(store)
    for change in (lambda: set_password(store, admin, "ann", "another password"),
                   lambda: change_role(store, admin, "ann", "engineer"),
                   lambda: disable_account(store, admin, "ann")):
        second_browser = uuid.uuid4().hex
        start_session(store, "ann", uuid.uuid4().hex)
        start_session(store, "ann", second_browser)
        start_session(store, "boss", uuid.uuid4().hex)
        assert session_user(store, second_browser) == "ann"
        assert _open_sessions(store, "ann") == 2
        change()
        assert _open_sessions(store, "ann") == 0
        assert session_user(store, second_browser) is None
        assert _open_sessions(store, "boss") >= 1  # nobody else was logged out


def test_the_store_keeps_only_a_hash_of_each_session_token(store):
    add_user(store, "ann", "annotator", PASSWORD)
    token = "a-secret-token-" + uuid.uuid4().hex
    start_session(store, "ann", token)
    stored = [row[0] for row in sql(store, "SELECT token_hash FROM login_session")]
    assert len(stored) == 1 and token not in stored[0] and len(stored[0]) == 64
    if store.is_sqlite:
        store.dispose()
        assert token.encode() not in b"".join(p.read_bytes() for p in store.sqlite_path.parent.glob("store.db*"))


def test_login_names_are_unique_whatever_their_case(store):
    add_user(store, "Adm", "admin", PASSWORD)
    with pytest.raises(AccountError, match="differing only in case"):
        add_user(store, "adm", "annotator", PASSWORD)
    with pytest.raises(AccountError, match="already exists"):
        add_user(store, "Adm", "annotator", PASSWORD)
    assert sql(store, "SELECT count(*) FROM \"user\" WHERE lower(name) = 'adm'") == [(1,)]


def test_a_huge_password_is_refused_before_it_is_hashed(store):
    with pytest.raises(AccountError, match="longer than 1,024"):
        add_user(store, "ann", "annotator", "x" * 1_000_000)
    assert sql(store, "SELECT count(*) FROM \"user\" WHERE name = 'ann'") == [(0,)]


@pytest.mark.sqlite_only
def test_a_new_store_file_and_its_folder_are_private_to_their_owner(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'fresh' / 'rewardlab.db'}")
    with opened.write() as session:
        session.execute(__import__("sqlalchemy").text("SELECT 1"))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "fresh").iterdir()}
    opened.dispose()
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    assert modes["rewardlab.db"] == 0o600
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


def test_ipv6_clients_are_throttled_by_their_64_and_ipv4_by_address():
    from app.http_guard import client_bucket

    assert client_bucket("2001:db8:1:2::1") == client_bucket("2001:db8:1:2:ffff:ffff:ffff:fffe") == "2001:db8:1:2::/64"
    assert client_bucket("2001:db8:1:3::1") != client_bucket("2001:db8:1:2::1")
    assert client_bucket("::ffff:10.0.0.7") == client_bucket("10.0.0.7") == "10.0.0.7"
    assert client_bucket("10.0.0.8") != client_bucket("10.0.0.7")


def test_every_gradio_route_that_names_an_event_or_a_session_is_guarded(store):
    """Gradio's own route table is the oracle: a route added by an upgrade that names an event or a session in
    its path fails here until the guard checks its owner."""
    from gradio.routes import App

    from app.http_guard import GUARDED_ROUTES
    from app.ui import build_ui

    app = App.create_app(build_ui(store))
    prefix = "/gradio_api"

    def paths(routes) -> list[str]:  # noqa: ANN001  (Gradio includes its API router: walk into it)
        found = []
        for route in routes:
            found.append(getattr(route, "path", None) or "")
            included = getattr(route, "original_router", None)
            found += paths(included.routes) if included is not None else []
        return found

    naming = {path.removeprefix(prefix) for path in paths(app.router.routes)
              if "{event_id}" in path or "{session_hash}" in path}
    naming = {path.rstrip("/") for path in naming}
    assert naming, "no route names an event: the enumeration itself is broken"
    assert naming - set(GUARDED_ROUTES) == set()


# ----- the running app


@pytest.fixture(scope="module")
def sessions_app(tmp_path_factory, module_db_url):
    folder = tmp_path_factory.mktemp("sessions-app")
    add_users(module_db_url, {"boss": "admin", "ann": "annotator", "bob": "annotator", "cid": "annotator",
                              "eve": "engineer"}, PASSWORD)
    rows = [{"prompt": f"Q{i}?", "completions": [f"a{i}", f"b{i}"]} for i in range(6)]
    (folder / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert setup_cli("import", str(folder / "c.jsonl"), db_url=module_db_url).returncode == 0
    holder = {"app": start_app(module_db_url, folder / "app.log", "--no-demo"), "folder": folder, "db": module_db_url}
    yield holder
    holder["app"].process.terminate()
    holder["app"].process.wait(timeout=10)


def _client(app, name: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=app.url, timeout=60)
    assert client.post("/login", data={"username": name, "password": password}).status_code == 200
    return client


@pytest.mark.slow
@pytest.mark.postgres
def test_a_session_survives_a_restart_of_the_app(sessions_app):
    app = sessions_app["app"]
    ann = _client(app, "ann")
    assert ann.get("/config").status_code == 200
    app.process.terminate()
    app.process.wait(timeout=10)
    sessions_app["app"] = start_app(sessions_app["db"], sessions_app["folder"] / "app2.log", "--no-demo")
    again = httpx.Client(base_url=sessions_app["app"].url, timeout=60, cookies=ann.cookies)
    assert again.get("/config").status_code == 200  # the same cookie, a new process


@pytest.mark.slow
@pytest.mark.postgres
def test_passwd_on_the_command_line_logs_the_user_out_of_the_running_app(sessions_app):
    app = sessions_app["app"]
    bob = _client(app, "bob")
    assert bob.get("/config").status_code == 200
    done = run_cli("passwd", "bob", db_url=sessions_app["db"], stdin="bob's new password\n")
    assert done.returncode == 0, done.stderr
    assert bob.get("/config").status_code == 401  # the next request: logged out
    assert _client(app, "bob", "bob's new password").get("/config").status_code == 200


@pytest.mark.slow
@pytest.mark.postgres
def test_logout_is_a_post_from_the_page_and_a_get_or_another_sites_post_is_refused(sessions_app):
    app = sessions_app["app"]
    ann = _client(app, "ann")
    assert ann.get("/logout").status_code == 405  # an <img src=.../logout> elsewhere logs nobody out
    assert ann.get("/config").status_code == 200
    refused = ann.post("/logout", headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    assert ann.get("/config").status_code == 200
    done = ann.post("/logout", headers={"Origin": app.url, "Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 303
    assert httpx.Client(base_url=app.url, cookies=ann.cookies).get("/config").status_code == 401


@pytest.mark.slow
@pytest.mark.postgres
def test_another_user_cannot_read_or_cancel_an_event_by_its_id(sessions_app):
    app = sessions_app["app"]
    ann, cid = _client(app, "ann"), _client(app, "cid")  # bob's password changed above
    started = ann.post("/gradio_api/call/next", json={"data": []})
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    assert cid.get(f"/gradio_api/call/next/{event_id}").status_code == 403
    assert cid.post("/gradio_api/cancel", json={"session_hash": "cids", "fn_index": 0,
                                                "event_id": event_id}).status_code == 403
    assert cid.get(f"/gradio_api/call/next/{uuid.uuid4().hex}").status_code == 404
    with ann.stream("GET", f"/gradio_api/call/next/{event_id}") as stream:
        assert stream.status_code == 200
        body = "".join(stream.iter_lines())
    assert "complete" in body and "comparison_id" in body  # ann still reads her own result


@pytest.mark.slow
@pytest.mark.postgres
def test_an_annotator_cannot_fetch_files_from_the_apps_cache(sessions_app):
    app = sessions_app["app"]
    cache = Path(Store(sessions_app["db"], create=False).data_dir) / "gradio-cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700  # the cache is private on disk too
    cached = cache / uuid.uuid4().hex / "export.zip"  # as Gradio caches an export it serves
    cached.parent.mkdir()
    cached.write_bytes(b"PK labels")
    ann, eve = _client(app, "ann"), _client(app, "eve")
    refused = ann.get(f"/gradio_api/file={cached}")
    assert refused.status_code == 403 and "may export" in refused.text
    assert eve.get(f"/gradio_api/file={cached}").content == b"PK labels"


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_correct_logins_at_once_from_one_office_address_all_succeed(sessions_app):
    app = sessions_app["app"]

    def log_in(_: int) -> int:
        with httpx.Client(base_url=app.url, timeout=120) as client:
            return client.post("/login", data={"username": "eve", "password": PASSWORD},
                               headers={"X-Forwarded-For": "198.51.100.20"}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(log_in, range(8))) == [200] * 8


@pytest.mark.slow
@pytest.mark.postgres
def test_a_login_flood_from_fresh_addresses_and_names_keeps_the_apps_memory_bounded(sessions_app):
    """32 guessers at once, each with a fresh X-Forwarded-For (trusted from loopback) and a fresh user name: before
    the bound on concurrent password checks the app grew ~64 MiB per check in flight (460 -> 2,574 MiB)."""
    app = sessions_app["app"]
    process = psutil.Process(app.process.pid)
    ann = _client(app, "ann")
    before = process.memory_info().rss
    latencies: list[float] = []

    def guess(index: int) -> int:
        with httpx.Client(base_url=app.url, timeout=120) as client:
            return client.post("/login", data={"username": f"nobody{index}-{uuid.uuid4().hex[:6]}", "password": "guess"},
                               headers={"X-Forwarded-For": f"203.0.113.{index % 250}"}).status_code

    def user_request() -> None:
        start = time.monotonic()
        assert ann.get("/config").status_code == 200
        latencies.append(time.monotonic() - start)

    peak = before
    with concurrent.futures.ThreadPoolExecutor(33) as pool:
        guesses = [pool.submit(guess, i) for i in range(64)]
        while not all(g.done() for g in guesses):
            user_request()
            peak = max(peak, process.memory_info().rss)
        codes = [g.result() for g in guesses]
    grown = (peak - before) / 2**20
    print(f"RSS {before / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB; statuses {sorted(set(codes))}; "
          f"logged-in requests p50 {sorted(latencies)[len(latencies) // 2]:.3f} s, max {max(latencies):.3f} s")
    assert set(codes) <= {400, 429, 503}
    assert grown < 400, f"the app grew {grown:.0f} MiB during the flood"


@pytest.mark.slow
@pytest.mark.postgres
def test_an_api_parameter_with_a_default_may_be_left_out_and_a_refusal_says_why(sessions_app):
    """Gradio's call API filled no defaults: `/label` with (comparison_id, choice) ended in an "error" event
    with data null. Now the defaults are filled, and a missing required value is refused with its name."""
    app = sessions_app["app"]
    cid = _client(app, "cid")
    item = cid.post("/gradio_api/call/next", json={"data": []}).json()["event_id"]
    with cid.stream("GET", f"/gradio_api/call/next/{item}") as stream:
        body = "".join(stream.iter_lines())
    comparison_id = json.loads(body.split("data:", 2)[-1])[0]["comparison_id"]
    started = cid.post("/gradio_api/call/label", json={"data": [comparison_id, "a"]})
    assert started.status_code == 200, started.text
    with cid.stream("GET", f"/gradio_api/call/label/{started.json()['event_id']}") as stream:
        body = "".join(stream.iter_lines())
    assert "complete" in body and "label_id" in body, body
    refused = cid.post("/gradio_api/call/rank", json={"data": [comparison_id]})
    assert refused.status_code == 400 and "give groups" in refused.json()["detail"]
    too_many = cid.post("/gradio_api/call/next", json={"data": [1, 2]})
    assert too_many.status_code == 400 and "takes 0 values" in too_many.json()["detail"]
