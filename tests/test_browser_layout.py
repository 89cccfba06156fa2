"""The page annotators live in shows the text at 1280x800 and at 900 px wide: for a pairwise item with long
answers, a ranking item of K=4 and a 3-turn chat, the first line of every answer (and of the last prompt turn) is
inside the viewport and on top there (``document.elementFromPoint`` at its centre hits the answer, not the sticky
choice bar), and the bar stays within ~110 px. The oracle is the browser's own geometry.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from conftest import save_screenshot, setup_cli, start_app
from test_browser_datasets import _choose

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG = "\n\n".join(f"Paragraph {k} of the answer: " + "the reasoning continues with more words " * 12 for k in range(8))
VIEWPORTS = [(1280, 800), (900, 800)]
MAX_BAR_HEIGHT = 118  # ~110 px plus the bar's border and padding

FIRST_LINES = """(selectors) => {
    const bar = document.querySelector('#label-choice-bar').getBoundingClientRect();
    return selectors.map((selector) => {
        const box = document.querySelector(selector);
        if (!box) return {selector, missing: true};
        // The answer's own Markdown (not the folded thinking), its first text.
        const md = [...box.querySelectorAll('.rl-md')].find((e) => !e.closest('details')) || box;
        const walker = document.createTreeWalker(md, NodeFilter.SHOW_TEXT,
            {acceptNode: (n) => n.textContent.trim() ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP});
        const node = walker.nextNode();
        if (!node) return {selector, missing: true};
        const range = document.createRange();
        range.setStart(node, 0);
        range.setEnd(node, Math.min(12, node.textContent.length));
        const r = range.getClientRects()[0];
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return {selector, text: node.textContent.slice(0, 12), top: r.top, bottom: r.bottom,
                inside: r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth,
                onTop: !!hit && md.contains(hit), barTop: bar.top, barHeight: bar.height,
                coveredBy: hit && !md.contains(hit) ? `${hit.tagName} #${hit.id} .${hit.className}` : null};
    });
}"""


@pytest.fixture(scope="module")
def layout_app(tmp_path_factory, module_db_url):
    folder = tmp_path_factory.mktemp("layout")
    files = {
        "pairs": [{"prompt": "Explain the proof step by step.", "completions": [f"A: {LONG}", f"B: {LONG}"]}],
        "chat3": [{"prompt": [{"role": "user", "content": "What is 12 squared?"},
                              {"role": "assistant", "content": "144. " + "It is twelve times twelve. " * 10},
                              {"role": "user", "content": "And minus 5?"}],
                   "completions": [f"A: {LONG}", f"B: {LONG}"]}],
        "rank4": [{"prompt": "Rank these answers.", "completions": [f"{name}: {LONG}" for name in "ABCD"]}],
    }
    for name, rows in files.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        extra = ["--question", "ranking"] if name == "rank4" else []
        done = setup_cli("import", str(path), "--dataset", name, *extra, db_url=module_db_url)
        assert done.returncode == 0, done.stderr
    app = start_app(module_db_url, folder / "app.log", "--no-demo")
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


@pytest.mark.parametrize("dataset, selectors", [
    ("pairs", ["#label-left .rl-response", "#label-right .rl-response"]),
    ("chat3", ["#label-left .rl-response", "#label-right .rl-response", "#label-prompt .rl-turn:last-child"]),
    ("rank4", [f"#rank-text-{letter} .rl-response" for letter in "ABCD"]),
])
def test_the_first_lines_of_every_answer_are_on_screen_above_the_choice_bar(layout_app, chromium, dataset, selectors):
    for width, height in VIEWPORTS:
        context = chromium.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        try:
            page.goto(layout_app.url)
            page.locator("#label-current").get_by_text("#").wait_for()
            page.reload()  # a returning annotator: the guidelines were seen and stay folded to one line
            page.locator("#label-current").get_by_text("#").wait_for()
            _choose(page, "label-dataset", dataset)
            page.locator(selectors[0]).get_by_text("Paragraph 0" if "rank" not in dataset else ":").first.wait_for()
            # The layout settles (fonts, scroll positions, the loading overlays of events still running, which
            # take longer on a busy machine): the check below runs once every line is on screen and on top, or
            # after 15 s, whichever comes first.
            try:
                page.wait_for_function(f"(selectors) => ({FIRST_LINES})(selectors).every("
                                       "(line) => !line.missing && line.inside && line.onTop)", arg=selectors,
                                       timeout=15_000)
            except PlaywrightTimeoutError:
                pass  # the assertions below say which line and what covers it
            save_screenshot(page, f"layout-{dataset}-{width}x{height}")
            found = page.evaluate(FIRST_LINES, selectors)
            for line in found:
                assert not line.get("missing"), line
                assert line["inside"], f"{dataset} at {width}x{height}: {line['selector']} starts off screen: {line}"
                assert line["onTop"], f"{dataset} at {width}x{height}: {line['selector']} is covered: {line}"
                assert line["barHeight"] <= MAX_BAR_HEIGHT, f"the choice bar is {line['barHeight']} px high"
        finally:
            context.close()


def test_a_refusal_in_the_choice_bar_keeps_it_one_line_high(layout_app, chromium):
    """A stale-tab refusal with "Change it" grew the bar to ~370 px; now it stays within the bar's height."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    first, second = context.new_page(), context.new_page()
    try:
        for page in (first, second):
            page.goto(layout_app.url)
            _choose(page, "label-dataset", "chat3")
            page.locator("#label-left .rl-response").get_by_text("Paragraph 0").first.wait_for()
        first.locator("#btn-left").click()
        first.locator("#label-status").get_by_text("Saved").wait_for()
        second.locator("#btn-right").click()  # the same item, from a tab that still shows it unlabeled
        second.locator("#btn-change-it").wait_for()
        bar = second.evaluate("() => document.querySelector('#label-choice-bar').getBoundingClientRect().height")
        assert bar <= MAX_BAR_HEIGHT, f"the bar grew to {bar} px with the refusal"
        save_screenshot(second, "layout-refusal")
    finally:
        context.close()
