"""Accounts in a real browser: an admin adds a user in the Team tab, that user logs in, then logs out
with the page's button and is back at the login form."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, save_screenshot, setup_cli, sql, start_app

from storage.engine import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new password"


@pytest.fixture
def accounts_app(db_url, tmp_path):
    rows = [{"prompt": f"Question {i}?", "completions": [f"Answer A{i}", f"Answer B{i}"]} for i in range(5)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert setup_cli("import", str(tmp_path / "c.jsonl"), db_url=db_url).returncode == 0
    assert run_cli("adduser", "boss", "--role", "admin", "--password", PASSWORD, db_url=db_url).returncode == 0
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


def login(page, url: str, name: str, password: str) -> None:  # noqa: ANN001
    page.goto(url)
    page.get_by_test_id("textbox").fill(name)
    page.get_by_test_id("password").fill(password)
    page.get_by_role("button", name="Login").click()


def wait_for_listed(page, name: str) -> None:  # noqa: ANN001
    page.wait_for_function(
        "(name) => (document.querySelector('#users-table')?.innerText || '').split(/\\s+/).includes(name)",
        arg=name,
    )


def test_an_admin_adds_a_user_who_logs_in_and_logs_out_with_the_button(accounts_app, page, chromium, db_url):
    login(page, accounts_app.url, "boss", PASSWORD)
    page.get_by_role("tab", name="Team").click()
    page.get_by_text("Users (admins)").click()  # opening the section loads the list
    wait_for_listed(page, "boss")
    page.locator("#users-name input, #users-name textarea").first.fill("newbie")
    page.locator("#users-password input").fill(NEW_PASSWORD)
    page.locator("#users-add").click()
    page.locator("#users-status").get_by_text("Added annotator").wait_for()
    wait_for_listed(page, "newbie")
    assert page.locator("#users-password input").input_value() == ""
    save_screenshot(page, "team-users-added")
    store = Store(db_url)
    assert sql(store, "SELECT role, disabled_at FROM user WHERE name = 'newbie' AND password_hash IS NOT NULL") == [
        ("annotator", None)]
    store.dispose()

    newbie = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    login(newbie, accounts_app.url, "newbie", NEW_PASSWORD)
    newbie.locator("#label-left .rl-response").wait_for()
    newbie.wait_for_timeout(500)  # the role's tabs are shown after the page loads
    assert newbie.get_by_role("tab", name="Team").count() == 0
    save_screenshot(newbie, "newbie-logged-in")
    newbie.locator("#logout-button").click()
    newbie.get_by_role("button", name="Login").wait_for()
    newbie.get_by_test_id("password").wait_for()
    assert newbie.locator("#label-left").count() == 0
    save_screenshot(newbie, "newbie-logged-out")
    # Back at the login page for real: reloading does not bring the labeling page back.
    newbie.reload()
    newbie.get_by_role("button", name="Login").wait_for()
    assert newbie.locator("#label-left").count() == 0
    newbie.context.close()
