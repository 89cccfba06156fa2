"""The app in a real browser: tabs, demo data counts, importing a file and exporting a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_screenshot

from core.data.demo_data import DEMO_CANDIDATES, DEMO_PREFERENCES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DEMO_COMPARISONS = len(DEMO_PREFERENCES) + sum(
    len(row["completions"]) * (len(row["completions"]) - 1) // 2 for row in DEMO_CANDIDATES
)


def _counts_row(page) -> list[str]:  # noqa: ANN001
    cells = page.locator("#store-counts tbody tr td").all_inner_texts()
    return [cell.strip() for cell in cells]


def test_page_shows_tabs_and_demo_counts(running_app, page):
    page.goto(running_app.url)
    for tab in ("Label", "Data", "Train", "Inspect"):
        page.get_by_role("tab", name=tab).wait_for()
    page.get_by_role("tab", name="Data").click()
    page.locator("#store-counts tbody").wait_for()
    prompts, completions, comparisons, labeled, waiting, labels, annotators = _counts_row(page)
    assert int(comparisons) == DEMO_COMPARISONS
    assert int(labeled) == len(DEMO_PREFERENCES)
    assert int(waiting) == DEMO_COMPARISONS - len(DEMO_PREFERENCES)
    save_screenshot(page, "data-tab")


def test_import_a_file_then_export_it(running_app, page, tmp_path: Path):
    good = tmp_path / "pairs.jsonl"
    good.write_text(
        "\n".join(
            json.dumps({"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad answer {i}."})
            for i in range(5)
        )
    )
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "Q?", "chosen": "A"}\n')

    page.goto(running_app.url)
    page.get_by_role("tab", name="Data").click()
    page.locator("#store-counts tbody").wait_for()
    before = int(_counts_row(page)[2])

    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.locator("#import-button").click()
    refused = page.locator("#import-result")
    refused.get_by_text("Import refused").wait_for()
    assert "broken.jsonl:1: field 'rejected' is missing" in refused.inner_text()
    assert int(_counts_row(page)[2]) == before

    page.locator("input[type=file]").first.set_input_files(str(good))
    page.locator("#import-button").click()
    page.locator("#import-result").get_by_text("Imported.").wait_for()
    page.wait_for_function(
        f"() => document.querySelector('#store-counts tbody td:nth-child(3)').innerText.trim() === '{before + 5}'"
    )
    save_screenshot(page, "data-tab-imported")

    # The demo pairs are chat and the new ones plain text: one dataset holds one kind, and export says so.
    page.locator("#export-button").click()
    page.locator("#export-result").get_by_text("Nothing exported.").wait_for()
    assert "plain-text" in page.locator("#export-result").inner_text()

    page.get_by_label("Prompts").click()
    page.get_by_role("option", name="text", exact=True).click()
    page.locator("#export-button").click()
    page.locator("#export-result").get_by_text("Exported.").wait_for()
    save_screenshot(page, "data-tab-exported")
    with page.expect_download() as download_info:
        page.locator("a[download]").first.click()
    downloaded = tmp_path / "downloaded.jsonl"
    download_info.value.save_as(downloaded)
    rows = [json.loads(line) for line in downloaded.read_text().splitlines()]
    assert rows == [
        {"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad answer {i}."} for i in range(5)
    ]
