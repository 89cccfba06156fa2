"""Steps datasets (process supervision): importing traces split into steps, marking steps with the pairwise
rules (leases, overlap, stale screens, undo), and exporting TRL's stepwise rows. Oracles: SQL on the store,
the files the export writes, and rows worked out by hand."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, sql
from test_import import store_fingerprint, write_jsonl

from core.accounts import actor_for, add_user
from core.data.datasets import DatasetSettings, change_dataset_settings
from core.data.importer import ImportConfig, ImportRejected, import_file
from core.labeling.actions import (
    StaleScreen,
    label_stored,
    label_steps,
    mark_steps_and_next,
    next_comparison,
    undo_last_screen,
)
from core.labeling.steps import StepsView
from storage.queue import QueueError

TRACE = "<think>3 * 4 = 12.\n\n2 + 12 = 15.\n\nSo it is 15.</think>\n\nThe answer is 15."
TRACES = [
    {"prompt": "What is 2 + 3 * 4?", "completion": TRACE},
    {"prompt": "What is 1 + 1?", "steps": ["1 + 1 = 2.", "The answer is 2."]},
    {"prompt": "What is 5 - 3?", "completions": ["5 - 3 = 2.", "The answer is 3."], "labels": [True, False]},
]


def _json(value):  # noqa: ANN001, ANN202
    """A JSON column as SQL returns it: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def _actor(store, name: str, role: str = "annotator"):  # noqa: ANN001, ANN202
    add_user(store, name, role, "correct horse battery")
    return actor_for(store, name)


@pytest.fixture
def steps_store(store, tmp_path):  # noqa: ANN001, ANN201
    import_file(store, ImportConfig(write_jsonl(tmp_path / "s.jsonl", TRACES), dataset="proc", question="steps"))
    return store


def test_a_steps_import_stores_each_trace_once_with_step_spans_that_cut_the_stored_text_and_a_reimport_adds_nothing(
        steps_store, tmp_path):
    rows = sql(steps_store, "SELECT c.id, co.text, c.completion_a_id = c.completion_b_id FROM comparison c "
                            "JOIN completion co ON co.id = c.completion_a_id ORDER BY c.id")
    assert len(rows) == 3 and all(row[2] for row in rows)
    steps = {}
    for item_id, text, _ in rows:
        spans = sql(steps_store, f"SELECT char_start, char_end, in_answer FROM trace_step WHERE comparison_id = {item_id} "
                                 "ORDER BY position")
        steps[text] = [(text[a:b], bool(answer)) for a, b, answer in spans]
    assert steps[TRACE] == [("3 * 4 = 12.", False), ("2 + 12 = 15.", False), ("So it is 15.", False),
                            ("The answer is 15.", True)]
    assert steps["1 + 1 = 2.\n\nThe answer is 2."] == [("1 + 1 = 2.", False), ("The answer is 2.", True)]
    # TRL's stepwise labels arrive as the import source's marks
    assert [(name, choice, _json(steps)) for name, choice, steps in sql(
        steps_store, "SELECT u.name, l.choice, l.steps FROM label l JOIN \"user\" u ON u.id = l.annotator_id")] == [
        ("import:s.jsonl", "steps", {"marks": ["+", "-"], "final": None})]
    before = store_fingerprint(steps_store)
    import_file(steps_store, ImportConfig(write_jsonl(tmp_path / "s.jsonl", TRACES), dataset="proc"))
    assert store_fingerprint(steps_store) == before


def test_a_separator_rule_is_fixed_when_the_dataset_is_made_and_another_rule_is_refused(store, tmp_path):
    path = write_jsonl(tmp_path / "sep.jsonl", [{"prompt": "p", "completion": "Step 1: a. ### Step 2: b. ### Answer: c"}])
    import_file(store, ImportConfig(path, dataset="sep", question="steps", step_separator="text:###"))
    texts = [row[0] for row in sql(store, "SELECT substr(co.text, s.char_start + 1, s.char_end - s.char_start) FROM "
                                          "trace_step s JOIN comparison c ON c.id = s.comparison_id JOIN completion co "
                                          "ON co.id = c.completion_a_id ORDER BY s.position")]
    assert texts == ["Step 1: a.", "Step 2: b.", "Answer: c"]
    assert sql(store, "SELECT step_separator FROM dataset WHERE name = 'sep'") == [("text:###",)]
    with pytest.raises(ImportRejected, match="fixed when it was made"):
        import_file(store, ImportConfig(path, dataset="sep", question="steps", step_separator="regex:Step"))


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "steps": ["x"] * 201}, "field 'steps' has 201 steps; the limit is 200"),
    ({"prompt": "p", "steps": ["ok", "   "]}, "field 'steps[1]' is empty"),
    ({"prompt": "p", "steps": ["ok", "y" * 50_001]}, "field 'steps[1]' is 50,001 characters long; the limit is 50,000"),
    ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, "'labels' has 1 values but 'completions' has 2"),
    ({"prompt": "p", "completions": ["a", "b"], "labels": [True, "yes"]}, "field 'labels[1]' must be true or false"),
    ({"prompt": "p", "completion": "\n\n  \n"}, "field 'completion' is empty"),
    ({"prompt": "p", "completion": "\n\n".join(f"step {i}" for i in range(201))}, "the trace has 201 steps"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "not a chosen/rejected pair"),
])
def test_hostile_step_rows_are_refused_by_line_and_nothing_is_written(store, tmp_path, row, message):
    good = {"prompt": "fine", "steps": ["a", "b"]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    before = store_fingerprint(store)
    with pytest.raises(ImportRejected) as refused:
        import_file(store, ImportConfig(path, dataset="proc", question="steps"))
    assert "bad.jsonl:2:" in str(refused.value) and message in str(refused.value)
    assert store_fingerprint(store) == before


def test_next_shows_the_steps_and_label_steps_stores_one_mark_per_step_and_refusals_name_the_step(steps_store):
    ann = _actor(steps_store, "ann")
    view = next_comparison(steps_store, ann, "proc")
    assert isinstance(view, StepsView)
    n = len(view.steps)
    with pytest.raises(QueueError, match=r"labels\[1\] \(step 2\) is 'x'"):
        label_steps(steps_store, ann, view.item_id, ["+", "x"] + ["+"] * (n - 2))
    with pytest.raises(QueueError, match=f"has {n + 1} marks but the trace has {n} steps"):
        label_steps(steps_store, ann, view.item_id, ["+"] * (n + 1))
    with pytest.raises(QueueError, match="is a reasoning trace of a steps dataset"):
        label_stored(steps_store, ann, view.item_id, "a")
    assert sql(steps_store, "SELECT count(*) FROM label l JOIN \"user\" u ON u.id = l.annotator_id WHERE u.name = 'ann'") \
        == [(0,)]
    marks = ["+", "-"] + [None] * (n - 2)
    result = label_steps(steps_store, ann, view.item_id, marks, final="wrong", comment="step 2 is off")
    assert result.changed and not label_steps(steps_store, ann, view.item_id, marks, final="wrong",
                                              comment="step 2 is off").changed
    stored = sql(steps_store, f"SELECT choice, steps, comment FROM label WHERE comparison_id = {view.item_id} "
                              "AND annotator_id = (SELECT id FROM \"user\" WHERE name = 'ann')")
    choice, steps, comment = stored[0]
    assert (choice, _json(steps), comment) == (
        "steps", {"marks": marks, "final": "wrong"}, "step 2 is off")


def test_overlap_holds_for_traces_and_a_third_annotator_gets_nothing_when_two_are_wanted(steps_store):
    change_dataset_settings(steps_store, _actor(steps_store, "boss", "admin"), "proc", DatasetSettings(overlap=2))
    first, second, third = (_actor(steps_store, name) for name in ("a1", "a2", "a3"))
    seen = {}
    for actor in (first, second):
        for _ in range(3):
            view = next_comparison(steps_store, actor, "proc")
            if view is None:
                break
            seen.setdefault(view.item_id, 0)
            seen[view.item_id] += 1
            label_steps(steps_store, actor, view.item_id, ["+"] * len(view.steps))
    # the imported trace (labeled by its source) needs one more; the other two need both annotators
    done = sql(steps_store, "SELECT count(*) FROM comparison WHERE done")
    assert done == [(3,)]
    assert next_comparison(steps_store, third, "proc") is None


def test_a_stale_screen_is_refused_and_undo_shows_the_trace_again(steps_store):
    ann = _actor(steps_store, "ann")
    view = next_comparison(steps_store, ann, "proc")
    n = len(view.steps)
    label_steps(steps_store, ann, view.item_id, ["+"] * n)  # labeled "in another tab"
    with pytest.raises(StaleScreen):
        mark_steps_and_next(steps_store, ann, view, ["-"] + [None] * (n - 1), dataset="proc")
    screen = mark_steps_and_next(steps_store, ann, view, ["-"] + [None] * (n - 1), dataset="proc",
                                 replace_existing=True)
    assert screen.view is not None and screen.view.item_id != view.item_id
    undone = undo_last_screen(steps_store, ann, "proc")
    assert undone.view.item_id == view.item_id and undone.view.existing is None
    assert sql(steps_store, f"SELECT count(*) FROM label WHERE comparison_id = {view.item_id} AND annotator_id = "
                            "(SELECT id FROM \"user\" WHERE name = 'ann')") == [(0,)]


def test_the_cli_imports_a_steps_file_and_refuses_a_separator_on_a_pairwise_import(db_url, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", TRACES)
    done = run_cli("import", str(path), "--dataset", "proc", "--question", "steps", db_url=db_url)
    assert done.returncode == 0, done.stderr
    assert "3 new traces" in done.stdout
    refused = run_cli("import", str(path), "--dataset", "pw", "--step-separator", "text:###", db_url=db_url)
    assert refused.returncode != 0 and "--step-separator is the split rule of a steps dataset" in refused.stderr


def test_stepwise_export_folds_marks_per_step_by_majority_cuts_at_the_first_unmarked_step_and_maps_neutral(
        steps_store, tmp_path):
    from core.data.exporter import ExportConfig, export_dataset

    change_dataset_settings(steps_store, _actor(steps_store, "boss", "admin"), "proc", DatasetSettings(overlap=3))
    voters = [_actor(steps_store, name) for name in ("v1", "v2", "v3")]
    item = sql(steps_store, "SELECT c.id FROM comparison c JOIN completion co ON co.id = c.completion_a_id "
                            f"WHERE co.text = '{TRACE}'")[0][0]
    # 4 steps; per step: [+,+,-] -> +, [0,0,+] -> 0, [-,-,None] -> -, [None,None,+] -> + (one reviewer)
    given = [["+", "0", "-", None], ["+", "0", "-", None], ["-", "+", None, "+"]]
    for actor, marks in zip(voters, given):
        label_steps(steps_store, actor, item, marks, final="wrong")
    rows = {}
    for neutral in ("correct", "wrong", "drop"):
        out = tmp_path / f"{neutral}.jsonl"
        export_dataset(steps_store, ExportConfig(out, format="stepwise", dataset=["proc"], neutral=neutral,
                                                 with_metadata=True))
        rows[neutral] = [json.loads(line) for line in out.read_text().splitlines()]
    by_prompt = {row["prompt"]: row for row in rows["correct"]}
    assert by_prompt["What is 2 + 3 * 4?"]["completions"] == ["3 * 4 = 12.", "2 + 12 = 15.", "So it is 15.",
                                                               "The answer is 15."]
    assert by_prompt["What is 2 + 3 * 4?"]["labels"] == [True, True, False, True]
    assert by_prompt["What is 2 + 3 * 4?"]["step_votes"]["v3"] == ["-", "+", None, "+"]
    assert by_prompt["What is 5 - 3?"]["labels"] == [True, False]  # imported TRL labels, unchanged
    assert "What is 1 + 1?" not in by_prompt  # never marked
    assert {r["prompt"]: r["labels"] for r in rows["wrong"]}["What is 2 + 3 * 4?"] == [True, False, False, True]
    assert "What is 2 + 3 * 4?" not in {r["prompt"] for r in rows["drop"]}
    # a pairwise export of the same dataset writes no trace as a pair
    from core.preferences.pairs import NothingToExport
    with pytest.raises(NothingToExport, match="traces of steps datasets"):
        export_dataset(steps_store, ExportConfig(tmp_path / "pairs.jsonl", dataset=["proc"]))


def test_a_trace_ends_at_its_last_labeled_step_after_first_error_labeling(steps_store, tmp_path):
    from core.data.exporter import ExportConfig, export_dataset

    ann = _actor(steps_store, "ann")
    item = sql(steps_store, "SELECT c.id FROM comparison c JOIN completion co ON co.id = c.completion_a_id "
                            f"WHERE co.text = '{TRACE}'")[0][0]
    label_steps(steps_store, ann, item, ["+", "-", None, None])
    out = tmp_path / "s.jsonl"
    report = export_dataset(steps_store, ExportConfig(out, format="stepwise", dataset=["proc"]))
    row = next(json.loads(line) for line in out.read_text().splitlines() if "2 + 3" in line)
    assert (row["completions"], row["labels"]) == (["3 * 4 = 12.", "2 + 12 = 15."], [True, False])
    assert report.left_out["steps after the last labeled one"] == 2


def test_team_step_agreement_matches_statsmodels_kappa_and_first_error_agreement_worked_by_hand(store, tmp_path):
    import numpy as np
    from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa

    from core.labeling.team_stats import team_report

    rows = [{"prompt": f"q{i}", "steps": [f"a{i}", f"b{i}", f"c{i}"]} for i in range(12)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", rows), dataset="agree", question="steps"))
    change_dataset_settings(store, _actor(store, "boss", "admin"), "agree", DatasetSettings(overlap=3))
    people = [_actor(store, name) for name in ("p1", "p2", "p3")]
    rng = __import__("random").Random(7)
    given = {}
    items = [row[0] for row in sql(store, "SELECT id FROM comparison ORDER BY id")]
    for item in items:
        for person in people:
            marks = [rng.choice(["+", "+", "0", "-"]) for _ in range(3)]
            label_steps(store, person, item, marks)
            given[(item, person.name)] = marks
    report = team_report(store, _actor_of(store, "boss"), dataset="agree").steps
    table = np.array([[sum(given[(item, p.name)][step] == mark for p in people) for mark in "+0-"]
                      for item in items for step in range(3)])
    assert report.steps_with_overlap == 36 and report.fleiss_kappa == pytest.approx(fleiss_kappa(table), abs=1e-9)
    pooled = np.zeros((3, 3))
    index = {"+": 0, "0": 1, "-": 2}
    for item in items:
        for a, b in ((0, 1), (0, 2), (1, 2)):
            for step in range(3):
                pooled[index[given[(item, people[a].name)][step]], index[given[(item, people[b].name)][step]]] += 1
    assert report.cohens_kappa == pytest.approx(cohens_kappa(pooled).kappa, abs=1e-9)

    def first(marks):  # noqa: ANN001, ANN202
        return next((k for k, m in enumerate(marks) if m == "-"), None)

    pairs = [(first(given[(item, people[a].name)]), first(given[(item, people[b].name)]))
             for item in items for a, b in ((0, 1), (0, 2), (1, 2))]
    assert report.annotator_pairs == 36
    assert report.first_error_exact == pytest.approx(sum(a == b for a, b in pairs) / 36)
    assert report.first_error_within_one == pytest.approx(
        sum(a == b or (a is not None and b is not None and abs(a - b) <= 1) for a, b in pairs) / 36)


def test_step_agreement_is_withheld_below_its_minimum_and_says_its_n(steps_store):
    from core.labeling.team_stats import team_report

    ann, bob = _actor(steps_store, "ann"), _actor(steps_store, "bob")
    change_dataset_settings(steps_store, _actor(steps_store, "boss", "admin"), "proc", DatasetSettings(overlap=2))
    item = next_comparison(steps_store, ann, "proc")
    for person in (ann, bob):
        label_steps(steps_store, person, item.item_id, ["+"] * len(item.steps))
    report = team_report(steps_store, _actor_of(steps_store, "boss"), dataset="proc").steps
    assert report.traces_with_overlap == 1 and report.fleiss_kappa is None and report.first_error_exact is None


def _actor_of(store, name: str):  # noqa: ANN001, ANN202
    return actor_for(store, name)


def test_my_labels_show_a_traces_marks_one_character_a_step(steps_store):
    from core.labeling.actions import history, screen_choice_of

    ann = _actor(steps_store, "ann")
    view = next_comparison(steps_store, ann, "proc")
    marks = ["+", "-"] + [None] * (len(view.steps) - 2)
    label_steps(steps_store, ann, view.item_id, marks, final="wrong")
    (item,) = history(steps_store, ann)
    assert screen_choice_of(item) == "steps +-" + "." * (len(view.steps) - 2) + " (answer wrong)"


def test_a_tied_step_folds_to_no_mark_and_the_exported_trace_ends_before_it(steps_store, tmp_path):
    from core.data.exporter import ExportConfig, export_dataset

    change_dataset_settings(steps_store, _actor(steps_store, "boss", "admin"), "proc", DatasetSettings(overlap=2))
    item = sql(steps_store, "SELECT c.id FROM comparison c JOIN completion co ON co.id = c.completion_a_id "
                            "WHERE co.text LIKE '1 + 1%'")[0][0]
    label_steps(steps_store, _actor(steps_store, "ann"), item, ["+", "+"])
    label_steps(steps_store, _actor(steps_store, "bob"), item, ["+", "-"])
    out = tmp_path / "tie.jsonl"
    export_dataset(steps_store, ExportConfig(out, format="stepwise", dataset=["proc"]))
    row = next(json.loads(line) for line in out.read_text().splitlines() if "1 + 1" in line)
    assert (row["completions"], row["labels"]) == (["1 + 1 = 2."], [True])
