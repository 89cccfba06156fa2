"""A team's day with two datasets of different kinds in one store, in a real browser: label in each,
train on each, export each with and without metadata, browse the records and change a label from
the record view. The oracles are SQL on the store and the downloaded files."""

from __future__ import annotations

import json
import re

import pytest
from conftest import save_screenshot, setup_cli, sql
from test_import import write_jsonl

from storage.engine import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEXT_ROWS = [{"prompt": f"Text question {i}?", "completions": [f" plain answer {i}", f" other answer {i}"]} for i in range(4)]
CHAT_ROWS = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Chat question {i}?"}],
              "completions": [{"text": f"**Yes** {i}", "model": "m-yes"}, {"text": f"No {i}", "model": "m-no"}]}
             for i in range(4)]


def _choose(page, dropdown_id: str, option: str) -> None:  # noqa: ANN001
    """Pick the option whose label starts with ``option``, typing it to filter the list as a user would."""
    field = page.locator(f"#{dropdown_id} input")
    wanted = page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}\b")).first
    for _ in range(3):  # the list may be re-rendered while its choices arrive; open it again then
        field.click()
        field.fill(option)
        try:
            wanted.click(timeout=5_000)
            return
        except Exception:  # noqa: BLE001
            page.keyboard.press("Escape")
    wanted.click()


def _clear_choices(page, dropdown_id: str) -> None:  # noqa: ANN001
    """Remove every chosen value of a multiselect dropdown (its chips' remove buttons)."""
    chips = page.locator(f"#{dropdown_id} .token-remove")
    while chips.count():
        chips.first.click()


def _labels_in(store: Store, dataset: str) -> int:
    return sql(store, "SELECT count(*) FROM label l JOIN comparison c ON c.id = l.comparison_id "
                      f"JOIN dataset d ON d.id = c.dataset_id WHERE d.name = '{dataset}'")[0][0]


def _download(page, tmp_path, name: str) -> list[dict]:  # noqa: ANN001
    with page.expect_download() as download_info:
        page.locator("#export-file a[download]").first.click()
    path = tmp_path / name
    download_info.value.save_as(path)
    assert download_info.value.suggested_filename.startswith("preferences-")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_two_datasets_of_different_kinds_are_labeled_trained_exported_and_browsed(db_url, tmp_path, page):
    from conftest import start_app

    for rows, dataset in ((TEXT_ROWS, "texts"), (CHAT_ROWS, "chats")):
        done = setup_cli("import", str(write_jsonl(tmp_path / f"{dataset}.jsonl", rows)), "--dataset", dataset, db_url=db_url)
        assert done.returncode == 0, done.stderr
    store = Store(db_url)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        page.goto(app.url)
        page.locator("#label-current").get_by_text("Comparison #").wait_for()  # the page has loaded its datasets
        # Label every comparison of each dataset, choosing the dataset first.
        for dataset in ("chats", "texts"):
            _choose(page, "label-dataset", dataset)
            page.locator("#label-progress").get_by_text(f"dataset {dataset}").wait_for()
            for n in range(4):
                page.locator("#label-current").get_by_text("Comparison #").wait_for()
                shown = int(re.search(r"#(\d+)", page.locator("#label-current").inner_text()).group(1))
                assert sql(store, f"SELECT d.name FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                                  f"WHERE c.id = {shown}") == [(dataset,)]
                page.locator("#btn-left" if n % 2 == 0 else "#btn-right").click()
                page.locator("#label-status").get_by_text(f"Saved: #{shown} ").wait_for()
            page.locator("#label-prompt").get_by_text("Nothing left for you to label").wait_for()
            assert _labels_in(store, dataset) == 4
        save_screenshot(page, "datasets-label-done")

        # Train one model on each dataset.
        page.get_by_role("tab", name="Train").click()
        for job, dataset in enumerate(("chats", "texts"), start=1):
            page.get_by_label("max steps").fill("3")
            page.get_by_label("output name").fill(f"rm-{dataset}")
            _clear_choices(page, "train-datasets")
            _choose(page, "train-datasets", dataset)
            page.locator("#train-start").click()
            page.locator("#train-form-status").get_by_text(f"Job {job} queued").wait_for()
            page.locator("#train-progress").get_by_text(re.compile(rf"Job {job}\b.*succeeded")).wait_for(timeout=300_000)
        save_screenshot(page, "datasets-trained")
        trained = dict(sql(store, "SELECT name, n_pairs FROM rewardmodel ORDER BY name"))
        assert set(trained) == {"rm-chats", "rm-texts"}
        configs = {row[0]: row[1] for row in sql(store, "SELECT name, config FROM rewardmodel")}
        assert all(json.loads(c)["dataset"] if isinstance(c, str) else c["dataset"] for c in configs.values())

        # Export each dataset, with and without the evidence.
        page.get_by_role("tab", name="Data").click()
        page.locator("#data-datasets").get_by_text("chats").wait_for()
        exported = {}
        for dataset, metadata in (("chats", True), ("texts", False)):
            _clear_choices(page, "export-datasets")
            _choose(page, "export-datasets", dataset)
            page.locator("#export-metadata input").set_checked(metadata)
            page.locator("#export-button").click()
            page.locator("#export-result").get_by_text("Exported.").wait_for()
            exported[dataset] = _download(page, tmp_path, f"{dataset}.jsonl")
            page.locator("#export-result").get_by_text("Exported.").wait_for()
        assert len(exported["chats"]) == 4 and {row["dataset"] for row in exported["chats"]} == {"chats"}
        assert all(row["labels"][0]["annotator"] == "local" for row in exported["chats"])
        assert {row["chosen_model"] for row in exported["chats"]} <= {"m-yes", "m-no"}
        assert all(set(row) == {"prompt", "chosen", "rejected", "margin"} for row in exported["texts"])
        assert all(isinstance(row["prompt"], str) for row in exported["texts"])
        save_screenshot(page, "datasets-exported")

        # Browse the chat records, open one, and change the label from the record view.
        _choose(page, "records-dataset", "chats")
        page.locator("#records-search").click()
        page.locator("#records-found").get_by_text("4 matching").wait_for()
        # Gradio keeps a hidden copy of each cell for measuring; the visible one is the span.
        page.locator("#records-table span.text", has_text=re.compile(r"^Chat question \d\?$")).first.click()
        page.locator("#records-labels span.text", has_text="local").first.wait_for()
        comparison_id = int(page.locator("#records-selected textarea, #records-selected input").first.input_value().split(",")[0])
        stored = sql(store, f"SELECT choice FROM label WHERE comparison_id = {comparison_id}")[0][0]
        other = "b" if stored == "a" else "a"
        page.locator("#records-my-choice").get_by_label(f"{other.upper()} is better").check()
        page.locator("#records-save-mine").click()
        page.locator("#records-action").get_by_text("Saved").wait_for()
        assert sql(store, f"SELECT choice FROM label WHERE comparison_id = {comparison_id}") == [(other,)]
        save_screenshot(page, "datasets-record-changed")
    finally:
        app.process.terminate()
        app.process.wait(timeout=20)
