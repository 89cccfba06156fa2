"""Importing from the Data tab in Chromium: the Question follows the dropped file (pairs -> pairwise; candidates of 3
to 9 completions -> the user must choose, for a new dataset) and goes back to "the dataset's own" after each import,
so a ranking import no longer turns the next new dataset into a ranking one. The oracle: SQL on the store."""

from __future__ import annotations

import json

import pytest
from conftest import sql, start_app

from storage.engine import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _write(path, rows):  # noqa: ANN001, ANN202
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _question(page) -> str:  # noqa: ANN001
    return page.evaluate("() => document.querySelector('#import-question input:checked')?.value ?? null")


def _drop(page, path) -> None:  # noqa: ANN001
    page.locator("#import-file input[type=file]").set_input_files(str(path))


def _into(page, dataset: str) -> None:  # noqa: ANN001
    field = page.locator("#import-dataset input")
    field.fill(dataset)
    field.press("Enter")


def test_the_question_follows_the_file_and_resets_after_each_import(db_url, tmp_path, page):
    ranked = _write(tmp_path / "ranked.jsonl", [{"prompt": f"Q{i}?", "completions": ["a", "b", "c", "d"]} for i in range(3)])
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": f"P{i}?", "chosen": "yes", "rejected": "no"} for i in range(3)])
    store = Store(db_url)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        page.goto(app.url)
        page.get_by_role("tab", name="Data").click()
        _drop(page, ranked)
        page.locator("#import-result").get_by_text("candidates of 3 to 9 completions").wait_for()
        assert _question(page) == ""
        _into(page, "r1")
        page.locator("#import-button").click()
        page.locator("#import-result").get_by_text("choose the Question").wait_for()
        assert sql(store, "SELECT count(*) FROM dataset WHERE name = 'r1'") == [(0,)]  # asked, nothing written

        _drop(page, ranked)
        page.locator("#import-result").get_by_text("candidates of 3 to 9 completions").wait_for()
        page.locator("#import-question").get_by_text("ranking", exact=True).click()
        _into(page, "r1")
        page.locator("#import-button").click()
        page.locator("#import-result").get_by_text("Imported.").wait_for()
        assert sql(store, "SELECT question FROM dataset WHERE name = 'r1'") == [("ranking",)]
        page.wait_for_function("() => document.querySelector('#import-question input:checked')?.value === ''")

        _drop(page, pairs)
        page.locator("#import-result").get_by_text("Question set to pairwise").wait_for()
        assert _question(page) == "pairwise"
        _into(page, "p1")
        page.locator("#import-button").click()
        page.locator("#import-result").get_by_text("Imported.").wait_for()
        assert sql(store, "SELECT question FROM dataset WHERE name = 'p1'") == [("pairwise",)]
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
        store.dispose()
