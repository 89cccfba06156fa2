"""Managing accounts: the users/passwd/deluser commands, the admins' core functions behind the Team
tab's Users section, and what a login over HTTP accepts afterwards. Oracles: raw SQL on the store,
the command's own output, and the running app's /login answer."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import add_users, run_cli, setup_cli, sql, start_app

from core.accounts import (
    AccountError,
    PermissionDenied,
    actor_for,
    add_user,
    authenticate,
    change_role,
    create_account,
    disable_account,
    enable_account,
    list_accounts,
    operator_actor,
    set_password,
)
from core.data.importer import ImportConfig, import_file
from core.labeling.actions import label_on_screen, next_comparison

PASSWORD = "correct horse battery"


def _users_table(store) -> list:  # noqa: ANN001
    """The login accounts as stored (the command line's own operator row, ``local``, has no password)."""
    return sql(store, "SELECT name, role, password_hash, disabled_at FROM \"user\" WHERE password_hash IS NOT NULL "
                      "ORDER BY name")


def _labels_of(store, name: str) -> int:  # noqa: ANN001
    return sql(store, f"SELECT count(*) FROM label JOIN \"user\" ON \"user\".id = label.annotator_id WHERE \"user\".name = '{name}'")[0][0]


def _label_some(store, tmp_path: Path, name: str, count: int) -> None:  # noqa: ANN001
    rows = [{"prompt": f"Q{i}?", "completions": [f"a{i}", f"b{i}"]} for i in range(count)]
    source = tmp_path / f"{name}-candidates.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    import_file(store, ImportConfig(source))
    actor = actor_for(store, name)
    for _ in range(count):
        label_on_screen(store, actor, next_comparison(store, actor), "left")


def test_users_lists_each_login_with_its_role_creation_disabled_state_and_label_count(store, db_url, tmp_path):
    for name, role in (("ann", "annotator"), ("boss", "admin"), ("eng", "engineer")):
        add_user(store, name, role, PASSWORD)
    _label_some(store, tmp_path, "ann", 3)
    assert run_cli("deluser", "eng", db_url=db_url).returncode == 0

    done = run_cli("users", db_url=db_url)

    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {"ann", "boss", "eng"}  # logins only: not the import source, not the local operator
    for name, role, _, disabled_at in _users_table(store):
        if name not in rows:
            continue
        listed = rows[name]
        assert listed[1] == role
        assert listed[-1] == str(_labels_of(store, name))
        assert (listed[4] == "-") == (disabled_at is None), listed
    assert rows["ann"][-1] == "3"
    assert rows["eng"][4] != "-" and rows["boss"][4] == "-"


def test_passwd_reads_the_new_password_from_stdin_and_refuses_a_short_one_changing_nothing(store, db_url):
    add_user(store, "ann", "annotator", PASSWORD)
    before = _users_table(store)

    short = run_cli("passwd", "ann", db_url=db_url, stdin="short\n")
    unknown = run_cli("passwd", "nobody", "--password", "long enough pw", db_url=db_url)

    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert unknown.returncode == 2 and "no login account named 'nobody'" in unknown.stderr
    assert _users_table(store) == before
    assert run_cli("passwd", "ann", db_url=db_url, stdin="a new long password\n").returncode == 0
    assert _users_table(store)[0][2] != before[0][2]


def test_the_last_active_admin_can_be_neither_disabled_nor_demoted(store, db_url):
    add_user(store, "boss", "admin", PASSWORD)
    add_user(store, "ann", "annotator", PASSWORD)

    refused = run_cli("deluser", "boss", db_url=db_url)

    assert refused.returncode == 2
    assert "'boss' is the last active admin" in refused.stderr and "another account an admin" in refused.stderr
    assert sql(store, "SELECT disabled_at, role FROM \"user\" WHERE name = 'boss'") == [(None, "admin")]
    with pytest.raises(AccountError, match="last active admin"):
        change_role(store, operator_actor(store), "boss", "engineer")
    assert sql(store, "SELECT role FROM \"user\" WHERE name = 'boss'") == [("admin",)]
    # With a second active admin, the first one may go.
    change_role(store, operator_actor(store), "ann", "admin")
    assert run_cli("deluser", "boss", db_url=db_url).returncode == 0
    assert sql(store, "SELECT disabled_at IS NOT NULL FROM \"user\" WHERE name = 'boss'") == [(1,)]


def test_a_disabled_admin_does_not_count_as_the_other_active_admin(store):
    add_user(store, "boss", "admin", PASSWORD)
    add_user(store, "old", "admin", PASSWORD)
    boss = actor_for(store, "boss")
    disable_account(store, boss, "old")
    add_user(store, "eng", "engineer", PASSWORD)
    with pytest.raises(AccountError, match="last active admin"):
        disable_account(store, operator_actor(store), "boss")
    assert sql(store, "SELECT name FROM \"user\" WHERE disabled_at IS NULL AND role = 'admin' AND password_hash IS NOT NULL") == [("boss",)]


def test_an_admin_cannot_disable_or_change_the_role_of_their_own_account(store):
    add_user(store, "boss", "admin", PASSWORD)
    add_user(store, "second", "admin", PASSWORD)  # so the last-admin rule is not what refuses
    boss = actor_for(store, "boss")
    before = _users_table(store)

    with pytest.raises(AccountError, match="your own account"):
        disable_account(store, boss, "boss")
    with pytest.raises(AccountError, match="your own account"):
        change_role(store, boss, "boss", "annotator")

    assert _users_table(store) == before


@pytest.mark.parametrize("role", ["annotator", "engineer"])
def test_every_account_function_refuses_annotators_and_engineers_and_writes_nothing(store, role):
    add_user(store, "boss", "admin", PASSWORD)
    add_user(store, "someone", role, PASSWORD)
    actor = actor_for(store, "someone")
    before = _users_table(store)
    calls = {
        "list_accounts": lambda: list_accounts(store, actor),
        "create_account": lambda: create_account(store, actor, "new", "admin", PASSWORD),
        "change_role": lambda: change_role(store, actor, "someone", "admin"),
        "set_password": lambda: set_password(store, actor, "boss", "taken over!"),
        "disable_account": lambda: disable_account(store, actor, "boss"),
        "enable_account": lambda: enable_account(store, actor, "boss"),
    }
    for name, call in calls.items():
        with pytest.raises(PermissionDenied, match="may not manage user accounts"):
            call()
            pytest.fail(f"{name} let {role} through")
    assert _users_table(store) == before


def test_an_admin_can_add_change_reset_disable_and_re_enable_an_account(store):
    add_user(store, "boss", "admin", PASSWORD)
    boss = actor_for(store, "boss")

    create_account(store, boss, "newbie", "annotator", PASSWORD)
    change_role(store, boss, "newbie", "engineer")
    set_password(store, boss, "newbie", "another long one")
    assert sql(store, "SELECT role, disabled_at FROM \"user\" WHERE name = 'newbie'") == [("engineer", None)]
    assert authenticate(store, "newbie", "another long one") and not authenticate(store, "newbie", PASSWORD)

    assert disable_account(store, boss, "newbie") is True
    assert disable_account(store, boss, "newbie") is False  # already disabled: nothing changes
    assert sql(store, "SELECT disabled_at IS NOT NULL FROM \"user\" WHERE name = 'newbie'") == [(1,)]
    assert not authenticate(store, "newbie", "another long one")
    with pytest.raises(PermissionDenied, match="disabled"):
        actor_for(store, "newbie")

    assert enable_account(store, boss, "newbie") is True
    assert sql(store, "SELECT disabled_at FROM \"user\" WHERE name = 'newbie'") == [(None,)]
    assert authenticate(store, "newbie", "another long one")
    assert [(a.name, a.role, a.disabled) for a in list_accounts(store, boss)] == [
        ("boss", "admin", False), ("newbie", "engineer", False)]


# ----- over HTTP, against the running app
@pytest.fixture(scope="module")
def accounts_app(tmp_path_factory, module_db_url):
    folder = tmp_path_factory.mktemp("accounts-app")
    add_users(module_db_url, {"boss": "admin", "ann": "annotator", "bob": "annotator"}, PASSWORD)
    rows = [{"prompt": f"Q{i}?", "completions": [f"a{i}", f"b{i}"]} for i in range(5)]
    (folder / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert setup_cli("import", str(folder / "c.jsonl"), db_url=module_db_url).returncode == 0
    app = start_app(module_db_url, folder / "app.log", "--no-demo")
    app.db_url = module_db_url
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


def _login(app, name: str, password: str) -> tuple[int, httpx.Client]:  # noqa: ANN001
    client = httpx.Client(base_url=app.url, timeout=60)
    return client.post("/login", data={"username": name, "password": password}).status_code, client


@pytest.mark.slow
@pytest.mark.postgres
def test_passwd_changes_which_password_the_running_app_accepts(accounts_app):
    assert _login(accounts_app, "bob", PASSWORD)[0] == 200

    done = run_cli("passwd", "bob", db_url=accounts_app.db_url, stdin="bob's new password\n")

    assert done.returncode == 0, done.stderr
    assert _login(accounts_app, "bob", PASSWORD)[0] == 400
    assert _login(accounts_app, "bob", "bob's new password")[0] == 200


@pytest.mark.slow
@pytest.mark.postgres
def test_deluser_keeps_the_labels_refuses_the_login_and_ends_the_open_session(accounts_app):
    from test_access import call, handler_ids

    from storage.engine import Store

    status, ann = _login(accounts_app, "ann", PASSWORD)
    assert status == 200
    ids = handler_ids(ann)
    labeled = call(ann, ids["next"], [])[0]["comparison_id"]
    assert call(ann, ids["label"], [labeled, "a", "", ""])[0]["label_id"] >= 1
    reserved = call(ann, ids["next"], [])[0]["comparison_id"]  # reserved, to be labeled after deluser
    store = Store(accounts_app.db_url)
    labels_before = _labels_of(store, "ann")
    assert labels_before == 1

    done = run_cli("deluser", "ann", db_url=accounts_app.db_url)

    assert done.returncode == 0, done.stderr
    assert _labels_of(store, "ann") == labels_before
    assert sql(store, "SELECT count(*) FROM \"user\" WHERE name = 'ann'") == [(1,)]
    assert _login(accounts_app, "ann", PASSWORD)[0] == 400
    # The session opened before is over: deluser ended it in the store, so its next event is refused by
    # Gradio's login check (401) before any handler runs, and the label is not stored.
    session = uuid.uuid4().hex[:10]
    joined = ann.post("/gradio_api/queue/join", json={"data": [reserved, "b", "", ""], "fn_index": ids["label"],
                                                      "session_hash": session, "event_data": None, "trigger_id": None})
    assert joined.status_code == 401, joined.text[:300]
    assert _labels_of(store, "ann") == labels_before
    assert ann.get("/config").status_code in (401, 403)
    store.dispose()


def test_adduser_says_to_restart_the_app_only_for_the_first_account_and_stores_a_full_strength_hash(db_url, store):
    first = run_cli("adduser", "boss", "--role", "admin", "--password", PASSWORD, db_url=db_url)
    second = run_cli("adduser", "ann", "--role", "annotator", "--password", PASSWORD, db_url=db_url)
    assert first.returncode == second.returncode == 0
    assert "restart" in first.stdout and "restart" not in second.stdout
    assert second.stdout.strip() == "created annotator 'ann'"
    # The command's own process hashes with the real parameters (the tests' own accounts use cheap ones:
    # conftest.py): Argon2id with RFC 9106's low-memory set, 64 MiB, 3 passes, 4 lanes.
    hashes = [row[0] for row in sql(store, 'SELECT password_hash FROM "user" ORDER BY name')]
    assert len(hashes) == 2 and all(h.startswith("$argon2id$v=19$m=65536,t=3,p=4$") for h in hashes), hashes
