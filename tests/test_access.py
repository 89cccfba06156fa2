"""Who can do what over HTTP: the public API per role, every private UI handler called directly
(Gradio's "private" hides an endpoint from clients but does not block a crafted request), and file
routes that must never serve the store, its WAL, model folders or anything outside allowed paths."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import add_users, run_cli, setup_cli, start_app
from sqlalchemy import text
from sqlalchemy.engine import make_url

# Slow (an app): of these, the tests whose point is the store (sessions read by every request) also run in the
# PostgreSQL pass; the rest check routes, headers and the handlers' role checks, which tests/test_permissions.py
# runs on PostgreSQL at the core level.
pytestmark = [pytest.mark.slow]
PASSWORD = "long enough pw"
ROLES = {"ann": "annotator", "eng": "engineer", "boss": "admin"}


@pytest.fixture(scope="module")
def secured_app(tmp_path_factory, module_db_url):
    db_url = module_db_url
    # The store's folder on SQLite; on PostgreSQL a folder of the test's, made the models folder.
    folder = Path(make_url(db_url).database).parent if db_url.startswith("sqlite") else tmp_path_factory.mktemp("access")
    rows = [{"prompt": f"P{i}", "completions": [f"x{i}", f"y{i}"]} for i in range(10)]
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": f"Q{i}? ", "chosen": " good", "rejected": " bad"} for i in range(4)]
    (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    for source in ("c.jsonl", "p.jsonl"):
        assert setup_cli("import", str(folder / source), db_url=db_url).returncode == 0
    add_users(db_url, ROLES, PASSWORD)
    (folder / "models" / "secret-model").mkdir(parents=True)
    (folder / "models" / "secret-model" / "config.json").write_text('{"secret": true}')
    from storage.engine import Store
    from storage.registry import register_model

    with Store(db_url).write() as session:  # registered, so the roles that may inspect see it listed
        register_model(session, name="secret-model", path=str(folder / "models" / "secret-model"))
    app = start_app(db_url, folder / "app.log", "--no-demo", "--max-upload-mb", "1",
                    env={"REWARDLAB_MODELS_ROOT": str(folder / "models")})
    app.folder, app.db_url = folder, db_url
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


def session_for(app, name: str | None) -> httpx.Client:  # noqa: ANN001
    client = httpx.Client(base_url=app.url, timeout=60)
    if name is not None:
        assert client.post("/login", data={"username": name, "password": PASSWORD}).status_code == 200
    return client


def handler_ids(client: httpx.Client) -> dict[str, int]:
    config = client.get("/config").json()
    return {dep["api_name"]: dep["id"] for dep in config["dependencies"] if dep.get("api_name")}


def call(client: httpx.Client, fn_id: int, data: list, headers: dict | None = None, event_data: dict | None = None) -> list:
    """Run one event the way the page does: join the queue, read the result stream."""
    session = uuid.uuid4().hex[:10]
    joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_id, "session_hash": session,
                                                          "event_data": event_data, "trigger_id": None}, headers=headers)
    assert joined.status_code == 200, joined.text
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message["output"].get("data") or [message["output"].get("error")]
    raise AssertionError("no result")


@pytest.mark.postgres
def test_the_public_api_is_next_next_in_dataset_label_and_rank_for_every_role_and_nobody_without_login(secured_app):
    from gradio_client import Client

    for name in ROLES:
        client = Client(secured_app.url, auth=(name, PASSWORD), verbose=False)
        assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {
            "/next", "/next_in_dataset", "/label", "/rank", "/label_steps"}
        assert client.predict(api_name="/next") is not None
    anonymous = session_for(secured_app, None)
    assert anonymous.get("/config").status_code in (401, 403)
    assert anonymous.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"}).status_code in (401, 403)


# Every handler the page lists, with the permission it needs (None: any logged-in user) and the input
# values that take it past its "fill in the form first" checks. A handler added to the page without
# an entry here fails the test: nothing reaches users unclassified.
HANDLER_PERMISSIONS = {
    "open_dataset_on_load": "LABEL", "open_dataset": "LABEL", "change_it_now": "LABEL", "keep_stored_label": "LABEL", "change_from_row_on_row": "LABEL",
    "label_left": "LABEL", "label_right": "LABEL", "label_tie": "LABEL", "label_both_bad": "LABEL",
    "label_skip": "LABEL", "undo_last_label": "LABEL", "change_label": "LABEL", "refresh_history": "LABEL",
    "next": "LABEL", "next_in_dataset": "LABEL", "label": "LABEL", "tabs_for_on_load": None, "demo_pair": None,
    "show_loop": "VIEW_TEAM", "show_loop_on_tab": "VIEW_TEAM", "evaluate_loop": "INSPECT",
    "save_loop_settings": "CHANGE_SETTINGS",
    "rank": "LABEL", "rank_from_screen": "LABEL", "rank_from_screen_on_submit": "LABEL", "skip_ranking": "LABEL",
    "label_steps": "LABEL", "submit_marks": "LABEL", "skip_trace": "LABEL",
    # the typed order of the places the caller has just clicked: reads nothing, writes nothing
    "order_from_places": None,
    "save_guidelines": "EDIT_GUIDELINES", "save_dataset_settings": "CHANGE_SETTINGS",
    "current_counts": "EXPORT", "current_counts_on_load": "EXPORT", "current_counts_on_tab": "EXPORT", "run_export": "EXPORT",
    "run_import": "IMPORT", "suggest_question": "IMPORT",
    "show_records": "VIEW_TEAM", "show_records_after_bulk_send_back": "VIEW_TEAM", "show_records_after_bulk_set_priority": "VIEW_TEAM", "show_records_after_bulk_archive": "VIEW_TEAM", "show_records_after_bulk_restore": "VIEW_TEAM",
    "show_records_after_save_my_label": "VIEW_TEAM", "open_row_on_row": "VIEW_TEAM", "bulk_send_back": "REQUEUE", "bulk_set_priority": "REQUEUE",
    "bulk_archive": "REQUEUE", "bulk_restore": "REQUEUE", "save_my_label": "LABEL",
    "select_whole_page": None, "clear_selection": None,  # echo the caller's own selection back; read nothing
    "pick_job_on_row": "TRAIN", "dataset_choices_on_load": "TRAIN", "dataset_choices_on_tab": "TRAIN",
    "show_jobs_on_load": "TRAIN", "show_jobs_on_timer": "TRAIN", "show_jobs": "TRAIN", "show_jobs_on_tab": "TRAIN", "preview_training": "TRAIN", "submit_job": "TRAIN",
    "cancel_job": "TRAIN", "resume_job": "TRAIN",
    "diagnosis_models_on_load": "INSPECT", "diagnosis_models_on_tab": "INSPECT", "inspect_models": "INSPECT", "inspect_models_on_load": "INSPECT", "inspect_models_on_tab": "INSPECT",
    "score": "INSPECT",
    "run_diagnosis": "INSPECT", "from_store": "INSPECT",
    "fit_competence": "VIEW_TEAM", "show_last_competence": "VIEW_TEAM", "save_competence_refit": "CHANGE_SETTINGS",
    "send_back": "REQUEUE", "show_team": "VIEW_TEAM", "show_team_for_dataset": "VIEW_TEAM", "show_team_on_tab": "VIEW_TEAM",
    "save_inspect_setting": "CHANGE_SETTINGS",
    "cancel_scoring": None, "cancel_diagnosis": None,  # only ever stop the caller's own session's work
    "show_users_on_open": "MANAGE_USERS", "add_account": "MANAGE_USERS", "change_account_role": "MANAGE_USERS",
    "reset_account_password": "MANAGE_USERS", "disable_login": "MANAGE_USERS", "enable_login": "MANAGE_USERS",
}
# A click on the first row of a table, as the browser sends it with a .select event.
ROW_CLICK = {"index": [0, 0], "value": 1, "row_value": [1], "col_value": [1], "selected": True}
EVENT_DATA = {"open_row_on_row": ROW_CLICK, "change_from_row_on_row": ROW_CLICK, "pick_job_on_row": ROW_CLICK}
ACCOUNT_HANDLERS = {h for h, p in HANDLER_PERMISSIONS.items() if p == "MANAGE_USERS"}
INPUT_OVERRIDES = {  # (component label or type, value)
    "change_label": {"number": 1}, "from_store": {"number": 1}, "send_back": {"textbox": "1, 2"},
    "save_inspect_setting": {"checkbox": False}, "cancel_job": {"number": 999}, "resume_job": {"number": 999},
    "run_diagnosis": {"number": 10}, "save_guidelines": {"textbox": "# guidelines"},
    "label": {"api": None}, "next_in_dataset": {"api": ""}, "submit_job": {"max steps": 1, "output name": "access-test"},
}


def _inputs(config: dict, dependency: dict, overrides: dict, uploaded: dict) -> list:
    components = {c["id"]: c for c in config["components"]}
    values = []
    for component_id in dependency["inputs"]:
        component = components[component_id]
        label = component.get("props", {}).get("label")
        value = component.get("props", {}).get("value")
        if component["type"] == "file":
            value = uploaded
        value = overrides.get(label, overrides.get(component["type"], value))
        values.append(value)
    if dependency.get("api_name") == "label":
        values = [1, "a", "", ""]
    if dependency.get("api_name") == "rank":
        values = [1, [[1]], "", False]  # comparison 1 is a pair: refused as not a ranking item, never as "may not"
    return values


def _refused(output) -> bool:  # noqa: ANN001
    """The handler said no, and showed nothing else: a 'may not' message, or an empty model list."""
    if "may not" in json.dumps(output):
        return True
    lists = [part.get("choices") for part in output if isinstance(part, dict)]
    return bool(lists) and all(choices is not None and all(c in ("", ["", ""]) for c in choices) for choices in lists)


def test_every_handler_the_page_lists_checks_the_role_of_whoever_calls_it_over_http(secured_app):
    from core.accounts import ROLE_PERMISSIONS, Permission

    upload_client = session_for(secured_app, "boss")
    upload = upload_client.post("/gradio_api/upload", files={"files": ("p.jsonl", b'{"prompt": "Z", "chosen": "a", "rejected": "b"}\n')})
    uploaded = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": "p.jsonl"}
    config = upload_client.get("/config").json()
    # Gradio's `cancels=` adds events with no server function (they only tell the page to stop waiting).
    config["dependencies"] = [dep for dep in config["dependencies"] if dep.get("backend_fn", True)]
    listed = {dep["api_name"] for dep in config["dependencies"]}
    assert listed == set(HANDLER_PERMISSIONS), f"classify the new or removed handlers: {listed ^ set(HANDLER_PERMISSIONS)}"
    anonymous = session_for(secured_app, None)
    for dependency in config["dependencies"]:
        joined = anonymous.post("/gradio_api/queue/join", json={"data": [], "fn_index": dependency["id"],
                                                                "session_hash": uuid.uuid4().hex[:10]})
        assert joined.status_code in (401, 403), (dependency["api_name"], joined.status_code)
    outcomes = {}
    for name, role in ROLES.items():
        client = session_for(secured_app, name)
        for dependency in config["dependencies"]:
            handler = dependency["api_name"]
            needed = HANDLER_PERMISSIONS[handler]
            allowed = needed is None or Permission[needed] in ROLE_PERMISSIONS[role]
            output = call(client, dependency["id"], _inputs(config, dependency, INPUT_OVERRIDES.get(handler, {}), uploaded),
                          event_data=EVENT_DATA.get(handler))
            outcomes[(role, handler)] = (allowed, _refused(output))
            assert _refused(output) != allowed, f"{role} calling {handler}: allowed={allowed}, output={str(output)[:300]}"
    # The annotator was refused everything beyond labeling; the engineer everything an admin alone may do.
    assert {h for (r, h), (allowed, _) in outcomes.items() if r == "annotator" and not allowed} == {
        h for h, p in HANDLER_PERMISSIONS.items() if p not in (None, "LABEL")}
    assert {h for (r, h), (allowed, _) in outcomes.items() if r == "engineer" and not allowed} == {
        "save_guidelines", "save_dataset_settings", "save_inspect_setting", "save_loop_settings", "save_competence_refit",
        *ACCOUNT_HANDLERS}


def test_no_file_route_serves_the_store_or_model_folders(secured_app):
    admin = session_for(secured_app, "boss")
    folder: Path = secured_app.folder
    targets = [folder / "store.db", folder / "store.db-wal", folder / "models" / "secret-model" / "config.json",
               Path("/etc/passwd"), Path(__file__)]
    served = []
    for target in targets:
        relative = "../" * 12 + str(target).lstrip("/")
        variants = [str(target), relative, str(target).replace("/", "%2F"), str(target).upper(),
                    relative.replace("../", "..%2F"), relative.replace("../", "%2e%2e/"), relative.replace("../", "..\\\\")]
        for variant in variants:
            for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
                response = admin.get(route + variant)
                if response.status_code == 200 and response.content:
                    served.append((route + variant, response.status_code))
    assert served == []


def test_without_accounts_the_app_refuses_a_public_address(tmp_path):
    done = run_cli("serve", "--host", "0.0.0.0", db_url=f"sqlite:///{tmp_path / 'open.db'}")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr and "adduser" in done.stderr


def test_analytics_are_off(secured_app):
    assert session_for(secured_app, "boss").get("/config").json()["analytics_enabled"] is False


def test_a_state_changing_request_from_another_origin_is_refused_even_with_the_admins_cookies(secured_app):
    """A page on another localhost port makes the admin's browser post to the app: the browser sends
    its Origin (and Sec-Fetch-Site), and the request is refused before any handler runs."""
    admin = session_for(secured_app, "boss")
    fn = handler_ids(admin)["save_inspect_setting"]
    body = {"data": [True], "fn_index": fn, "session_hash": uuid.uuid4().hex[:10]}
    port = secured_app.url.rsplit(":", 1)[1]
    forged = admin.post("/gradio_api/queue/join", json=body,
                        headers={"Origin": "http://127.0.0.1:9", "Sec-Fetch-Site": "same-site"})
    assert forged.status_code == 403
    sandboxed = admin.post("/gradio_api/queue/join", json=body, headers={"Origin": "null"})
    assert sandboxed.status_code == 403
    from storage.engine import Store

    def stored() -> list:  # the oracle: the row itself
        with Store(secured_app.db_url).read() as session:
            return session.exec(text("SELECT value FROM setting WHERE key = 'annotators_may_inspect'")).all()

    assert stored() in ([], [("0",)])
    same = call(admin, fn, [True], headers={"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert same[0].startswith("Saved"), same
    assert stored() == [("1",)]
    call(admin, fn, [False], headers={"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})


@pytest.mark.postgres
def test_another_users_session_hash_reads_nothing_of_theirs(secured_app):
    engineer, annotator = session_for(secured_app, "eng"), session_for(secured_app, "ann")
    ids = handler_ids(engineer)
    session = uuid.uuid4().hex[:10]
    joined = engineer.post("/gradio_api/queue/join", json={"data": [], "fn_index": ids["show_team"],
                                                           "session_hash": session})
    assert joined.status_code == 200
    stolen = annotator.get("/gradio_api/queue/data", params={"session_hash": session})
    assert stolen.status_code == 403
    hijack = annotator.post("/gradio_api/queue/join", json={"data": [], "fn_index": ids["show_team"],
                                                            "session_hash": session})
    assert hijack.status_code == 403
    with engineer.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        assert stream.status_code == 200


def test_password_guessing_is_throttled_with_429_and_the_page_stays_responsive(secured_app):
    """Guessers from 16 addresses (X-Forwarded-For, trusted from loopback as from a local proxy) hammer
    one account: after a few failures each gets 429 with Retry-After and no password hash is spent;
    meanwhile a logged-in user's page keeps answering (latency printed, not asserted: no timed
    assertions in tests), and the real user, from their own address, waits at most 30 s."""
    import statistics
    import threading
    import time

    engineer = session_for(secured_app, "eng")

    def page_latency(n: int = 15) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            assert engineer.get("/gradio_api/info").status_code == 200
            times.append(time.perf_counter() - start)
        return times

    before = page_latency()
    statuses: list[int] = []
    stop = threading.Event()

    def guess(address: str) -> None:
        client = httpx.Client(base_url=secured_app.url, timeout=60)
        while not stop.is_set():
            response = client.post("/login", data={"username": "boss", "password": "guess"},
                                   headers={"X-Forwarded-For": address})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert 1 <= int(response.headers["retry-after"]) <= 300
                assert "try again" in response.json()["detail"]

    threads = [threading.Thread(target=guess, args=(f"10.9.0.{i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    during: list[float] = []
    deadline = time.monotonic() + 60
    while len(statuses) < 200 and time.monotonic() < deadline:  # measure for as long as the attack lasts
        during += page_latency(3)
    stop.set()
    for thread in threads:
        thread.join()
    print(f"\npage latency before the attack p50 {statistics.median(before) * 1000:.1f} ms, "
          f"during it p50 {statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms; "
          f"{len(statuses)} guesses: {statuses.count(429)} throttled (429), {statuses.count(400)} checked (400)")
    assert statuses.count(429) > 0 and 200 not in statuses
    assert statuses.count(400) <= 16 * 5 + 10  # each address's free tries, plus the user name's own
    real = httpx.Client(base_url=secured_app.url, timeout=60)
    response = real.post("/login", data={"username": "boss", "password": PASSWORD}, headers={"X-Forwarded-For": "10.8.0.1"})
    if response.status_code == 429:  # the user name is throttled briefly, never for long
        assert int(response.headers["retry-after"]) <= 30
        time.sleep(int(response.headers["retry-after"]))
        response = real.post("/login", data={"username": "boss", "password": PASSWORD},
                             headers={"X-Forwarded-For": "10.8.0.1"})
    assert response.status_code == 200


def test_an_upload_over_the_size_cap_is_refused_and_one_under_it_accepted(secured_app):
    engineer = session_for(secured_app, "eng")
    line = b'{"prompt": "Z", "chosen": "a", "rejected": "b"}\n'
    too_big = engineer.post("/gradio_api/upload", files={"files": ("big.jsonl", line * (2 * 1024 * 1024 // len(line)))})
    assert too_big.status_code == 413
    fits = engineer.post("/gradio_api/upload", files={"files": ("small.jsonl", line * 1000)})
    assert fits.status_code == 200


def test_unexpected_errors_are_not_shown_to_users_with_their_raw_text(secured_app):
    assert session_for(secured_app, "boss").get("/config").json()["show_error"] is False


def test_serving_a_store_whose_data_folder_does_not_exist_yet_starts(db_url, tmp_path):
    """On PostgreSQL the models, job folders and logs live in ./data, which a fresh working folder lacks:
    the app creates it instead of crashing at start (on SQLite the folder is the store file's)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from conftest import PROJECT_ROOT, _free_port

    workdir = tmp_path / "fresh"
    workdir.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "REWARDLAB_DATA_DIR"}  # the default: ./data
    process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "serve", "--db", db_url, "--port", str(port)],
                               cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.25)
        assert process.poll() is None, process.stdout.read()
        if not db_url.startswith("sqlite"):
            assert (workdir / "data" / "models").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_guard_reads_requests_as_gradio_does_repeated_names_and_odd_content_types_change_nothing(secured_app):
    """Found by trying it as an attacker: a repeated session_hash, a JSON body sent as "APPLICATION/JSON"
    or "application/x+json", a repeated username or a multipart login must not slip past the checks."""
    engineer, annotator = session_for(secured_app, "eng"), session_for(secured_app, "ann")
    ids = handler_ids(engineer)
    mine, theirs = uuid.uuid4().hex[:10], uuid.uuid4().hex[:10]
    call_body = {"data": [], "fn_index": ids["show_team"], "event_data": None, "trigger_id": None}
    assert annotator.post("/gradio_api/queue/join", json={**call_body, "session_hash": mine}).status_code == 200
    assert engineer.post("/gradio_api/queue/join", json={**call_body, "session_hash": theirs}).status_code == 200
    both = annotator.get("/gradio_api/queue/data", params=[("session_hash", mine), ("session_hash", theirs)])
    assert both.status_code == 400
    for content_type in ("APPLICATION/JSON", "application/vnd.x+json", "text/plain"):
        sneaked = annotator.post("/gradio_api/queue/join", content=json.dumps({**call_body, "session_hash": theirs}),
                                 headers={"content-type": content_type})
        assert sneaked.status_code == 403, content_type
    huge = annotator.post("/gradio_api/queue/join", content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                          headers={"content-type": "Application/Json"})
    assert huge.status_code == 413
    fresh = httpx.Client(base_url=secured_app.url, timeout=60)
    two_names = fresh.post("/login", content=f"username=ann&username=boss&password={PASSWORD}".replace(" ", "+"),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert two_names.status_code == 400
    two_in_multipart = fresh.post("/login", files=[("username", (None, "ann")), ("username", (None, "boss")),
                                                   ("password", (None, PASSWORD))])
    assert two_in_multipart.status_code == 400
    assert fresh.get("/gradio_api/user").status_code in (401, 403) or fresh.get("/gradio_api/user").json() is None
    # The page itself logs in with a multipart form: that still works.
    page_login = fresh.post("/login", files={"username": (None, "ann"), "password": (None, PASSWORD)})
    assert page_login.status_code == 200 and fresh.get("/gradio_api/user").json() == "ann"
