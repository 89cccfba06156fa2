"""The active-learning loop in a real browser: a dataset ordered by its model's uncertainty, three
labels in the Label tab trigger a retrain (run by the app's scheduler), the new version is promoted,
and the Team tab's loop page shows the versions' learning curve and, on demand, the reliability of
the promoted model on labels it has not seen. Oracles: SQL on the store and the page's text."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect
from conftest import run_cli, save_screenshot, setup_cli, sql
from test_browser_datasets import _choose
from test_import import write_jsonl
from test_training import separable_pairs

from storage.engine import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _wait_until(condition, seconds: float = 240) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(1)


def test_labels_trigger_a_retrain_and_the_loop_page_shows_versions_and_reliability(db_url, tmp_path, page):
    from conftest import start_app

    rows = separable_pairs(30)
    pool = [{"prompt": r["prompt"], "completions": [r["chosen"][0]["content"], r["rejected"][0]["content"]]}
            for r in rows[18:]]
    # 18 seed pairs + 3 labels: a quarter held out fills the loop's minimum of 5 pairs to judge the retrain.
    for name, data in (("seed", rows[:18]), ("pool", pool)):
        done = setup_cli("import", str(write_jsonl(tmp_path / f"{name}.jsonl", data)), "--dataset", "loop", db_url=db_url)
        assert done.returncode == 0, done.stderr
    trained = run_cli("train", "--dataset", "loop", "--max-steps", "20", "--output-name", "seed-rm", "--eval-fraction",
                      "0.25", db_url=db_url)
    assert trained.returncode == 0, trained.stderr
    configured = setup_cli("datasets", "loop", "--order", "uncertainty", "--model", "latest", "--random-fraction", "0.2",
                         "--retrain-every", "3", "--promotion-tolerance", "1", db_url=db_url)
    assert configured.returncode == 2 and "needs a model" in configured.stderr  # nothing promoted yet
    configured = setup_cli("datasets", "loop", "--order", "uncertainty", "--model", "seed-rm", "--random-fraction", "0.2",
                         "--retrain-every", "3", "--promotion-tolerance", "1", "--min-heldout-pairs", "5", db_url=db_url)
    assert configured.returncode == 0, configured.stderr
    assert "rescore job" in configured.stdout
    setup_cli("datasets", "loop", "--model", "latest", db_url=db_url)
    store = Store(db_url)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        # The scheduler runs the rescore job: every open comparison gets a key.
        _wait_until(lambda: sql(store, "SELECT count(*) FROM trainingjob WHERE kind = 'rescore' AND status = 'queued'")
                    == [(0,)] and sql(store, "SELECT count(*) FROM comparison WHERE queue_key IS NULL AND done = false "
                                             "AND dataset_id = (SELECT id FROM dataset WHERE name = 'loop')") == [(0,)])
        lowest = sql(store, "SELECT id FROM comparison WHERE done = false ORDER BY priority DESC, queue_key, id LIMIT 1")[0][0]
        page.goto(app.url)
        _choose(page, "label-dataset", "loop")
        page.locator("#label-current").get_by_text(f"Comparison #{lowest}").wait_for()  # the least certain first
        for _ in range(3):
            page.locator("#label-current").get_by_text("Comparison #").wait_for()
            shown = int(re.search(r"#(\d+)", page.locator("#label-current").inner_text()).group(1))
            page.locator("#btn-left").click()
            page.locator("#label-status").get_by_text(f"Saved: #{shown}").wait_for()
        # Three human labels: the scheduler queues a retrain, runs it, and the loop promotes it.
        _wait_until(lambda: sql(store, "SELECT promoted_model FROM dataset WHERE name = 'loop'") == [("loop-loop",)])
        (note,), = sql(store, "SELECT note FROM trainingjob WHERE reward_model_name = 'loop-loop'")
        assert note.startswith("promoted")
        page.get_by_role("tab", name="Train").click()
        _wait_until(lambda: "promoted to the model of loop" in page.locator("#train-jobs").inner_text(), 60)
        page.get_by_role("tab", name="Team").click()
        _choose(page, "team-dataset", "loop")
        page.locator("#loop-status").get_by_text("promoted model: loop-loop").wait_for()
        page.locator("#loop-curve .js-plotly-plot").wait_for()
        assert "loop-loop" in page.locator("#loop-curve").inner_text()
        # The retrain scored seed-rm on the three labels it had not seen first: a per-arm accuracy point.
        assert "arm: accuracy on labels it had not seen" in page.locator("#loop-curve").inner_text()
        page.locator("#loop-evaluate").click()
        page.locator("#loop-reliability .js-plotly-plot").wait_for()
        page.locator("#loop-reliability").get_by_text("Reliability of loop-loop").wait_for()
        assert sql(store, "SELECT model_name FROM loopevaluation ORDER BY id") == [("seed-rm",), ("loop-loop",)]
        save_screenshot(page, "loop-page")

        # The admin (the local operator here) changes the loop from the page, with the command line's checks.
        page.get_by_text("Loop settings (admins)").click()
        page.locator("#loop-min-heldout input").fill("3")
        page.locator("#loop-save").click()
        page.locator("#loop-saved").get_by_text("the minimum of held-out pairs is 5 to 100000").wait_for()
        assert sql(store, "SELECT min_heldout_pairs FROM dataset WHERE name = 'loop'") == [(5,)]
        page.locator("#loop-min-heldout input").fill("40")
        page.locator("#loop-random-fraction input").fill("0.5")
        page.locator("#loop-tolerance input").fill("0.05")
        for field, typed in (("min-heldout", "40"), ("random-fraction", "0.5"), ("tolerance", "0.05")):
            expect(page.locator(f"#loop-{field} input")).to_have_value(typed)
        page.locator("#loop-save").click()
        # The page says what changed, read back from the store.
        page.locator("#loop-saved").get_by_text("held-out pairs at least 5 → 40").wait_for()
        assert "random arm 0.2 → 0.5" in page.locator("#loop-saved").inner_text()
        assert sql(store, "SELECT min_heldout_pairs, random_fraction, promotion_tolerance FROM dataset "
                          "WHERE name = 'loop'") == [(40, 0.5, 0.05)]
        page.locator("#loop-saved").get_by_text("rescore job").wait_for()  # the arms changed: the queue is re-scored
        page.locator("#loop-status").get_by_text("judged on at least 40 held-out pairs").wait_for()

        # The queue encoder is set from the page too, with the command line's check of the folder.
        page.locator("#loop-queue-encoder textarea").fill("no-such-encoder")
        page.locator("#loop-save").click()
        page.locator("#loop-saved").get_by_text("no registered model or folder inside the models folder").wait_for()
        assert "loop" not in json.loads(sql(store, "SELECT value FROM setting WHERE key = 'loop_queue_encoder'")[0][0])
        page.locator("#loop-queue-encoder textarea").fill("seed-rm")
        page.locator("#loop-refit-every input").fill("2")
        expect(page.locator("#loop-refit-every input")).to_have_value("2")
        page.locator("#loop-save").click()
        page.locator("#loop-saved").get_by_text("queue encoder none → seed-rm").wait_for()
        (stored,), = sql(store, "SELECT value FROM setting WHERE key = 'loop_queue_encoder'")
        assert json.loads(stored) == {"loop": {"folder": "seed-rm", "refit_every": 2}}
        page.locator("#loop-status").get_by_text("ranked by the frozen queue encoder seed-rm").wait_for()
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
        store.dispose()
