"""Who can do what over HTTP: the public API per role, every private UI handler called directly
(Gradio's "private" hides an endpoint from clients but does not block a crafted request), and file
routes that must never serve the store, its WAL, model folders or anything outside allowed paths."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import run_cli, start_app

pytestmark = pytest.mark.slow
PASSWORD = "long enough pw"
ROLES = {"ann": "annotator", "eng": "engineer", "boss": "admin"}


@pytest.fixture(scope="module")
def secured_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("access")
    db_url = f"sqlite:///{folder / 'store.db'}"
    rows = [{"prompt": f"P{i}", "completions": [f"x{i}", f"y{i}"]} for i in range(10)]
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": f"Q{i}? ", "chosen": " good", "rejected": " bad"} for i in range(4)]
    (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    for source in ("c.jsonl", "p.jsonl"):
        assert run_cli("import", str(folder / source), db_url=db_url).returncode == 0
    for name, role in ROLES.items():
        assert run_cli("adduser", name, "--role", role, "--password", PASSWORD, db_url=db_url).returncode == 0
    (folder / "models" / "secret-model").mkdir(parents=True)
    (folder / "models" / "secret-model" / "config.json").write_text('{"secret": true}')
    app = start_app(db_url, folder / "app.log", "--no-demo")
    app.folder = folder
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


def call(client: httpx.Client, fn_id: int, data: list) -> list:
    """Run one event the way the page does: join the queue, read the result stream."""
    session = uuid.uuid4().hex[:10]
    joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_id, "session_hash": session,
                                                          "event_data": None, "trigger_id": None})
    assert joined.status_code == 200, joined.text
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message["output"].get("data") or [message["output"].get("error")]
    raise AssertionError("no result")


def test_the_public_api_is_next_and_label_for_every_role_and_nobody_without_login(secured_app):
    from gradio_client import Client

    for name in ROLES:
        client = Client(secured_app.url, auth=(name, PASSWORD), verbose=False)
        assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/next", "/label"}
        assert client.predict(api_name="/next") is not None
    anonymous = session_for(secured_app, None)
    assert anonymous.get("/config").status_code in (401, 403)
    assert anonymous.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"}).status_code in (401, 403)


def test_private_handlers_refuse_an_annotator_called_directly(secured_app):
    annotator = session_for(secured_app, "ann")
    ids = handler_ids(annotator)
    upload = annotator.post("/gradio_api/upload", files={"files": ("p.jsonl", b'{"prompt": "Z", "chosen": "a", "rejected": "b"}\n')})
    uploaded = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": "p.jsonl"}
    refusals = {
        "run_import": call(annotator, ids["run_import"], [uploaded, False])[0],
        "run_export": call(annotator, ids["run_export"], ["jsonl", "auto", 0])[0],
        "save_guidelines": call(annotator, ids["save_guidelines"], ["# taken over"])[1],
        "send_back": call(annotator, ids["send_back"], ["1, 2"])[0],
        "save_overlap_setting": call(annotator, ids["save_overlap_setting"], [3])[0],
        "show_jobs": call(annotator, ids["show_jobs"], [None]),
    }
    assert "ann is an annotator and may not import data" in refusals["run_import"]
    assert "may not export data" in refusals["run_export"]
    assert "may not edit the labeling guidelines" in refusals["save_guidelines"]
    assert "may not send comparisons back" in refusals["send_back"]
    assert "may not change labeling settings" in refusals["save_overlap_setting"]
    # Only empty updates come back: no job table, no progress, no chart, no log.
    assert all(part == {"__type__": "update"} for part in refusals["show_jobs"][:5]), refusals["show_jobs"]
    team = call(annotator, ids["show_team"], [])
    assert any("may not see the team" in str(part) for part in team)
    engineer = session_for(secured_app, "eng")
    assert "Exported." in call(engineer, handler_ids(engineer)["run_export"], ["jsonl", "auto", 0])[0]


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
