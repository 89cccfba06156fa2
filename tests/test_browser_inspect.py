"""The Inspect tab in a real browser, on a fresh app: the demo reward model trains itself in the
background, and a demo pair gets its table, flips and trajectory chart."""

from __future__ import annotations

import time

import pytest
from conftest import save_screenshot

from storage.engine import Store
from storage.registry import list_models

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def wait_for_demo_model(db_url: str, seconds: float = 240) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        store = Store(db_url)
        with store.read() as session:
            names = [model.name for model in list_models(session)]
        store.dispose()
        if names:
            return names[0]
        time.sleep(1)
    raise AssertionError("the demo reward model was not registered in time")


def test_inspect_a_demo_pair(fresh_app, page, db_url):
    page.goto(fresh_app.url)  # before the demo model is registered: opening the tab lists it, no button needed
    page.get_by_role("tab", name="Label").wait_for()
    name = wait_for_demo_model(db_url)
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#inspect-models").get_by_text(name).wait_for()
    page.locator("#inspect-demo").click()
    page.wait_for_function("() => document.querySelector('#inspect-a textarea').value.includes('</think>')")
    page.locator("#inspect-run").click()
    page.locator("#inspect-status").get_by_text("Scored 2 responses.").wait_for(timeout=60_000)
    rows = page.locator("#inspect-table [role=row]").filter(has_text=name)
    assert rows.count() == 2
    first = rows.nth(0).inner_text()
    assert name in first and "A" in first
    # The demo model was trained to prefer the chosen (A) response.
    rewards = [float(rows.nth(i).locator("[role=gridcell], td").nth(2).inner_text()) for i in range(2)]
    assert rewards[0] > rewards[1]
    page.locator("#inspect-chart .js-plotly-plot").wait_for()
    assert page.locator("#inspect-chart .scatterlayer .trace").count() == 2
    assert "</think>" in page.locator("#inspect-chart").inner_text()
    page.get_by_text("What the model sees").click()
    page.locator("#inspect-model-view").get_by_text("<|im_start|>assistant").first.wait_for()
    save_screenshot(page, "inspect-tab")

    # A response longer than the model's max_length gets no reward, and no verdict is drawn from it.
    page.locator("#inspect-b textarea").fill("<think>" + "let me count the words again " * 400 + "</think> It is 4.")
    page.locator("#inspect-b textarea").press("Tab")  # the box commits its value before the click
    page.locator("#inspect-run").click()
    # The status reads "Scored 2 responses." after either run: wait for the new table itself.
    page.wait_for_function("() => document.querySelector('#inspect-table')?.innerText.includes('yes: no reward')",
                           timeout=120_000)
    rows = page.locator("#inspect-table [role=row]").filter(has_text=name)
    over = rows.nth(1).inner_text()
    assert "yes: no reward" in over and "answer alone" in over
    assert rows.nth(1).locator("[role=gridcell], td").nth(2).inner_text().strip() == "—"
    flips = page.locator("#inspect-flips").inner_text()
    assert "No verdict on flips" in flips and "n = 0" in flips and "response B" in flips
    assert page.locator("#inspect-chart .scatterlayer .trace").count() == 1  # no trajectory for B
    save_screenshot(page, "inspect-over-length")


def test_diagnose_the_demo_pairs_and_send_one_back(running_app, page, db_url):
    name = wait_for_demo_model(db_url)
    page.goto(running_app.url)  # the model list is read when the page loads
    page.get_by_role("tab", name="Inspect").click()
    page.get_by_text("Dataset diagnostics").click()
    page.wait_for_function("(n) => document.querySelector('#diag-model input')?.value === n", arg=name)
    page.locator("#diag-run").click()
    page.locator("#diag-summary").get_by_text("labeled comparisons").wait_for(timeout=60_000)
    text = page.locator("#diag-summary").inner_text()
    assert name in text and "accuracy" in text
    page.locator("#diag-review-ids input, #diag-review-ids textarea").first.fill("20")
    page.locator("#diag-send").click()
    page.locator("#diag-send-status").get_by_text("Sent 1 comparison(s) back").wait_for()
    save_screenshot(page, "diagnostics")
