"""Labeling in a real browser: log in, label with clicks and keys, undo, change a label from the
history, two annotators at once, roles, and completions that try to attack the page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import add_users, save_screenshot, setup_cli, start_app, stop_app
from sqlalchemy import select

from storage.engine import Store
from storage.models import Label, User

# The tests whose point is the store (logins, labels and undo written, two annotators at once) also run in the
# PostgreSQL pass; which tabs a role sees and how hostile text renders do not depend on the database.
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "correct horse battery"


def _prepare(db_url: str, folder: Path, rows: list[dict], roles: dict[str, str]) -> None:
    source = folder / "candidates.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert setup_cli("import", str(source), db_url=db_url).returncode == 0
    add_users(db_url, roles, PASSWORD)


# One app for the team tests: each test logs in as accounts of its own, since labels, leases and the
# guidelines' "first visit" are per account (an app start costs ~10 CPU-s; CI has a budget).
TEAM = {"ann": "annotator", "cara": "annotator", "dan": "annotator", "eve": "annotator", "fay": "annotator",
        "boss": "admin"}


@pytest.fixture(scope="module")
def team_app(module_db_url, tmp_path_factory):  # noqa: ANN001
    folder = tmp_path_factory.mktemp("team")
    rows = [{"prompt": f"Question {i}?", "completions": [f"Answer A{i}", f"Answer B{i}"]} for i in range(40)]
    _prepare(module_db_url, folder, rows, TEAM)
    app = start_app(module_db_url, folder / "app.log", "--no-demo", env={"REWARDLAB_DATA_DIR": str(folder / "data")})
    app.db_url = module_db_url
    yield app
    stop_app(app)


def login(page, url: str, name: str, password: str = PASSWORD) -> None:  # noqa: ANN001
    page.goto(url)
    page.get_by_test_id("textbox").fill(name)
    page.get_by_test_id("password").fill(password)
    page.get_by_role("button", name="Login").click()


def shown_comparison(page) -> int:  # noqa: ANN001
    page.locator("#label-current").get_by_text(re.compile(r"Comparison #\d+")).wait_for()
    return int(re.search(r"Comparison #(\d+)", page.locator("#label-current").inner_text()).group(1))


def wait_for_next(page, previous: int) -> int:  # noqa: ANN001
    page.wait_for_function(
        "(prev) => { const m = document.querySelector('#label-current')?.innerText.match(/#(\\d+)/);"
        " return m && Number(m[1]) !== prev; }",
        arg=previous,
    )
    return shown_comparison(page)


def stored_labels(db_url: str, name: str) -> dict[int, Label]:
    store = Store(db_url)
    with store.read() as session:
        rows = session.execute(select(Label).join(User, User.id == Label.annotator_id).where(User.name == name)).scalars()
        labels = {label.comparison_id: label for label in rows}
    store.dispose()
    return labels


@pytest.mark.postgres
def test_login_is_required_and_a_wrong_password_is_refused(team_app, page):
    login(page, team_app.url, "ann", "not the password")
    page.get_by_text(re.compile("Incorrect|invalid", re.I)).first.wait_for()
    assert page.locator("#label-left").count() == 0
    login(page, team_app.url, "ann")
    page.locator("#label-left .rl-response").wait_for()
    assert "ann" in page.locator("#label-progress").inner_text()


@pytest.mark.postgres
def test_label_with_clicks_and_keys_undo_and_change_from_history(team_app, page):
    login(page, team_app.url, "cara")
    page.locator("#label-left .rl-response").wait_for()
    first = shown_comparison(page)
    page.locator("#btn-left").click()
    second = wait_for_next(page, first)

    # Typing a digit into the comment box must not label anything.
    page.locator("#label-comment textarea, #label-comment input").first.fill("1 and 2 are digits")
    page.locator("#label-comment textarea, #label-comment input").first.press("2")
    assert shown_comparison(page) == second
    page.locator("#label-comment textarea, #label-comment input").first.fill("")
    page.locator("body").click(position={"x": 5, "y": 5})

    page.keyboard.press("q")  # slightly
    page.keyboard.press("2")  # right is better
    third = wait_for_next(page, second)
    page.keyboard.press("3")  # tie
    fourth = wait_for_next(page, third)
    save_screenshot(page, "label-tab")

    labels = stored_labels(team_app.db_url, "cara")
    assert set(labels) == {first, second, third}
    assert labels[first].choice == labels[first].shown_left
    assert labels[second].choice != labels[second].shown_left and labels[second].strength == 1
    assert labels[third].choice == "tie"
    assert all(label.seconds_spent is not None and label.seconds_spent >= 0 for label in labels.values())

    page.keyboard.press("u")
    page.locator("#label-status").get_by_text(f"Undone: #{third}").wait_for()
    assert set(stored_labels(team_app.db_url, "cara")) == {first, second}
    page.locator("#btn-both-bad").click()
    after_undo = wait_for_next(page, third)
    assert after_undo == fourth
    assert stored_labels(team_app.db_url, "cara")[third].choice == "both_bad"

    page.get_by_text("My labels").click()
    page.locator("#label-history").get_by_text(str(first), exact=True).first.wait_for()
    page.locator("#change-id input").fill(str(first))
    page.locator("#btn-change").click()
    page.locator("#label-current").get_by_text("changing your label").wait_for()
    page.locator("#btn-tie").click()
    page.locator("#label-status").get_by_text(f"Saved: #{first} → tie").wait_for()
    labels = stored_labels(team_app.db_url, "cara")
    assert labels[first].choice == "tie" and len(labels) == 3


@pytest.mark.postgres
def test_two_annotators_never_see_the_same_comparison(team_app, chromium):
    pages = {}
    for name in ("dan", "eve"):
        context = chromium.new_context(viewport={"width": 1300, "height": 900})
        pages[name] = context.new_page()
        login(pages[name], team_app.url, name)
        pages[name].locator("#label-left .rl-response").wait_for()
    seen: dict[str, list[int]] = {"dan": [], "eve": []}
    for _ in range(6):
        current = {name: shown_comparison(page) for name, page in pages.items()}
        assert current["dan"] != current["eve"]
        for name, page in pages.items():
            seen[name].append(current[name])
            page.locator("#btn-right").click()
        for name, page in pages.items():
            wait_for_next(page, current[name])
    assert not set(seen["dan"]) & set(seen["eve"])
    dan, eve = stored_labels(team_app.db_url, "dan"), stored_labels(team_app.db_url, "eve")
    assert len(dan) == len(eve) == 6 and not set(dan) & set(eve)
    for page in pages.values():
        page.context.close()


def test_each_role_sees_its_tabs(team_app, page, chromium):
    login(page, team_app.url, "fay")
    page.locator("#label-left .rl-response").wait_for()
    page.wait_for_timeout(500)
    assert page.get_by_role("tab", name="Data").count() == 0
    assert page.get_by_role("tab", name="Team").count() == 0

    # First visit: the guidelines open by themselves; the annotator gets no editor.
    page.locator("#label-guidelines").get_by_text("Pick the response").wait_for()
    assert page.locator("#guidelines-editor").count() == 0
    assert not page.get_by_text("Edit the guidelines (admins)").is_visible()

    admin = chromium.new_context().new_page()
    login(admin, team_app.url, "boss")
    admin.get_by_role("tab", name="Team").wait_for()
    admin.get_by_role("tab", name="Data").wait_for()
    admin.get_by_text("Edit the guidelines (admins)").click()
    admin.locator("#guidelines-editor textarea").fill("Prefer the **shorter** correct answer.")
    admin.locator("#guidelines-save").click()
    admin.locator("#label-status").get_by_text("Guidelines saved.").wait_for()
    admin.context.close()

    # Seen once, they stay folded to their one-line header on the next visit, until they change: then they open.
    page.reload()
    page.locator("#label-guidelines").get_by_text("shorter").wait_for()
    page.reload()
    page.locator("#label-left .rl-response").wait_for()
    page.wait_for_timeout(1000)
    assert not page.locator("#label-guidelines").get_by_text("shorter").is_visible()


HOSTILE = [
    "<script>alert('xss')</script>Answer with a script",
    '<img src="http://attacker.invalid/pixel.png" onerror="alert(1)">image',
    '<a href="javascript:alert(1)">click me</a>',
    "<style>body { background: rgb(255, 0, 0) !important; }</style>styled",
    "![tracker](http://attacker.invalid/track.png) markdown image",
    '<svg onload="alert(2)"></svg><iframe src="http://attacker.invalid/"></iframe>',
]


def test_hostile_completions_show_as_text_and_do_nothing(db_url, tmp_path, page):
    rows = [{"prompt": "<b onmouseover=alert(3)>Which is safer?</b>", "completions": [HOSTILE[i], HOSTILE[i + 1]]}
            for i in range(0, len(HOSTILE), 2)]
    _prepare(db_url, tmp_path, rows, {"ann": "annotator"})
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        dialogs, outside = [], []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("request", lambda request: outside.append(request.url)
                if urlparse(request.url).hostname not in ("127.0.0.1", "localhost") and not request.url.startswith("data:")
                else None)
        login(page, app.url, "ann")
        background = None
        for _ in range(len(rows)):
            page.locator("#label-left .rl-response").wait_for()
            current = shown_comparison(page)
            shown = page.locator("#label-left").inner_text() + page.locator("#label-right").inner_text()
            assert "<" in shown  # the markup is visible as characters
            assert page.locator("#label-left img, #label-right img, #label-left script, #label-right script, "
                                "#label-left style, #label-right style, "
                                "#label-left iframe, #label-right iframe, #label-prompt b").count() == 0
            # Markdown may make links (the tracker image is shown as one, text and URL); none may run code
            # or open without rel=noopener noreferrer nofollow.
            links = page.locator("#label-left a, #label-right a").evaluate_all(
                "(links) => links.map((a) => [a.getAttribute('href'), a.getAttribute('rel'), a.innerText])")
            for href, rel, text in links:
                assert href == "http://attacker.invalid/track.png" and href in text
                assert set(rel.split()) >= {"noopener", "noreferrer", "nofollow"}
            page.locator("#label-left").hover()
            page.locator("#label-prompt").hover()
            color = page.evaluate("getComputedStyle(document.body).backgroundColor")
            background = background or color
            assert color == background and color != "rgb(255, 0, 0)"
            save_screenshot(page, f"hostile-{current}")
            page.locator("#btn-skip").click()
            page.wait_for_timeout(300)
        page.wait_for_timeout(500)
        assert dialogs == []
        assert outside == []
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
