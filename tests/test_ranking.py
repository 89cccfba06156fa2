"""Ranking datasets: importing K completions per prompt, ranking them with the pairwise rules,
exporting weighted pairs and ranked rows, and agreement. Oracles: SQL on the store, the files the
export writes, pairs worked out by hand, and scipy for the agreement statistics."""

from __future__ import annotations

import json
from itertools import combinations

import pytest
from conftest import run_cli, sql
from test_import import store_fingerprint, write_jsonl

from core.accounts import actor_for, add_user
from core.data.datasets import DatasetSettings, change_dataset_settings
from core.data.exporter import ExportConfig, export_dataset
from core.data.importer import ImportConfig, ImportRejected, import_file
from core.labeling.actions import StaleScreen, label_stored, next_comparison, rank_and_next, rank_item
from core.labeling.ranking import RankingView, parse_order
from core.labeling.ranking_agreement import kendall_w
from core.labeling.team_stats import team_report
from storage.queue import QueueError

RANKED = [{"prompt": f"Question {i}?", "completions": [f"alpha {i}", f"bravo {i}", f"charlie {i}", f"delta {i}"]}
          for i in range(3)]


def _actor(store, name: str, role: str = "annotator"):  # noqa: ANN001, ANN202
    add_user(store, name, role, "correct horse battery")
    return actor_for(store, name)


@pytest.fixture
def ranking_store(store, tmp_path):  # noqa: ANN001, ANN201
    import_file(store, ImportConfig(write_jsonl(tmp_path / "r.jsonl", RANKED), dataset="rk", question="ranking"))
    return store


def _ids_by_word(view: RankingView) -> dict[str, int]:
    return {c.text.split()[0]: c.completion_id for c in view.completions}


def test_a_ranking_import_makes_one_item_per_row_with_all_its_completions_and_a_reimport_adds_nothing(
        ranking_store, tmp_path):
    assert sql(ranking_store, "SELECT question FROM dataset WHERE name = 'rk'") == [("ranking",)]
    assert sql(ranking_store, "SELECT count(*) FROM comparison")[0][0] == 3
    slots = sql(ranking_store, "SELECT s.comparison_id, c.text FROM rankingslot s JOIN completion c "
                               "ON c.id = s.completion_id ORDER BY s.comparison_id, s.position")
    assert [text for _, text in slots] == [c for row in RANKED for c in row["completions"]]
    before = store_fingerprint(ranking_store)
    import_file(ranking_store, ImportConfig(write_jsonl(tmp_path / "again.jsonl", RANKED), dataset="rk"))
    assert store_fingerprint(ranking_store) == before


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "p", "completions": ["x", "y"]}], r"2\.jsonl:1: a ranking dataset takes candidates rows with 3 to 9.*has 2"),
    ([{"prompt": "p", "completions": [str(i) for i in range(10)]}], r"has 10"),
    ([{"prompt": "p", "chosen": "x", "rejected": "y"}], r"has a chosen/rejected pair"),
])
def test_a_ranking_dataset_refuses_rows_it_cannot_rank_with_the_line_and_writes_nothing(ranking_store, tmp_path,
                                                                                         rows, message):
    before = store_fingerprint(ranking_store)
    with pytest.raises(ImportRejected, match=message):
        import_file(ranking_store, ImportConfig(write_jsonl(tmp_path / "2.jsonl", rows), dataset="rk"))
    assert store_fingerprint(ranking_store) == before


def test_a_pairwise_dataset_refuses_a_ranking_import_and_the_cli_says_so(ranking_store, tmp_path, db_url):
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "y"}])
    import_file(ranking_store, ImportConfig(tmp_path / "pairs.jsonl", dataset="pw"))
    result = run_cli("import", str(write_jsonl(tmp_path / "r2.jsonl", RANKED)), "--dataset", "pw", "--question",
                     "ranking", db_url=db_url)
    assert result.returncode == 2
    assert "dataset 'pw' asks the pairwise question" in result.stderr
    assert sql(ranking_store, "SELECT count(*) FROM rankingslot")[0][0] == 12


def test_next_shows_every_completion_in_a_stable_per_annotator_order_and_rank_stores_groups_and_shown_order(
        ranking_store):
    ann = _actor(ranking_store, "ann")
    view = next_comparison(ranking_store, ann, "rk")
    assert isinstance(view, RankingView) and len(view.completions) == 4
    assert next_comparison(ranking_store, ann, "rk").shown == view.shown  # a refresh shows the same layout
    ids = _ids_by_word(view)
    groups = [[ids["charlie"]], [ids["alpha"], ids["delta"]], [ids["bravo"]]]
    assert rank_item(ranking_store, ann, view.item_id, groups, comment="c is right").changed is True
    assert rank_item(ranking_store, ann, view.item_id, groups, comment="c is right").changed is False
    (choice, ranking, comment), = sql(ranking_store, f"SELECT choice, ranking, comment FROM label WHERE comparison_id = {view.item_id}")
    stored = json.loads(ranking) if isinstance(ranking, str) else ranking
    assert (choice, comment) == ("ranked", "c is right")
    assert stored == {"groups": groups, "shown": view.shown, "all_bad": False}
    assert sql(ranking_store, f"SELECT label_count, done FROM comparison WHERE id = {view.item_id}")[0] == (1, True)


@pytest.mark.parametrize("bad, message", [
    (lambda ids: [[ids[0]], [ids[1]]], r"are not ranked"),
    (lambda ids: [[ids[0], ids[0]], ids[1:]], r"groups\[0\]\[1\]: completion .* is already in groups\[0\]\[0\]"),
    (lambda ids: [[999], ids], r"groups\[0\]\[0\]: 999 is not a completion of item"),
    (lambda ids: [[], ids], r"groups\[0\] must be a non-empty list"),
    (lambda ids: [["x"], ids], r"groups\[0\]\[0\]: 'x' is not a completion id"),
])
def test_a_bad_ranking_is_refused_saying_where_and_nothing_is_written(ranking_store, bad, message):
    ann = _actor(ranking_store, "ann")
    view = next_comparison(ranking_store, ann, "rk")
    with pytest.raises(QueueError, match=message):
        rank_item(ranking_store, ann, view.item_id, bad(sorted(view.shown)))
    assert sql(ranking_store, "SELECT count(*) FROM label")[0][0] == 0


def test_a_pairwise_choice_on_a_ranking_item_is_refused(ranking_store):
    ann = _actor(ranking_store, "ann")
    view = next_comparison(ranking_store, ann, "rk")
    with pytest.raises(QueueError, match="is a ranking item: rank its completions"):
        label_stored(ranking_store, ann, view.item_id, "a")
    label_stored(ranking_store, ann, view.item_id, "skip")  # skipping is fine
    assert sql(ranking_store, "SELECT choice FROM label") == [("skip",)]


def test_overlap_holds_for_rankings_a_third_annotator_is_refused_and_two_get_the_same_item(ranking_store):
    admin = _actor(ranking_store, "boss", "admin")
    change_dataset_settings(ranking_store, admin, "rk", DatasetSettings(overlap=2))
    ann, bob, cat = (_actor(ranking_store, name) for name in ("ann", "bob", "cat"))
    first, second = next_comparison(ranking_store, ann, "rk"), next_comparison(ranking_store, bob, "rk")
    assert first.item_id == second.item_id
    for actor, view in ((ann, first), (bob, second)):
        rank_item(ranking_store, actor, view.item_id, [sorted(view.shown)])
    with pytest.raises(QueueError, match="already has the 2 label"):
        rank_item(ranking_store, cat, first.item_id, [sorted(first.shown)])
    assert next_comparison(ranking_store, cat, "rk").item_id != first.item_id


def test_rank_and_next_refuses_a_ranking_from_a_stale_screen_and_accepts_it_when_asked(ranking_store):
    ann = _actor(ranking_store, "ann")
    tab_one = next_comparison(ranking_store, ann, "rk")
    tab_two = next_comparison(ranking_store, ann, "rk")
    ids = sorted(tab_one.shown)
    rank_and_next(ranking_store, ann, tab_one, [ids], dataset="rk")
    with pytest.raises(StaleScreen):
        rank_and_next(ranking_store, ann, tab_two, [[i] for i in ids], dataset="rk")
    rank_and_next(ranking_store, ann, tab_two, [[i] for i in ids], dataset="rk", replace_existing=True)
    stored = sql(ranking_store, f"SELECT ranking FROM label WHERE comparison_id = {tab_one.item_id}")[0][0]
    assert (json.loads(stored) if isinstance(stored, str) else stored)["groups"] == [[i] for i in ids]


def test_typed_order_reads_letters_best_first_with_ties_and_names_what_is_wrong(ranking_store):
    view = next_comparison(ranking_store, _actor(ranking_store, "ann"), "rk")
    by_letter = {c.letter: c.completion_id for c in view.completions}
    assert parse_order("C A=D B", view) == [[by_letter["C"]], [by_letter["A"], by_letter["D"]], [by_letter["B"]]]
    assert parse_order("ca,db", view) == parse_order("C > A = D > B", view)
    for text, message in (("CAD", "leaves out B"), ("CADBA", "A appears twice"), ("CADX", "'X' is not a response"),
                          ("=CADB", "starts with a tie")):
        with pytest.raises(QueueError, match=message):
            parse_order(text, view)


def _rank_first(store, actor, groups_by_word):  # noqa: ANN001, ANN202
    view = next_comparison(store, actor, "rk")
    ids = _ids_by_word(view)
    rank_item(store, actor, view.item_id, [[ids[w] for w in group] for group in groups_by_word])
    return view


def _export(store, tmp_path, **options):  # noqa: ANN001, ANN202
    out = tmp_path / f"export-{len(list(tmp_path.iterdir()))}.jsonl"
    export_dataset(store, ExportConfig(out, dataset=["rk"], **options))
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("mode, expected", [
    ("all", {("charlie", "alpha"), ("charlie", "delta"), ("charlie", "bravo"), ("alpha", "bravo"), ("delta", "bravo")}),
    ("adjacent", {("charlie", "alpha"), ("charlie", "delta"), ("alpha", "bravo"), ("delta", "bravo")}),
    ("best_vs_rest", {("charlie", "alpha"), ("charlie", "delta"), ("charlie", "bravo")}),
])
def test_export_turns_one_ranking_into_the_pairs_of_its_mode_with_weights_that_sum_to_one(ranking_store, tmp_path,
                                                                                          mode, expected):
    _rank_first(ranking_store, _actor(ranking_store, "ann"), [["charlie"], ["alpha", "delta"], ["bravo"]])
    rows = _export(ranking_store, tmp_path, ranking_pairs=mode, ranking_margin=True)
    assert {(r["chosen"].split()[0], r["rejected"].split()[0]) for r in rows} == expected
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    assert [r["weight"] for r in rows] == pytest.approx([1 / len(expected)] * len(expected))
    # fractional ranks: charlie 1, alpha and delta 2.5 (a tie shares the mean), bravo 4; margin = gap / (K - 1)
    gaps = {("charlie", "bravo"): 3}
    for row in rows:
        pair = (row["chosen"].split()[0], row["rejected"].split()[0])
        assert row["margin"] == pytest.approx(gaps.get(pair, 1.5) / 3)


def test_several_rankings_fold_per_pair_by_majority_and_a_split_pair_is_left_out(ranking_store, tmp_path):
    admin = _actor(ranking_store, "boss", "admin")
    change_dataset_settings(ranking_store, admin, "rk", DatasetSettings(overlap=3))
    orders = {"ann": [["alpha"], ["bravo"], ["charlie"], ["delta"]],
              "bob": [["alpha"], ["charlie"], ["bravo"], ["delta"]],
              "cat": [["bravo"], ["alpha"], ["charlie", "delta"]]}
    for name, order in orders.items():
        _rank_first(ranking_store, _actor(ranking_store, name), order)
    rows = _export(ranking_store, tmp_path, with_metadata=True)
    # Worked by hand: a>b 2:1, a>c 3:0, a>d 3:0, b>c 2:1, b>d 3:0, c vs d: 2 votes c, 1 tie -> c.
    assert {(r["chosen"].split()[0], r["rejected"].split()[0]) for r in rows} == {
        ("alpha", "bravo"), ("alpha", "charlie"), ("alpha", "delta"), ("bravo", "charlie"), ("bravo", "delta"),
        ("charlie", "delta")}
    first = next(r for r in rows if r["chosen"].startswith("alpha") and r["rejected"].startswith("bravo"))
    assert sorted((label["annotator"], label["vote"]) for label in first["labels"]) == [
        ("ann", "chosen"), ("bob", "chosen"), ("cat", "rejected")]


def test_an_all_unacceptable_ranking_gives_no_pairs_and_the_ranked_format_keeps_it(ranking_store, tmp_path):
    ann = _actor(ranking_store, "ann")
    view = next_comparison(ranking_store, ann, "rk")
    ids = _ids_by_word(view)
    rank_item(ranking_store, ann, view.item_id, [[ids["delta"]], [ids["alpha"], ids["bravo"], ids["charlie"]]],
              all_bad=True)
    with pytest.raises(Exception, match="no comparison has a majority preference"):
        _export(ranking_store, tmp_path)
    out = tmp_path / "ranked.jsonl"
    export_dataset(ranking_store, ExportConfig(out, dataset=["rk"], format="ranked"))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    words = [c.split()[0] for c in row["completions"]]
    assert words == ["alpha", "bravo", "charlie", "delta"]  # imported order
    assert row["groups"] == [[3], [0, 1, 2]]
    assert row["rankings"] == [{"annotator": "ann", "groups": [[3], [0, 1, 2]], "all_bad": True}]


def test_kendall_w_matches_friedmans_statistic_and_tau_is_scipys_tau_b(ranking_store):
    from scipy.stats import friedmanchisquare, kendalltau

    admin = _actor(ranking_store, "boss", "admin")
    change_dataset_settings(ranking_store, admin, "rk", DatasetSettings(overlap=3))
    orders = {"ann": [["alpha"], ["bravo"], ["charlie"], ["delta"]],
              "bob": [["alpha"], ["charlie"], ["bravo", "delta"]],
              "cat": [["bravo"], ["alpha"], ["delta"], ["charlie"]]}
    for name, order in orders.items():
        _rank_first(ranking_store, _actor(ranking_store, name), order)
    report = team_report(ranking_store, admin, dataset="rk").ranking
    ranks = {"ann": [1, 2, 3, 4], "bob": [1, 3.5, 2, 3.5], "cat": [2, 1, 4, 3]}  # alpha..delta, by hand
    chi2 = friedmanchisquare(*zip(*ranks.values())).statistic  # one sample per completion, tie-corrected
    assert report.mean_w == pytest.approx(chi2 / (3 * (4 - 1)), abs=1e-12)
    taus = [kendalltau(ranks[a], ranks[b]).statistic for a, b in combinations(ranks, 2)]
    assert report.mean_tau == pytest.approx(sum(taus) / 3, abs=1e-12)
    assert report.items_with_overlap == 1 and report.rankings == 3
    assert kendall_w([{1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0}]) == pytest.approx(1.0)


def test_position_bias_is_the_mean_place_by_shown_position(ranking_store):
    admin = _actor(ranking_store, "boss", "admin")
    ann = _actor(ranking_store, "ann")
    while (view := next_comparison(ranking_store, ann, "rk")) is not None:
        rank_item(ranking_store, ann, view.item_id, [[c] for c in view.shown])  # always the shown order
    report = team_report(ranking_store, admin, dataset="rk").ranking
    assert report.position_mean_place == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert report.position_rho == pytest.approx(1.0)


def test_inspect_loads_every_completion_of_a_ranking_item_with_the_humans_orders_in_its_letters(ranking_store):
    from core.scoring.inspection import comparison_for_inspection

    ann, engineer = _actor(ranking_store, "ann"), _actor(ranking_store, "eng", "engineer")
    view = _rank_first(ranking_store, ann, [["charlie"], ["alpha", "delta"], ["bravo"]])
    stored = comparison_for_inspection(ranking_store, engineer, view.item_id)
    imported = [row["completions"] for row in RANKED if row["prompt"] == stored.content.prompt_text][0]
    assert list(stored.ranked_responses) == imported  # A, B, C, D = alpha, bravo, charlie, delta
    assert stored.consensus == "C > A=D > B"
    assert stored.votes == "ann: C > A=D > B"


@pytest.mark.parametrize("mode", ["all", "adjacent", "best_vs_rest"])
def test_with_two_annotators_every_exported_pair_has_a_majority_of_all_their_votes_whatever_the_mode(
        ranking_store, tmp_path, mode):
    admin = _actor(ranking_store, "boss", "admin")
    change_dataset_settings(ranking_store, admin, "rk", DatasetSettings(overlap=2))
    # Neighbours in one ranking are ordered the other way by the other annotator: no majority there.
    _rank_first(ranking_store, _actor(ranking_store, "ann"), [["alpha"], ["delta"], ["bravo", "charlie"]])
    _rank_first(ranking_store, _actor(ranking_store, "bob"), [["charlie"], ["bravo"], ["alpha"], ["delta"]])
    try:
        rows = _export(ranking_store, tmp_path, ranking_pairs=mode, with_metadata=True)
    except Exception as error:  # noqa: BLE001
        assert "no comparison has a majority" in str(error)
        rows = []
    for row in rows:
        votes = [label["vote"] for label in row["labels"]]
        assert votes.count("chosen") > votes.count("rejected"), (row["chosen"], row["rejected"], votes)
    # alpha > delta is the one pair both ordered alike; "all" exports it (and only it).
    if mode == "all":
        assert [(r["chosen"].split()[0], r["rejected"].split()[0]) for r in rows] == [("alpha", "delta")]


def test_api_shaped_mistakes_are_refused_and_a_reordered_tie_is_the_same_ranking(ranking_store):
    ann = _actor(ranking_store, "ann")
    view = next_comparison(ranking_store, ann, "rk")
    ids = sorted(view.shown)
    for item_id, all_bad, comment, message in ((view.item_id, "false", None, "all_bad must be true or false"),
                                               (1.7, False, None, "item_id must be a positive whole number"),
                                               (True, False, None, "item_id must be a positive whole number"),
                                               (view.item_id, False, "a\x00b", "NUL character"),
                                               (view.item_id, False, ["x"], "the comment must be text")):
        with pytest.raises(QueueError, match=message):
            rank_item(ranking_store, ann, item_id, [ids], all_bad=all_bad, comment=comment)
    assert sql(ranking_store, "SELECT count(*) FROM label")[0][0] == 0
    assert rank_item(ranking_store, ann, view.item_id, [[ids[1], ids[0]], ids[2:]]).changed is True
    assert rank_item(ranking_store, ann, view.item_id, [[ids[0], ids[1]], ids[2:][::-1]]).changed is False


def test_a_missing_item_and_one_closed_to_the_annotator_get_the_same_refusal(ranking_store):
    admin, ann = _actor(ranking_store, "boss", "admin"), _actor(ranking_store, "ann")
    item_id = next_comparison(ranking_store, admin, "rk").item_id
    change_dataset_settings(ranking_store, admin, "rk", DatasetSettings(open_to_all=False, members=("boss",)))
    refusals = []
    for target in (item_id, 99_999):
        with pytest.raises(QueueError) as refused:
            rank_item(ranking_store, ann, target, [[1]])
        refusals.append(str(refused.value).replace(str(target), "N"))
    assert refusals[0] == refusals[1] and "does not exist, is archived" in refusals[0]


def test_a_ranking_row_that_repeats_a_completion_is_refused_not_silently_shortened(ranking_store, tmp_path):
    row = {"prompt": "P?", "completions": ["one", "two", "three", "two"]}
    with pytest.raises(ImportRejected, match="lists 4 completions of which 3 differ"):
        import_file(ranking_store, ImportConfig(write_jsonl(tmp_path / "dup.jsonl", [row]), dataset="rk"))


def test_a_typed_order_ending_in_a_tie_mark_is_refused(ranking_store):
    view = next_comparison(ranking_store, _actor(ranking_store, "ann"), "rk")
    with pytest.raises(QueueError, match="ends with a tie mark"):
        parse_order("A B C D=", view)


def test_my_labels_show_a_ranking_as_its_order_in_the_letters_the_annotator_saw(ranking_store):
    """"My labels" said "ranked"; now the order, in the letters of the layout this annotator saw (worked out here
    from the stored shown order), ties joined with '='."""
    from core.labeling.actions import history, screen_choice_of

    ann = _actor(ranking_store, "ann")
    view = next_comparison(ranking_store, ann, "rk")
    ids = _ids_by_word(view)
    rank_item(ranking_store, ann, view.item_id, [[ids["charlie"]], [ids["alpha"], ids["delta"]], [ids["bravo"]]])
    letter = {completion: "ABCD"[position] for position, completion in enumerate(view.shown)}
    expected = " > ".join("=".join(sorted(letter[ids[w]] for w in group))
                          for group in (["charlie"], ["alpha", "delta"], ["bravo"]))
    [item] = history(ranking_store, ann)
    assert screen_choice_of(item) == expected and ">" in expected and "=" in expected
