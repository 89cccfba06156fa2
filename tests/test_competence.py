"""Annotator competence: a planted spammer and a planted flipper among three simulated annotators.

The oracle is independent of the code under test: the hidden truth the simulation planted, label counts
by plain SQL, and the exported file read back as JSON.
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import sql
from test_import import write_jsonl

from core.accounts import PermissionDenied, actor_for, add_user
from core.data.exporter import ExportConfig, export_dataset
from core.data.importer import ImportConfig, import_file
from core.labeling.competence import annotator_competence
from core.limits import MIN_COMPETENCE_LABELS
from core.config_fields import ConfigError
from storage.labels import LabelInput, ensure_user, upsert_label

PAIRS = 60  # with hidden truth; the flipper joins for the last 40
SPAMMER_ONLY = 4  # pairs only the spammer labeled: their direction is a coin


def label(store, comparison_id: int, annotator: str, choice: str, shown_left: str) -> None:
    with store.write() as session:
        annotator_id = ensure_user(session, annotator)
        upsert_label(session, LabelInput(comparison_id, annotator_id, choice, shown_left=shown_left))


@pytest.fixture
def planted(store, tmp_path):
    """60 pairs with a hidden better side, labeled by a good annotator (always right, all 60), a spammer (a coin,
    all 60 and 4 more) and a flipper (always wrong, the last 40). Returns (store, truth: comparison id -> the
    better completion's text)."""
    rows = [{"prompt": f"Question {i}?", "completions": [f" first {i}", f" second {i}"]}
            for i in range(PAIRS + SPAMMER_ONLY)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "cands.jsonl", rows), dataset="team"))
    texts = {cid: (a, b) for cid, a, b in sql(store, "SELECT c.id, a.text, b.text FROM comparison c "
                                                     "JOIN completion a ON a.id = c.completion_a_id "
                                                     "JOIN completion b ON b.id = c.completion_b_id ORDER BY c.id")}
    ids = sorted(texts)
    rng = random.Random(28)
    truth = {}
    for n, cid in enumerate(ids):
        better = rng.choice("ab")
        worse = "b" if better == "a" else "a"
        if n < PAIRS:
            truth[cid] = texts[cid][0 if better == "a" else 1]
            label(store, cid, "good", better, rng.choice("ab"))
            if n >= PAIRS - 40:
                label(store, cid, "flipper", worse, rng.choice("ab"))
        label(store, cid, "spammer", rng.choice("ab"), rng.choice("ab"))
    return store, truth


def exported(store, tmp_path, **flags) -> list[dict]:
    out = tmp_path / f"export-{flags.get('aggregate', 'majority')}.jsonl"
    export_dataset(store, ExportConfig(out, dataset=["team"], **flags))
    return [json.loads(line) for line in out.read_text().splitlines()]


def right_rows(rows: list[dict], truth: dict[int, str]) -> int:
    better = set(truth.values())
    return sum(row["chosen"] in better for row in rows)


def test_dawid_skene_export_matches_the_hidden_truth_where_majority_fails(planted, tmp_path):
    store, truth = planted
    majority = exported(store, tmp_path)
    dawid_skene = exported(store, tmp_path, aggregate="dawid-skene")
    # Majority: where all three voted the spammer decides, where two voted a split is dropped.
    assert right_rows(majority, truth) <= 45
    planted_rows = [row for row in dawid_skene if row["prompt"] != "" and int(row["prompt"].split()[1][:-1]) < PAIRS]
    assert len(planted_rows) == PAIRS
    assert right_rows(planted_rows, truth) == PAIRS
    assert "weight" not in dawid_skene[0] and "weight" not in majority[0]  # TRL-clean without --soft-labels


def test_soft_labels_weigh_pairs_by_the_posterior_and_need_a_model(planted, tmp_path):
    store, truth = planted
    rows = exported(store, tmp_path, aggregate="dawid-skene", soft_labels=True)
    by_question = {int(row["prompt"].split()[1][:-1]): row for row in rows}
    # The good annotator and the recognised flipper pin the planted pairs down; the spammer alone pins nothing.
    assert all(by_question[i]["weight"] > 0.99 for i in range(PAIRS))
    assert all(0 < by_question[i]["weight"] < 0.2 for i in range(PAIRS, PAIRS + SPAMMER_ONLY))
    with pytest.raises(ConfigError, match="--aggregate dawid-skene or mace"):
        ExportConfig(tmp_path / "x.jsonl", soft_labels=True)


def test_the_flags_name_the_spammer_and_the_flipper_with_their_sample_sizes(planted):
    store, _ = planted
    add_user(store, "lead", "engineer", "long enough pw")
    add_user(store, "ann", "annotator", "long enough pw")
    with pytest.raises(PermissionDenied):
        annotator_competence(store, actor_for(store, "ann"), dataset="team")
    fit = annotator_competence(store, actor_for(store, "lead"), dataset="team")
    by_name = {a.name: a for a in fit.annotators}
    counts = dict(sql(store, "SELECT u.name, count(*) FROM label l JOIN \"user\" u ON u.id = l.annotator_id "
                             "WHERE l.choice != 'skip' GROUP BY u.name"))
    assert {name: a.n for name, a in by_name.items()} == counts == {"good": 60, "spammer": 64, "flipper": 40}
    assert "near-random" in by_name["spammer"].flags and "inverted" not in by_name["spammer"].flags
    assert "inverted" in by_name["flipper"].flags
    assert by_name["good"].flags == ()
    assert by_name["good"].side_accuracy > 0.99 and by_name["flipper"].side_accuracy < 0.01


def test_position_and_tie_flags_and_the_minimum_below_which_flags_are_withheld(store, tmp_path):
    rows = [{"prompt": f"Q{i}?", "completions": [f" x{i}", f" y{i}"]} for i in range(30)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", rows), dataset="team"))
    ids = [cid for (cid,) in sql(store, "SELECT id FROM comparison ORDER BY id")]
    rng = random.Random(3)
    for n, cid in enumerate(ids):
        better = rng.choice("ab")
        label(store, cid, "good", better, rng.choice("ab"))
        shown = rng.choice("ab")
        label(store, cid, "lefty", shown, shown)  # always the side shown on the left
        label(store, cid, "tier", "tie", rng.choice("ab"))
        if n < MIN_COMPETENCE_LABELS - 1:
            label(store, cid, "newcomer", "b" if better == "a" else "a", rng.choice("ab"))
    add_user(store, "lead", "engineer", "long enough pw")
    fit = annotator_competence(store, actor_for(store, "lead"), dataset="team", method="mace")
    by_name = {a.name: a for a in fit.annotators}
    assert "position-biased" in by_name["lefty"].flags and by_name["lefty"].left_pick_rate == 1.0
    assert by_name["lefty"].sided_n == 30
    assert "always-tie" in by_name["tier"].flags and "position-biased" not in by_name["tier"].flags
    # The newcomer was always wrong, on too few labels to be judged: withheld, saying n and the minimum.
    assert by_name["newcomer"].flags == ()
    assert f"inverted (n={MIN_COMPETENCE_LABELS - 1} < {MIN_COMPETENCE_LABELS})" in by_name["newcomer"].withheld


@pytest.mark.parametrize("group_by_prompt", [False, True])
def test_a_training_snapshot_with_an_annotator_model_is_the_soft_labeled_export(planted, tmp_path, group_by_prompt):
    from core.training.config import TrainingConfig
    from core.training.trainer import take_snapshot

    store, truth = planted
    config = TrainingConfig(dataset=["team"], aggregate="dawid-skene", soft_labels=True, eval_fraction=0.0,
                            group_by_prompt=group_by_prompt)
    snapshot = take_snapshot(store, config)
    file_rows = exported(store, tmp_path, aggregate="dawid-skene", soft_labels=True)
    weight_of = {(row["chosen"], row["rejected"]): row["weight"] for row in file_rows}
    assert {(row["chosen"], row["rejected"]): row["weight"] for row in snapshot.train + snapshot.eval} == weight_of
    assert right_rows([row for row in snapshot.train if row["weight"] > 0.5], truth) == PAIRS
    with pytest.raises(ConfigError, match="set aggregate to dawid-skene or mace"):
        TrainingConfig(soft_labels=True)


def test_the_background_refit_runs_as_a_job_after_n_new_labels_and_keeps_its_fit(planted):
    from core.jobs.worker import execute_job
    from core.labeling.competence import set_competence_refit
    from core.loop.competence_refit import competence_tick
    from core.preferences.competence import fit_file

    store, _ = planted
    add_user(store, "boss", "admin", "long enough pw")
    assert competence_tick(store) == []  # off by default: on demand only
    set_competence_refit(store, actor_for(store, "boss"), 50)
    queued = competence_tick(store)
    assert len(queued) == 1 and competence_tick(store) == []  # one at a time
    assert sql(store, "SELECT kind, status FROM trainingjob") == [("competence", "queued")]
    assert execute_job(store, queued[0], log=lambda _: None) == 0
    [(status, note)] = sql(store, "SELECT status, note FROM trainingjob")
    assert status == "succeeded" and "spammer: near-random" in note and "flipper: inverted" in note
    kept = json.loads(fit_file(store, "team").read_text())
    [(humans,)] = sql(store, "SELECT count(*) FROM label l JOIN \"user\" u ON u.id = l.annotator_id "
                             "WHERE u.role != 'source' AND l.choice != 'skip'")
    assert kept["human_labels"] == humans == 164
    assert {a["name"]: a["n"] for a in kept["annotators"]} == {"good": 60, "spammer": 64, "flipper": 40}
    assert competence_tick(store) == []  # no new labels since the kept fit


def test_metadata_rows_carry_the_posterior_in_the_rows_terms(planted, tmp_path):
    store, truth = planted
    rows = exported(store, tmp_path, aggregate="dawid-skene", soft_labels=True, with_metadata=True)
    for row in rows:
        posterior = row["posterior"]
        assert set(posterior) == {"chosen", "rejected", "tie", "both_bad"}
        assert sum(posterior.values()) == pytest.approx(1.0)
        assert row["weight"] == pytest.approx(posterior["chosen"] - posterior["rejected"])
    assert "posterior" not in exported(store, tmp_path, with_metadata=True)[0]  # majority has none


def test_the_data_tab_download_takes_the_annotator_model(planted):
    from core.data.exporter import export_for_download

    store, truth = planted
    add_user(store, "lead", "engineer", "long enough pw")
    download, _ = export_for_download(store, actor_for(store, "lead"), format="jsonl", prompt_format="auto",
                                      test_size=0.0, datasets=["team"], aggregate="dawid-skene", soft_labels=True)
    rows = [json.loads(line) for line in download.read_text().splitlines()]
    assert right_rows([row for row in rows if row["weight"] > 0.5], truth) == PAIRS


def test_rankings_enter_through_their_pairs_and_dawid_skene_recovers_the_hidden_order(store, tmp_path):
    from storage.ranking import ranking_json

    items = 24
    rows = [{"prompt": f"Rank {i}?", "completions": [f"one {i}", f"two {i}", f"three {i}"]} for i in range(items)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "r.jsonl", rows), dataset="ranked", question="ranking"))
    slots: dict[int, list[int]] = {}
    for item_id, completion_id in sql(store, "SELECT comparison_id, completion_id FROM rankingslot "
                                             "ORDER BY comparison_id, position"):
        slots.setdefault(item_id, []).append(completion_id)
    texts = dict(sql(store, "SELECT id, text FROM completion"))
    rng = random.Random(5)
    true_place = {}  # completion text -> its place in the hidden order (0 best)
    for n, (item_id, ids) in enumerate(sorted(slots.items())):
        order = rng.sample(ids, len(ids))
        true_place.update({texts[c]: place for place, c in enumerate(order)})
        rankings = {"good": order, "spammer": rng.sample(ids, len(ids))}
        if n >= items - 16:
            rankings["flipper"] = order[::-1]
        for name, ranked in rankings.items():
            with store.write() as session:
                upsert_label(session, LabelInput(item_id, ensure_user(session, name), "ranked",
                                                 ranking=ranking_json([[c] for c in ranked], ids, False)))

    def right(rows: list[dict]) -> int:
        return sum(true_place[row["chosen"]] < true_place[row["rejected"]] for row in rows)

    out = tmp_path / "ds.jsonl"
    export_dataset(store, ExportConfig(out, dataset=["ranked"], aggregate="dawid-skene"))
    dawid_skene = [json.loads(line) for line in out.read_text().splitlines()]
    export_dataset(store, ExportConfig(out, dataset=["ranked"]))
    majority = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(dawid_skene) == 3 * items and right(dawid_skene) == 3 * items
    assert right(majority) <= 0.8 * 3 * items


def test_each_dataset_gets_its_own_fit_and_the_table_names_the_dataset(planted, tmp_path):
    store, _ = planted
    rows = [{"prompt": f"Other {i}?", "completions": [f" x{i}", f" y{i}"]} for i in range(3)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "o.jsonl", rows), dataset="other"))
    for (cid,) in sql(store, "SELECT c.id FROM comparison c JOIN dataset d ON d.id = c.dataset_id WHERE d.name = 'other'"):
        label(store, cid, "good", "a", "a")
    add_user(store, "lead", "engineer", "long enough pw")
    fit = annotator_competence(store, actor_for(store, "lead"))
    assert {(a.name, a.n) for a in fit.annotators} == {
        ("team/good", 60), ("team/spammer", 64), ("team/flipper", 40), ("other/good", 3)}
    assert len(fit.posteriors) == PAIRS + SPAMMER_ONLY + 3


def test_the_export_summary_says_which_model_decided_the_pairs(planted, tmp_path):
    store, _ = planted
    report = export_dataset(store, ExportConfig(tmp_path / "s.jsonl", dataset=["team"], aggregate="dawid-skene"))
    assert "pairs decided by dawid-skene fitted on 164 label(s) of 64 pair(s)" in report.summary()
    assert "decided by" not in export_dataset(store, ExportConfig(tmp_path / "m.jsonl", dataset=["team"])).summary()
