"""Marking the steps of reasoning traces in a real browser: mouse buttons, keys (j/k, 1/2/3, f, Enter), the
first-error shortcut, the final verdict, a refusal that names the unmarked step, undo, and a stale tab. The
oracle is the stored label (SQL)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import save_screenshot, setup_cli, sql, start_app
from test_import import write_jsonl

from storage.engine import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TRACES = [{"prompt": f"Trace question {i}?",
           "completion": f"<think>First **idea** {i}.\n\nSecond idea {i}.\n\nThird idea {i}.</think>\n\nAnswer {i}."}
          for i in range(4)]


def _shown(page) -> int:  # noqa: ANN001
    current = page.locator("#label-current").get_by_text("Trace #")
    current.wait_for()
    return int(re.search(r"#(\d+)", current.inner_text()).group(1))


def _stored(store: Store, item: int) -> dict:
    (steps,), = sql(store, f"SELECT steps FROM label WHERE comparison_id = {item}")
    return json.loads(steps) if isinstance(steps, str) else steps


def _marks_on_page(page) -> str:  # noqa: ANN001
    return page.evaluate("() => [...document.querySelectorAll('#steps-view .rl-step')].map(s => s.dataset.mark).join('')")


def _wait_marks(page, want: str) -> None:  # noqa: ANN001
    page.wait_for_function("(want) => [...document.querySelectorAll('#steps-view .rl-step')]"
                           ".map(s => s.dataset.mark).join('') === want", arg=want)


def test_an_annotator_marks_steps_with_the_mouse_and_the_keys_undoes_and_is_refused_on_a_stale_tab(
        db_url, tmp_path, page):
    done = setup_cli("import", str(write_jsonl(tmp_path / "steps.jsonl", TRACES)), "--dataset", "proc", "--question",
                   "steps", db_url=db_url)
    assert done.returncode == 0, done.stderr
    store = Store(db_url)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(app.url)
        first = _shown(page)
        assert page.locator("#btn-left").is_hidden() and page.locator("#btn-rank-submit").is_hidden()
        steps = page.locator("#steps-view .rl-step")
        assert steps.count() == 4
        assert "idea" in steps.nth(0).inner_text() and "final answer" in page.locator("#steps-view").inner_text().lower()
        assert steps.nth(0).locator("strong").inner_text().startswith("idea")  # Markdown rendered
        save_screenshot(page, "steps-first")
        # Mouse: step 1 correct, step 2 wrong; steps 3 and 4 unmarked -> the refusal names step 3, nothing stored.
        steps.nth(0).locator("button[data-mark='+']").click()
        steps.nth(1).locator("button[data-mark='-']").click()
        _wait_marks(page, "+-??")
        page.locator("#btn-steps-submit").click()
        page.locator("#label-status").get_by_text("step 3 is not marked").wait_for()
        assert sql(store, f"SELECT count(*) FROM label WHERE comparison_id = {first}") == [(0,)]
        # First-error labeling: "first wrong" on step 2 leaves the rest unreviewed; the final answer is wrong.
        steps.nth(1).locator("button[data-mark='f']").click()
        _wait_marks(page, "+-..")
        page.locator("#steps-final").get_by_label("answer wrong").check()
        page.locator("#btn-steps-submit").click()
        page.locator("#label-status").get_by_text(f"Saved: #{first}").wait_for()
        assert _stored(store, first) == {"marks": ["+", "-", None, None], "final": "wrong"}

        # Keys only: 1 2 3 mark the current step and move on, k goes back, Enter submits.
        second = _shown(page)
        assert second != first
        _wait_marks(page, "????")
        page.locator("body").click(position={"x": 5, "y": 5})
        for key in ("1", "2", "3", "1", "k", "j", "3"):  # back and forth; the last step changed to wrong
            page.keyboard.press(key)
        _wait_marks(page, "+0--")
        page.keyboard.press("Enter")
        page.locator("#label-status").get_by_text(f"Saved: #{second}").wait_for()
        assert _stored(store, second) == {"marks": ["+", "0", "-", "-"], "final": None}

        # Undo brings the second trace back unmarked; f on its first step marks it the first error.
        _shown(page)
        page.locator("#btn-undo").click()
        page.locator("#label-current").get_by_text(f"Trace #{second}").wait_for()
        assert sql(store, f"SELECT count(*) FROM label WHERE comparison_id = {second}") == [(0,)]
        _wait_marks(page, "????")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("f")
        _wait_marks(page, "-...")
        page.keyboard.press("Enter")
        page.locator("#label-status").get_by_text(f"Saved: #{second}").wait_for()
        assert _stored(store, second)["marks"] == ["-", None, None, None]

        # A stale tab: the same trace marked in a second tab; this tab's marks are refused until "Change it".
        third = _shown(page)
        other = page.context.new_page()
        other.goto(app.url)
        assert _shown(other) == third
        other.locator("#steps-view .rl-step").nth(0).locator("button[data-mark='f']").click()
        _wait_marks(other, "-...")
        other.locator("#btn-steps-submit").click()
        other.locator("#label-status").get_by_text(f"Saved: #{third}").wait_for()
        other.close()
        for index in range(4):
            page.locator("#steps-view .rl-step").nth(index).locator("button[data-mark='+']").click()
        _wait_marks(page, "++++")
        page.locator("#btn-steps-submit").click()
        page.locator("#label-status").get_by_text("already labeled").wait_for()
        assert _stored(store, third)["marks"] == ["-", None, None, None]
        save_screenshot(page, "steps-stale")
        page.locator("#btn-change-it").click()
        page.locator("#label-status").get_by_text(f"Saved: #{third}").wait_for()
        assert _stored(store, third)["marks"] == ["+", "+", "+", "+"]
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
        store.dispose()
