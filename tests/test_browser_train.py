"""Training from the Train tab in a real browser: check the data, start a job, watch the chart
grow while it runs, and see it finish with a registered model."""

from __future__ import annotations

import re

import pytest
from conftest import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_start_a_job_watch_it_learn_and_finish(running_app, page):
    page.goto(running_app.url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-check").click()
    page.locator("#train-form-status").get_by_text(re.compile(r"pairs train and \d+ evaluate")).wait_for(timeout=60_000)
    assert "suggested learning rate" in page.locator("#train-form-status").inner_text()

    steps = page.get_by_label("max steps")
    steps.fill("60")
    page.get_by_label("output name").fill("browser-rm")
    page.locator("#train-start").click()
    page.locator("#train-form-status").get_by_text(re.compile(r"Job \d+ queued")).wait_for()

    # The chart grows while the job runs: more points appear between two refreshes.
    page.locator("#train-progress").get_by_text("running").wait_for(timeout=60_000)
    page.locator("#train-chart .scatterlayer .trace").first.wait_for(timeout=90_000)
    first = page.locator("#train-chart .scatterlayer .point").count()
    save_screenshot(page, "train-running")
    page.locator("#train-progress").get_by_text("succeeded").wait_for(timeout=240_000)
    last = page.locator("#train-chart .scatterlayer .point").count()
    assert last > first > 0
    assert "browser-rm" in page.locator("#train-progress").inner_text()
    assert "succeeded" in page.locator("#train-jobs").inner_text()
    save_screenshot(page, "train-finished")
