"""Datasets as a team uses them: text and chat in one store, per-dataset overlap, lease, priority,
annotators and archive; exports and training per dataset; the record browser; stale screens.
Oracles are plain SQL on the store and the files the commands write."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from conftest import run_cli, sql
from test_import import store_fingerprint, write_jsonl

from core.accounts import PermissionDenied, actor_for, add_user
from core.data.datasets import DatasetSettings, change_dataset_settings, datasets_for
from core.data.exporter import export_for_download
from core.data.importer import ImportConfig, ImportRejected, import_file
from core.data.records import (
    RecordError,
    RecordFilter,
    archive_records,
    browse,
    change_priority,
    record_detail,
    send_back,
)
from core.labeling.actions import StaleScreen, label_and_next, label_on_screen, next_comparison
from core.training.config import TrainingConfig
from core.jobs.scheduling import submit_job
from storage.datasets import DatasetError

TEXT_PAIRS = [{"prompt": f"T{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(3)]
CHAT_CANDIDATES = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"C{i}?"}],
     "completions": [{"text": f"yes {i}", "model": "m-yes"}, {"text": f"no {i}", "model": "m-no"}]}
    for i in range(4)
]


def _actor(store, name: str, role: str = "annotator"):  # noqa: ANN001, ANN202
    add_user(store, name, role, "correct horse battery")
    return actor_for(store, name)


@pytest.fixture
def two_kinds(store, tmp_path):  # noqa: ANN001, ANN201
    """Dataset 'default' with 3 imported text pairs (labeled), dataset 'chats' with 4 chat pairs to label."""
    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", TEXT_PAIRS)))
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", CHAT_CANDIDATES), dataset="chats"))
    return store


def _dataset_of(store, comparison_id: int) -> str:  # noqa: ANN001
    return sql(store, f"SELECT d.name FROM comparison c JOIN dataset d ON d.id = c.dataset_id WHERE c.id = {comparison_id}")[0][0]


def test_a_file_of_the_other_prompt_kind_is_refused_by_a_dataset_and_nothing_is_written(two_kinds, tmp_path):
    before = store_fingerprint(two_kinds)
    for dry_run in (True, False):
        with pytest.raises(ImportRejected, match="dataset 'chats' holds chat prompts.*has text prompts.*--dataset"):
            import_file(two_kinds, ImportConfig(write_jsonl(tmp_path / "more.jsonl", TEXT_PAIRS), dataset="chats",
                                                dry_run=dry_run))
    assert store_fingerprint(two_kinds) == before
    assert sql(two_kinds, "SELECT name, prompt_kind FROM dataset ORDER BY name") == [("chats", "chat"), ("default", "text")]


def test_the_same_pair_imported_into_two_datasets_is_one_comparison_in_each(store, tmp_path):
    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", TEXT_PAIRS)))
    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", TEXT_PAIRS), dataset="copy"))
    import_file(store, ImportConfig(write_jsonl(tmp_path / "t.jsonl", TEXT_PAIRS), dataset="copy"))
    assert sql(store, "SELECT d.name, count(*) FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                      "GROUP BY d.name ORDER BY d.name") == [("copy", 3), ("default", 3)]
    assert sql(store, "SELECT count(*) FROM prompt") == [(3,)]


def test_an_annotator_is_given_comparisons_of_the_dataset_they_chose_only(two_kinds, tmp_path):
    urgent_text = [{"prompt": f"U{i}?", "completions": [f" p{i}", f" q{i}"]} for i in range(3)]
    import_file(two_kinds, ImportConfig(write_jsonl(tmp_path / "u.jsonl", urgent_text), dataset="texts", priority=99))
    ann = _actor(two_kinds, "ann")
    seen = set()
    while (view := next_comparison(two_kinds, ann, dataset="chats")) is not None:
        seen.add(_dataset_of(two_kinds, view.comparison_id))
        label_on_screen(two_kinds, ann, view, "left")
    assert seen == {"chats"}
    assert sql(two_kinds, "SELECT count(*) FROM label l JOIN \"user\" u ON u.id = l.annotator_id WHERE u.name = 'ann'") == [(4,)]


def test_raising_one_datasets_overlap_reopens_its_human_labels_and_never_its_imported_pairs(two_kinds, tmp_path):
    import_file(two_kinds, ImportConfig(write_jsonl(tmp_path / "p.jsonl", TEXT_PAIRS[:1]), dataset="chats-text"))
    ann, admin = _actor(two_kinds, "ann"), _actor(two_kinds, "boss", "admin")
    while (view := next_comparison(two_kinds, ann, dataset="chats")) is not None:
        label_on_screen(two_kinds, ann, view, "left")
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(overlap=2))
    change_dataset_settings(two_kinds, admin, "default", DatasetSettings(overlap=3))
    waiting = "SELECT d.name, sum(CASE WHEN c.done THEN 0 ELSE 1 END) FROM comparison c JOIN dataset d ON d.id = c.dataset_id GROUP BY d.name ORDER BY d.name"
    # chats: 4 labeled once, now wanting a second person; default (imported labeled pairs): none reopen.
    assert sql(two_kinds, waiting) == [("chats", 4), ("chats-text", 0), ("default", 0)]
    bob = _actor(two_kinds, "bob")
    handed = []
    while (view := next_comparison(two_kinds, bob)) is not None:
        handed.append(_dataset_of(two_kinds, view.comparison_id))
        label_on_screen(two_kinds, bob, view, "right")
    assert handed == ["chats"] * 4


def test_a_dataset_named_for_some_annotators_is_not_handed_to_others_and_refuses_their_labels(two_kinds):
    ann, bob, admin = _actor(two_kinds, "ann"), _actor(two_kinds, "bob"), _actor(two_kinds, "boss", "admin")
    view = next_comparison(two_kinds, ann, dataset="chats")
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(open_to_all=False, members=("bob",)))
    with pytest.raises(DatasetError, match="^no dataset named 'chats' is open to you$"):
        next_comparison(two_kinds, ann, dataset="chats")
    with pytest.raises(DatasetError, match="^no dataset named 'nope' is open to you$"):  # the same words: no hint
        next_comparison(two_kinds, ann, dataset="nope")
    assert next_comparison(two_kinds, ann) is None
    with pytest.raises(ValueError, match="not open to you"):
        label_on_screen(two_kinds, ann, view, "left")
    assert next_comparison(two_kinds, bob, dataset="chats") is not None
    assert sql(two_kinds, "SELECT count(*) FROM label l JOIN \"user\" u ON u.id = l.annotator_id WHERE u.role <> 'source'") == [(0,)]
    assert [summary.name for summary in datasets_for(two_kinds, ann)] == ["default"]


def test_an_archived_dataset_hands_out_nothing(two_kinds):
    ann, admin = _actor(two_kinds, "ann"), _actor(two_kinds, "boss", "admin")
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(archived=True))
    assert next_comparison(two_kinds, ann) is None
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(archived=False))
    assert next_comparison(two_kinds, ann) is not None


def test_a_lease_lasts_its_datasets_lease_length(two_kinds):
    ann, admin = _actor(two_kinds, "ann"), _actor(two_kinds, "boss", "admin")
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(lease_seconds=60))
    before = datetime.now(timezone.utc)
    next_comparison(two_kinds, ann, dataset="chats")
    (expires,) = sql(two_kinds, "SELECT expires_at FROM lease")[0]
    expires = expires if isinstance(expires, datetime) else datetime.fromisoformat(expires)
    expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)  # SQLite keeps UTC without a zone
    assert 55 <= (expires - before).total_seconds() <= 65


def test_an_import_without_a_priority_takes_the_datasets_default_priority(store, tmp_path):
    admin = _actor(store, "boss", "admin")
    import_file(store, ImportConfig(write_jsonl(tmp_path / "a.jsonl", CHAT_CANDIDATES[:1]), dataset="d"))
    change_dataset_settings(store, admin, "d", DatasetSettings(default_priority=7))
    import_file(store, ImportConfig(write_jsonl(tmp_path / "b.jsonl", CHAT_CANDIDATES[1:2]), dataset="d"))
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", CHAT_CANDIDATES[2:3]), dataset="d", priority=-1))
    assert sql(store, "SELECT priority FROM comparison ORDER BY id") == [(0,), (7,), (-1,)]


def test_only_admins_change_dataset_settings(two_kinds):
    for role in ("annotator", "engineer"):
        with pytest.raises(PermissionDenied):
            change_dataset_settings(two_kinds, _actor(two_kinds, f"x-{role}", role), "chats", DatasetSettings(overlap=2))
    assert sql(two_kinds, "SELECT overlap FROM dataset WHERE name = 'chats'") == [(1,)]


def test_the_datasets_command_lists_counts_and_changes_settings(two_kinds, db_url, tmp_path):
    ann = _actor(two_kinds, "ann")
    label_on_screen(two_kinds, ann, next_comparison(two_kinds, ann, dataset="chats"), "left")
    guidelines = tmp_path / "g.md"
    guidelines.write_text("# Chat rules\nBe strict.", encoding="utf-8")
    changed = run_cli("datasets", "chats", "--overlap", "2", "--guidelines", str(guidelines), "--annotators", "ann",
                      db_url=db_url)
    assert changed.returncode == 0, changed.stderr
    assert sql(two_kinds, "SELECT overlap, guidelines, open_to_all FROM dataset WHERE name = 'chats'") == [
        (2, "# Chat rules\nBe strict.", False)]
    listing = run_cli("datasets", db_url=db_url)
    lines = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    # name kind question items labeled waiting labels overlap
    assert lines["chats"][:8] == ["chats", "chat", "pairwise", "4", "1", "4", "1", "2"]
    assert lines["default"][:8] == ["default", "text", "pairwise", "3", "3", "0", "3", "1"]
    refused = run_cli("datasets", "chats", "--overlap", "0", db_url=db_url)
    assert refused.returncode == 2 and "overlap must be between 1 and 10" in refused.stderr
    assert sql(two_kinds, "SELECT overlap FROM dataset WHERE name = 'chats'") == [(2,)]


def test_export_with_metadata_carries_each_vote_comment_model_and_source(two_kinds, db_url, tmp_path):
    ann, bob = _actor(two_kinds, "ann"), _actor(two_kinds, "bob")
    view = next_comparison(two_kinds, ann, dataset="chats")
    label_on_screen(two_kinds, ann, view, "left", strength="clearly", comment="left is right", seconds_spent=4.5)
    stored_winner = view.left
    done = run_cli("export", str(tmp_path / "out.jsonl"), "--dataset", "chats", "--with-metadata", db_url=db_url)
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["chosen"] == [{"role": "assistant", "content": stored_winner.text}]
    assert row["chosen_model"] == stored_winner.model and row["rejected_model"] == view.right.model
    assert (row["comparison_id"], row["dataset"], row["source"]) == (view.comparison_id, "chats", "import:c.jsonl")
    (vote,) = row["labels"]
    assert {k: vote[k] for k in ("annotator", "vote", "strength", "comment", "seconds")} == {
        "annotator": "ann", "vote": "chosen", "strength": "clearly", "comment": "left is right", "seconds": 4.5}
    assert datetime.fromisoformat(vote["time"])
    plain = run_cli("export", str(tmp_path / "plain.jsonl"), "--dataset", "chats", db_url=db_url)
    assert plain.returncode == 0
    assert set(json.loads((tmp_path / "plain.jsonl").read_text().splitlines()[0])) == {"prompt", "chosen", "rejected", "margin"}
    assert bob  # a second annotator exists but has not voted: only real votes are listed


def test_a_download_is_named_after_its_datasets_and_time(two_kinds):
    engineer = _actor(two_kinds, "eng", "engineer")
    path, _ = export_for_download(two_kinds, engineer, format="jsonl", prompt_format="auto", test_size=0.0,
                                  datasets=["default"], with_metadata=True)
    assert path.name.startswith("preferences-default-metadata-20") and path.suffix == ".jsonl"
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["dataset"] == "default"


def test_training_on_datasets_of_two_prompt_kinds_is_refused_before_a_job_is_queued(two_kinds):
    engineer = _actor(two_kinds, "eng", "engineer")
    with pytest.raises(DatasetError, match="different prompt kinds"):
        submit_job(two_kinds, engineer, TrainingConfig(dataset=["default", "chats"]))
    with pytest.raises(DatasetError, match="no dataset named 'nope'"):
        submit_job(two_kinds, engineer, TrainingConfig(dataset=["nope"]))
    assert sql(two_kinds, "SELECT count(*) FROM trainingjob") == [(0,)]


def test_the_record_browser_filters_and_pages_on_the_server(two_kinds, tmp_path):
    many = [{"prompt": [{"role": "user", "content": f"Page {i}?"}], "completions": [f"x{i}", f"y{i}"]} for i in range(30)]
    import_file(two_kinds, ImportConfig(write_jsonl(tmp_path / "many.jsonl", many), dataset="chats", source="bulk"))
    ann, bob, eng = _actor(two_kinds, "ann"), _actor(two_kinds, "bob"), _actor(two_kinds, "eng", "engineer")
    first = next_comparison(two_kinds, ann, dataset="chats")
    label_on_screen(two_kinds, ann, first, "left", comment="unsure")
    bob_view = next_comparison(two_kinds, bob, dataset="chats")
    assert bob_view is not None
    total = sql(two_kinds, "SELECT count(*) FROM comparison c JOIN dataset d ON d.id = c.dataset_id WHERE d.name = 'chats'")[0][0]
    page1, page2 = browse(two_kinds, eng, "chats", page=1, page_size=25), browse(two_kinds, eng, "chats", page=2, page_size=25)
    assert page1.total == total == 34 and len(page1.rows) == 25 and len(page2.rows) == 9
    assert not {r.comparison_id for r in page1.rows} & {r.comparison_id for r in page2.rows}
    assert [r.comparison_id for r in browse(two_kinds, eng, "chats", RecordFilter(annotator="ann")).rows] == [first.comparison_id]
    assert [r.comparison_id for r in browse(two_kinds, eng, "chats", RecordFilter(has_comment=True)).rows] == [first.comparison_id]
    assert browse(two_kinds, eng, "chats", RecordFilter(source="bulk")).total == 30
    assert browse(two_kinds, eng, "chats", RecordFilter(status="done")).total == 1
    assert browse(two_kinds, eng, "chats", RecordFilter(status="waiting")).total == 33
    assert [r.prompt_excerpt for r in browse(two_kinds, eng, "chats", RecordFilter(text="page 17")).rows] == ["Page 17?"]
    assert browse(two_kinds, eng, "chats", RecordFilter(text="%")).total == 0  # LIKE wildcards are literal
    assert browse(two_kinds, eng, "chats", RecordFilter(text="_")).total == 0
    with pytest.raises(RecordError, match="limit is 200"):
        browse(two_kinds, eng, "chats", RecordFilter(text="x" * 201))
    with pytest.raises(PermissionDenied):
        browse(two_kinds, ann, "chats")


def test_the_record_browser_finds_disagreement_and_shows_every_label_as_its_annotator_saw_it(two_kinds):
    ann, bob, eng, admin = (_actor(two_kinds, n, r) for n, r in
                            (("ann", "annotator"), ("bob", "annotator"), ("eng", "engineer"), ("boss", "admin")))
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(overlap=2))
    view_ann = next_comparison(two_kinds, ann, dataset="chats")
    label_on_screen(two_kinds, ann, view_ann, "left", comment="A is kinder")
    view_bob = next_comparison(two_kinds, bob, dataset="chats")
    assert view_bob.comparison_id == view_ann.comparison_id
    # bob votes for the other stored side than ann did, whatever side it was shown on.
    bob_choice = "left" if view_bob.left.side != view_ann.left.side else "right"
    label_on_screen(two_kinds, bob, view_bob, bob_choice)
    (row,) = browse(two_kinds, eng, "chats", RecordFilter(disagreement=True)).rows
    assert row.comparison_id == view_ann.comparison_id
    detail = record_detail(two_kinds, eng, row.comparison_id)
    stored = dict(sql(two_kinds, f"SELECT u.name, l.shown_left FROM label l JOIN \"user\" u ON u.id = l.annotator_id "
                                 f"WHERE l.comparison_id = {row.comparison_id}"))
    assert {label.annotator: label.shown_left for label in detail.labels} == stored
    assert {label.annotator: label.comment for label in detail.labels} == {"ann": "A is kinder", "bob": None}
    assert detail.content.dataset == "chats" and detail.status == "done"


def test_bulk_send_back_priority_and_archive_change_only_the_chosen_comparisons(two_kinds):
    ann, eng = _actor(two_kinds, "ann"), _actor(two_kinds, "eng", "engineer")
    default_ids = [r[0] for r in sql(two_kinds, "SELECT c.id FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                                                 "WHERE d.name = 'default' ORDER BY c.id")]
    chat_ids = [r[0] for r in sql(two_kinds, "SELECT c.id FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                                              "WHERE d.name = 'chats' ORDER BY c.id")]
    before = store_fingerprint(two_kinds)
    with pytest.raises(RecordError, match="not in dataset 'chats'"):
        change_priority(two_kinds, eng, "chats", [chat_ids[0], default_ids[0]], 9)
    assert store_fingerprint(two_kinds) == before
    assert send_back(two_kinds, eng, "default", default_ids[:1], priority=50) == 1
    assert sql(two_kinds, f"SELECT extra_labels, priority, done FROM comparison WHERE id = {default_ids[0]}") == [(1, 50, False)]
    assert change_priority(two_kinds, eng, "chats", chat_ids[:2], 9) == 2
    assert archive_records(two_kinds, eng, "chats", chat_ids[:1]) == 1
    handed = []
    while (view := next_comparison(two_kinds, ann)) is not None:
        handed.append(view.comparison_id)
        label_on_screen(two_kinds, ann, view, "left")
    assert handed[:2] == [default_ids[0], chat_ids[1]]  # priority 50, then 9; the archived one never
    assert chat_ids[0] not in handed
    with pytest.raises(PermissionDenied):
        archive_records(two_kinds, ann, "chats", chat_ids[1:2])


def test_a_label_from_a_stale_tab_is_refused_until_the_annotator_chooses_to_change_it(two_kinds):
    ann = _actor(two_kinds, "ann")
    first_tab = next_comparison(two_kinds, ann, dataset="chats")
    second_tab = next_comparison(two_kinds, ann, dataset="chats")  # the same reservation, shown in another tab
    assert second_tab.comparison_id == first_tab.comparison_id and second_tab.existing_choice is None
    label_and_next(two_kinds, ann, first_tab, "left", dataset="chats")
    with pytest.raises(StaleScreen, match=r"already labeled comparison \d+ as 'left'.*Change it") as refused:
        label_and_next(two_kinds, ann, second_tab, "right", dataset="chats")
    assert refused.value.stored_choice == "left"
    choice_sql = f"SELECT choice FROM label WHERE comparison_id = {first_tab.comparison_id}"
    assert sql(two_kinds, choice_sql) == [(first_tab.left.side,)]
    label_and_next(two_kinds, ann, second_tab, "left", dataset="chats")  # a repeat of the stored label passes
    label_and_next(two_kinds, ann, second_tab, "right", dataset="chats", replace_existing=True)
    assert sql(two_kinds, choice_sql) == [(first_tab.right.side,)]


def test_an_export_of_all_datasets_leaves_archived_datasets_out_unless_named(two_kinds, tmp_path):
    from core.preferences.pairs import build_preference_rows

    import_file(two_kinds, ImportConfig(write_jsonl(tmp_path / "old.jsonl", TEXT_PAIRS[:2]), dataset="old"))
    change_dataset_settings(two_kinds, _actor(two_kinds, "boss", "admin"), "old", DatasetSettings(archived=True))
    everything = build_preference_rows(two_kinds)
    assert len(everything.rows) == 3 and everything.left_out["in archived datasets"] == 2
    assert [row["prompt"] for row in build_preference_rows(two_kinds, datasets=["old"]).rows] == ["T0?", "T1?"]


def test_a_dataset_name_differing_only_in_case_is_refused(store, tmp_path):
    import_file(store, ImportConfig(write_jsonl(tmp_path / "a.jsonl", TEXT_PAIRS), dataset="Texts"))
    with pytest.raises(ImportRejected, match="a dataset named 'Texts' exists"):
        import_file(store, ImportConfig(write_jsonl(tmp_path / "a.jsonl", TEXT_PAIRS), dataset="texts"))
    assert sql(store, "SELECT name FROM dataset") == [("Texts",)]


def test_the_label_tab_offers_an_admin_only_the_datasets_open_to_them_while_the_team_view_lists_all(two_kinds):
    from core.data.datasets import datasets_to_label

    admin, _ = _actor(two_kinds, "boss", "admin"), _actor(two_kinds, "bob")
    change_dataset_settings(two_kinds, admin, "chats", DatasetSettings(open_to_all=False, members=("bob",)))
    assert [s.name for s in datasets_to_label(two_kinds, admin)] == ["default"]
    assert [s.name for s in datasets_for(two_kinds, admin)] == ["chats", "default"]
