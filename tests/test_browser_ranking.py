"""Ranking K = 4 completions in a real browser: places with the mouse, a typed order with the keys,
a tie, the all-unacceptable flag, undo and change. The oracle is the stored label (SQL) compared
with the order the page showed."""

from __future__ import annotations

import json
import re

import pytest
from conftest import save_screenshot, setup_cli, sql
from test_import import write_jsonl

from storage.engine import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROWS = [{"prompt": f"Ranking question {i}?",
         "completions": [f"alpha answer {i}", f"**bravo** answer {i}", f"charlie answer {i}", f"delta answer {i}"]}
        for i in range(3)]


def _shown(page) -> tuple[int, dict[str, str]]:  # noqa: ANN001
    """The item on screen and the word of the response under each letter."""
    current = page.locator("#label-current").get_by_text("Ranking item #")
    current.wait_for()
    item = int(re.search(r"#(\d+)", current.inner_text()).group(1))
    words = {}
    for letter in "ABCD":
        text = page.locator(f"#rank-text-{letter}").inner_text()
        words[letter] = re.search(r"(alpha|bravo|charlie|delta)", text).group(1)
    return item, words


def _stored(store: Store, item: int) -> dict:
    (ranking,), = sql(store, f"SELECT ranking FROM label WHERE comparison_id = {item}")
    return json.loads(ranking) if isinstance(ranking, str) else ranking


def _words_of(store: Store, groups: list[list[int]]) -> list[list[str]]:
    texts = dict(sql(store, "SELECT id, text FROM completion"))
    return [sorted(re.search(r"(alpha|bravo|charlie|delta)", texts[c]).group(1) for c in group) for group in groups]


def test_an_annotator_ranks_four_completions_with_the_mouse_and_with_keys(db_url, tmp_path, page):
    from conftest import start_app

    done = setup_cli("import", str(write_jsonl(tmp_path / "rank.jsonl", ROWS)), "--dataset", "rk", "--question",
                   "ranking", db_url=db_url)
    assert done.returncode == 0, done.stderr
    store = Store(db_url)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        page.goto(app.url)
        first, words = _shown(page)
        assert page.locator("#btn-left").is_hidden()  # the pair buttons are not offered for a ranking
        # Mouse: a place for each response; the first two shown share place 1.
        by_word = {word: letter for letter, word in words.items()}
        for word, place in (("charlie", "1"), ("alpha", "1"), ("delta", "2"), ("bravo", "3")):
            page.locator(f"#rank-place-{by_word[word]}").get_by_label(place, exact=True).check()
        page.locator("#rank-order").get_by_role("textbox").wait_for()
        expected_order = f"{'='.join(sorted([by_word['charlie'], by_word['alpha']]))} > {by_word['delta']} > {by_word['bravo']}"
        page.wait_for_function(
            "(want) => { const box = document.querySelector('#rank-order textarea, #rank-order input');"
            " return box && box.value === want; }", arg=expected_order)
        save_screenshot(page, "ranking-mouse")
        page.locator("#btn-rank-submit").click()
        page.locator("#label-status").get_by_text(f"Saved: #{first}").wait_for()
        stored = _stored(store, first)
        assert _words_of(store, stored["groups"]) == [["alpha", "charlie"], ["delta"], ["bravo"]]
        assert [w for w in _words_of(store, [[c] for c in stored["shown"]])] == [[words[letter]] for letter in "ABCD"]
        assert stored["all_bad"] is False

        # Keys only: "o" focuses the order, letters best first, Enter submits; all unacceptable ticked.
        second, words = _shown(page)
        assert second != first
        by_word = {word: letter for letter, word in words.items()}
        page.locator("#rank-all-bad input").check()
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("o")
        typed = "".join(by_word[w] for w in ("delta", "charlie", "bravo", "alpha")).lower()
        page.keyboard.type(typed)
        page.keyboard.press("Enter")
        page.locator("#label-status").get_by_text(f"Saved: #{second}").wait_for()
        stored = _stored(store, second)
        assert _words_of(store, stored["groups"]) == [["delta"], ["charlie"], ["bravo"], ["alpha"]]
        assert stored["all_bad"] is True

        # A mistake says what is wrong and stores nothing.
        third, words = _shown(page)
        page.locator("#rank-order").get_by_role("textbox").fill("A B")
        page.locator("#btn-rank-submit").click()
        page.locator("#label-status").get_by_text("leaves out").wait_for()
        assert sql(store, f"SELECT count(*) FROM label WHERE comparison_id = {third}") == [(0,)]

        # Undo brings the second item back with its places filled in; change it to a tie of all four.
        page.locator("#btn-undo").click()
        page.locator("#label-current").get_by_text(f"Ranking item #{second}").wait_for()
        assert sql(store, f"SELECT count(*) FROM label WHERE comparison_id = {second}") == [(0,)]
        page.locator("#rank-order").get_by_role("textbox").fill("A=B=C=D")
        page.locator("#btn-rank-submit").click()
        page.locator("#label-status").get_by_text(f"Saved: #{second}").wait_for()
        assert _words_of(store, _stored(store, second)["groups"]) == [["alpha", "bravo", "charlie", "delta"]]
        save_screenshot(page, "ranking-after")
        # The Team tab reports ranking agreement and position bias for the dataset.
        page.get_by_role("tab", name="Team").click()
        page.locator("#team-summary").get_by_text("Kendall's W").wait_for()
        assert "2 ranking(s)" in page.locator("#team-summary").inner_text()
        save_screenshot(page, "ranking-team")
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
        store.dispose()
