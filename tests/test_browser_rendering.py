"""Readable completions in a real browser: Markdown and code render, each side scrolls by itself, the
choice buttons stay on screen at 900x800, and "Show raw text" shows the stored characters."""

from __future__ import annotations

import pytest
from conftest import start_app
from test_browser_label import _prepare, login, shown_comparison, wait_for_next

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CODE = '''def fibonacci(n: int) -> list[int]:
    """The first n Fibonacci numbers."""
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]  # a long comment that runs well past the width of the box, so it must scroll sideways
'''


def long_answer(name: str) -> str:
    paragraphs = "\n\n".join(
        f"Paragraph {i} of answer {name}: **bold words** and `inline code`, explained at some length so that "
        "the text wraps over several lines in a box of half the window's width." for i in range(12)
    )
    return (f"## Answer {name}\n\nThe steps:\n\n1. Start with **0 and 1**.\n2. Add the last two.\n\n"
            f"| n | value |\n|---|---:|\n| 1 | 0 |\n| 5 | 3 |\n\n```python\n{CODE}```\n\n{paragraphs}\n")


@pytest.fixture
def markdown_app(db_url, tmp_path):
    rows = [{"prompt": f"Explain Fibonacci, take {i}.", "completions": [long_answer(f"{i}a"), long_answer(f"{i}b"),
                                                                           long_answer(f"{i}c")]} for i in range(2)]
    _prepare(db_url, tmp_path, rows, {"ann": "annotator"})
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


# True when the element's own font draws narrow and wide letters at the same width: the font the
# browser really uses is monospace, whatever the font-family list says.
IS_MONOSPACE = """(element) => {
  const context = document.createElement('canvas').getContext('2d');
  context.font = getComputedStyle(element).font;
  return context.measureText('iiiiiiiiii').width === context.measureText('MMMMMMMMMM').width;
}"""


def test_label_tab_at_900x800_renders_markdown_scrolls_each_side_keeps_buttons_on_screen_and_shows_raw_text(
        markdown_app, chromium):
    context = chromium.new_context(viewport={"width": 900, "height": 800})
    page = context.new_page()
    try:
        login(page, markdown_app.url, "ann")
        page.locator("#label-left .rl-response").wait_for()
        first = shown_comparison(page)

        for side in ("#label-left", "#label-right"):
            box = page.locator(f"{side} .rl-response")
            assert box.locator("h2").count() == 1 and box.locator("table td").count() == 4
            code = box.locator("pre.rl-code")
            assert code.count() == 1
            assert code.evaluate(IS_MONOSPACE)
            assert code.evaluate("(el) => getComputedStyle(el).whiteSpace") == "pre"
            assert code.locator("span").count() > 5  # highlighted tokens
            assert "    numbers = [0, 1]" in code.inner_text()  # indentation kept
            # Each side is its own scroll box, taller inside than on screen.
            overflow, scroll_height, client_height = box.evaluate(
                "(el) => [getComputedStyle(el).overflowY, el.scrollHeight, el.clientHeight]")
            assert overflow == "auto" and scroll_height > client_height
            assert "**" not in box.inner_text()  # Markdown is rendered, not shown as characters

        # The choice buttons are on screen without scrolling the page.
        assert page.evaluate("window.scrollY") == 0
        for button in ("#btn-left", "#btn-right", "#btn-tie", "#btn-both-bad", "#btn-skip"):
            box = page.locator(button).bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800, (button, box)
        # Nothing sticks out sideways: not the page, and not a side or a button cut off by Gradio's
        # container (which clips what overflows it).
        assert page.evaluate("document.documentElement.scrollWidth") <= 900
        for element in ("#label-left .rl-response", "#label-right .rl-response", "#btn-undo", "#label-raw"):
            box = page.locator(element).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 900, (element, box)
        page.screenshot(path="/tmp/render-markdown.png")
        page.locator("#label-left .rl-response").evaluate("(el) => el.scrollTop = 400")
        page.screenshot(path="/tmp/render-scrolled.png")

        page.locator("#label-raw input").check()
        for side in ("#label-left", "#label-right"):
            shown = page.locator(f"{side} .rl-response").inner_text()
            assert "**0 and 1**" in shown and "```python" in shown
        page.screenshot(path="/tmp/render-raw.png")

        # The toggle stays on for the next comparison.
        page.locator("#btn-left").click()
        wait_for_next(page, first)
        assert page.locator("#label-raw input").is_checked()
        # The new comparison starts at its top, not where the last one was scrolled to.
        page.wait_for_function("() => document.querySelector('#label-left .rl-response').scrollTop === 0")
        assert "**bold words**" in page.locator("#label-left .rl-response").inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= 900
        page.screenshot(path="/tmp/render-raw-next.png")
    finally:
        context.close()
