"""The loop: a dataset's model orders its queue by uncertainty (with a random control arm), and it
retrains as labels arrive, promoting a new version by its held-out accuracy. Oracles: margins from a
plain forward of the registered model's folder, the queue as an annotator is served, and SQL."""

from __future__ import annotations

import pytest
import torch
from conftest import sql
from test_training import separable_pairs

from core.accounts import PermissionDenied, actor_for, add_user
from core.data.importer import import_rows
from core.labeling.actions import label_stored, next_comparison
from core.loop.evaluation import loop_report
from core.loop.queue_keys import arm_of, queue_keys
from core.loop.retraining import (
    PairedComparison,
    after_training,
    compare_on_held_out,
    labels_needed_to_judge,
    loop_tick,
    mcnemar_p,
    promotion_decision,
)
from core.loop.settings import LATEST, LoopError, LoopSettings, configure_loop
from core.training.config import TrainingConfig
from core.jobs.scheduling import submit_job
from core.jobs.worker import execute_job


def _quiet(*_args) -> None:  # noqa: ANN002
    return None


@pytest.fixture
def loop_store(store):  # noqa: ANN001, ANN201
    rows = separable_pairs(40)
    import_rows(store, rows[:16], source="import:seed", dataset="loop")  # labeled seed pairs
    pool = [{"prompt": r["prompt"], "completions": [r["chosen"][0]["content"], r["rejected"][0]["content"]]}
            for r in rows[16:]]
    import_rows(store, pool, source="import:pool", dataset="loop")  # 24 pairs to label
    return store


def _plain_margins(store, model_name: str, *, signed: bool = False, ids: list[int] | None = None) -> dict[int, float]:  # noqa: ANN001
    """|r(a) - r(b)| (``signed``: r(a) - r(b)) of each open comparison of 'loop' (or of ``ids``) from a
    plain forward of the model's folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    (path,), = sql(store, f"SELECT path FROM rewardmodel WHERE name = '{model_name}'")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = sql(store, "SELECT c.id, p.messages, a.text, b.text FROM comparison c JOIN prompt p ON p.id = c.prompt_id "
                      "JOIN completion a ON a.id = c.completion_a_id JOIN completion b ON b.id = c.completion_b_id "
                      "JOIN dataset d ON d.id = c.dataset_id WHERE d.name = 'loop' AND "
                      + (f"c.id IN ({', '.join(map(str, ids))})" if ids else "c.done = false"))
    margins = {}
    with torch.inference_mode():
        for comparison_id, messages, a_text, b_text in rows:
            messages = messages if isinstance(messages, list) else __import__("json").loads(messages)
            rewards = []
            for text in (a_text, b_text):
                formatted = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}],
                                                          tokenize=False)
                rewards.append(model(**tokenizer(formatted, return_tensors="pt")).logits[0, 0].item())
            margins[comparison_id] = rewards[0] - rewards[1] if signed else abs(rewards[0] - rewards[1])
    return margins


def _stored_keys(store) -> dict[int, tuple[float, float, str]]:  # noqa: ANN001
    rows = sql(store, "SELECT c.id, c.model_margin, c.queue_key, c.arm FROM comparison c JOIN dataset d "
                      "ON d.id = c.dataset_id WHERE d.name = 'loop' AND c.done = false")
    return {cid: (margin, key, arm) for cid, margin, key, arm in rows}


@pytest.mark.slow
@pytest.mark.postgres
def test_the_loop_orders_the_queue_by_margins_retrains_after_n_labels_promotes_and_rescores(loop_store):
    store = loop_store
    admin = actor_for(store, None)
    seed_job = submit_job(store, admin, TrainingConfig(dataset=["loop"], max_steps=30, output_name="seed-rm",
                                                       eval_fraction=0.25, seed=0))
    assert execute_job(store, seed_job, log=_quiet) == 0
    status = configure_loop(store, admin, "loop", LoopSettings(order="uncertainty", model="seed-rm",
                                                               random_fraction=0.25, retrain_every=4,
                                                               promotion_tolerance=1.0, min_heldout_pairs=5))
    assert status.queued_job is not None and sql(store, f"SELECT kind FROM trainingjob WHERE id = {status.queued_job}") == [
        ("rescore",)]
    assert execute_job(store, status.queued_job, log=_quiet) == 0

    # The stored margins are the plain forward's, and the uncertainty arm is ordered by them.
    plain, stored = _plain_margins(store, "seed-rm"), _stored_keys(store)
    assert set(stored) == set(plain) and len(plain) == 24
    for comparison_id, (margin, _, _) in stored.items():
        assert margin == pytest.approx(plain[comparison_id], abs=1e-4)
    uncertain = [cid for cid, (_, _, arm) in stored.items() if arm == "uncertainty"]
    assert sorted(uncertain, key=lambda cid: stored[cid][1]) == sorted(uncertain, key=lambda cid: (plain[cid], cid))
    assert {arm for _, _, arm in stored.values()} == {"uncertainty", "random"}

    # The annotator is served the lowest key first, then the next lowest.
    add_user(store, "ann", "annotator", "correct horse battery")
    ann = actor_for(store, "ann")
    by_key = sorted(stored, key=lambda cid: stored[cid][1])
    served = []
    for _ in range(4):
        view = next_comparison(store, ann, "loop")
        served.append(view.comparison_id)
        label_stored(store, ann, view.comparison_id, "a")
    assert served == by_key[:4]

    # Four new human labels: the scheduler's tick queues one training job with the dataset's config.
    configure_loop(store, admin, "loop", LoopSettings(model=LATEST))  # follow the promoted version from now on
    queued = loop_tick(store)
    assert len(queued) == 1 and loop_tick(store) == []
    assert sql(store, "SELECT count(*) FROM trainingjob WHERE kind = 'train' AND status = 'queued'") == [(1,)]
    assert execute_job(store, queued[0], log=_quiet) == 0
    (note, model_name), = sql(store, f"SELECT note, reward_model_name FROM trainingjob WHERE id = {queued[0]}")
    assert model_name == "loop-loop" and note.startswith("promoted")
    assert sql(store, "SELECT promoted_model FROM dataset WHERE name = 'loop'") == [("loop-loop",)]
    # Test, then train: before the promotion, seed-rm was scored on the 4 labels it had not seen, per arm.
    (evaluated, arms_json), = sql(store, "SELECT model_name, arms FROM loopevaluation")
    arms_json = arms_json if isinstance(arms_json, dict) else __import__("json").loads(arms_json)
    assert evaluated == "seed-rm" and sum(a["fresh_pairs"] for a in arms_json.values()) == 4
    # The promotion re-scores the queue with the new version (one rescore job waiting, the earlier replaced).
    rescores = sql(store, "SELECT id FROM trainingjob WHERE kind = 'rescore' AND status = 'queued'")
    assert len(rescores) == 1
    assert execute_job(store, rescores[0][0], log=_quiet) == 0
    plain, stored = _plain_margins(store, "loop-loop"), _stored_keys(store)
    assert len(stored) == 20
    for comparison_id, (margin, _, _) in stored.items():
        assert margin == pytest.approx(plain[comparison_id], abs=1e-4)

    # Labels given after loop-loop was trained are its fresh test: the report scores them per arm.
    fresh = []
    for _ in range(6):
        view = next_comparison(store, ann, "loop")
        label_stored(store, ann, view.comparison_id, "a")
        fresh.append(view.comparison_id)
    report = loop_report(store, admin, "loop", evaluate=True)
    assert [v.name for v in report.versions] == ["seed-rm", "loop-loop"] and report.versions[1].promoted
    assert report.evaluated_model == "loop-loop"
    signed = _plain_margins(store, "loop-loop", signed=True, ids=fresh)
    right = {cid: signed[cid] > 0 for cid in fresh}  # every fresh vote is "a"
    arms = dict(sql(store, f"SELECT id, arm FROM comparison WHERE id IN ({', '.join(map(str, fresh))})"))
    for arm in ("uncertainty", "random"):
        mine = [cid for cid in fresh if arms[cid] == arm]
        result = next(a for a in report.arms if a.arm == arm)
        assert result.fresh_pairs == len(mine)
        assert result.accuracy == (pytest.approx(sum(right[c] for c in mine) / len(mine)) if mine else None)
    assert sum(b["pairs"] for b in report.calibration) == 6
    assert sql(store, "SELECT model_name FROM loopevaluation ORDER BY id") == [("seed-rm",), ("loop-loop",)]


def test_promotion_is_judged_on_the_same_pairs_with_a_minimum_and_a_paired_statistic():
    """Hand-worked: 40 pairs, the old model right on 34, the new on 26 (2 only-new, 10 only-old): McNemar's exact
    p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79/4096."""
    worse = PairedComparison(40, 26 / 40, 34 / 40, 2, 10, mcnemar_p(2, 10))
    assert mcnemar_p(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    promote, why = promotion_decision(worse, "new", "old", tolerance=0.02, minimum=30)
    assert not promote and why.startswith("not promoted") and "same 40 held-out pairs" in why and "p = 0.0386" in why
    promote, why = promotion_decision(worse, "new", "old", tolerance=0.25, minimum=30)
    assert promote and "0.650" in why and "0.850" in why  # within a (generous) tolerance
    few = PairedComparison(7, 1.0, 0.0, 7, 0, mcnemar_p(7, 0))
    promote, why = promotion_decision(few, "new", "old", tolerance=0.02, minimum=30)
    assert not promote and why == "kept old: too few held-out pairs to judge (n=7; the loop judges on at least 30, " \
                                  "min_heldout_pairs)"
    assert labels_needed_to_judge(30, 0.1) == 300 and labels_needed_to_judge(5, 0.25) == 20


def test_a_worse_version_is_refused_on_the_held_out_pairs_both_models_scored(loop_store, tmp_path):
    """Two registered models judged on the same held-out rows: the oracle is a plain forward of each side, and a
    new version that is right less often than the current one (beyond the tolerance) stays unpromoted."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.preferences.pairs import build_preference_rows
    from core.training.demo_model import build_demo_reward_model
    from storage.registry import register_model

    store = loop_store
    rows = build_preference_rows(store, datasets=["loop"]).rows[:12]
    texts = [r["prompt"][0]["content"] + r["chosen"][0]["content"] + r["rejected"][0]["content"] for r in rows]
    folders = {name: build_demo_reward_model(tmp_path / name, texts * 4, hidden_size=32, num_layers=1, num_heads=2,
                                             seed=seed) for name, seed in (("old", 1), ("new", 2))}

    def plain_right(folder) -> list[bool]:  # noqa: ANN001
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)

        def reward(row, side: str) -> float:  # noqa: ANN001
            text = tokenizer.apply_chat_template([*row["prompt"], *row[side]], tokenize=False)
            with torch.inference_mode():
                return model(input_ids=torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, 0].item()
        return [reward(r, "chosen") > reward(r, "rejected") for r in rows]

    right = {name: plain_right(folder) for name, folder in folders.items()}
    with store.write() as session:
        for name, folder in folders.items():
            register_model(session, name=name, path=str(folder), config={"max_length": 1024})
    compared = compare_on_held_out(store, "new", "old", rows)
    assert compared.n == 12
    assert compared.new_accuracy == pytest.approx(sum(right["new"]) / 12)
    assert compared.old_accuracy == pytest.approx(sum(right["old"]) / 12)
    assert compared.only_new_right == sum(n and not o for n, o in zip(right["new"], right["old"], strict=True))
    admin = actor_for(store, None)
    configure_loop(store, admin, "loop", LoopSettings(model="old", promotion_tolerance=0.0, min_heldout_pairs=5))
    better, worse = ("new", "old") if compared.difference > 0 else ("old", "new")
    if compared.difference != 0:
        configure_loop(store, admin, "loop", LoopSettings(model=better))
        with store.write() as session:
            session.execute(__import__("sqlalchemy").text(f"UPDATE dataset SET promoted_model = '{better}' WHERE name = 'loop'"))
        note = after_training(store, "loop", worse, rows)
        assert note.startswith("not promoted") and "same 12 held-out pairs" in note and "McNemar p" in note
        assert sql(store, "SELECT promoted_model FROM dataset WHERE name = 'loop'") == [(better,)]
    note = after_training(store, "loop", "new" if better == "old" else "old", rows[:3])
    assert note.startswith(f"kept {better}: too few held-out pairs to judge (n=3")


def test_the_random_arm_takes_its_share_and_an_item_keeps_its_arm():
    arms = [arm_of(1, cid, 0.1) for cid in range(1, 5001)]
    assert arms.count("random") / len(arms) == pytest.approx(0.1, abs=0.015)
    assert arms == [arm_of(1, cid, 0.1) for cid in range(1, 5001)]
    keys = {k.comparison_id: k for k in queue_keys(1, {1: 0.5, 2: 0.1, 3: None, 4: 0.3}, 0.0)}
    assert sorted(keys, key=lambda cid: keys[cid].key) == [2, 4, 1, 3]  # smallest margin first, unscorable last


def test_loop_settings_are_checked_and_need_the_settings_permission(loop_store):
    store = loop_store
    admin = actor_for(store, None)
    for settings, message in ((LoopSettings(order="sideways"), "order must be one of"),
                              (LoopSettings(order="uncertainty"), "needs a model"),
                              (LoopSettings(model="missing"), "no registered model named 'missing'"),
                              (LoopSettings(random_fraction=1.5), "share of items"),
                              (LoopSettings(retrain_every=-1), "retrain every")):
        with pytest.raises(LoopError, match=message):
            configure_loop(store, admin, "loop", settings)
    add_user(store, "eng", "engineer", "correct horse battery")
    with pytest.raises(PermissionDenied):
        configure_loop(store, actor_for(store, "eng"), "loop", LoopSettings(retrain_every=5))
    assert sql(store, "SELECT queue_order, retrain_every FROM dataset WHERE name = 'loop'") == [("priority", None)]


def test_saving_loop_settings_says_what_changed_and_nothing_when_the_form_is_sent_unchanged(loop_store):
    store = loop_store
    admin = actor_for(store, None)
    first = configure_loop(store, admin, "loop", LoopSettings(random_fraction=0.5, min_heldout_pairs=40))
    (fraction, heldout), = sql(store, "SELECT random_fraction, min_heldout_pairs FROM dataset WHERE name = 'loop'")
    assert (fraction, heldout) == (0.5, 40)
    assert first.notes[0].startswith("changed: ")
    assert "random arm 0.1 → 0.5" in first.notes[0] and "held-out pairs at least 30 → 40" in first.notes[0]
    again = configure_loop(store, admin, "loop", LoopSettings(random_fraction=0.5, min_heldout_pairs=40))
    assert again.notes == ["nothing changed"]


def _wait_for_sql(store, statement: str, expected, seconds: float = 300, app=None):  # noqa: ANN001, ANN201
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = sql(store, statement)
        if expected(rows):
            return rows
        time.sleep(1)
    jobs = sql(store, "SELECT id, kind, status, error, note FROM trainingjob ORDER BY id")
    raise AssertionError(f"waited {seconds} s for {statement!r}, last {rows}; jobs {jobs}\n"
                         + (app.log()[-3000:] if app is not None else ""))


# SQLite only: what this adds to the loop test above (PostgreSQL pass too) is the app's scheduler and HTTP API
# running it, which do not depend on the database; the store writes are the same ones.
@pytest.mark.slow
def test_the_whole_loop_runs_in_the_app_labels_through_the_api_retrain_and_promotion_reorder_the_queue(
        loop_store, db_url, tmp_path):
    """Import, a seed model, then the running app: an annotator labels through the HTTP API (gradio_client)
    in the order the app serves; after 4 labels the app's scheduler retrains on its own, promotes the new
    version and re-scores the queue, which the API then serves by the new model's margins (a plain forward)."""
    from conftest import run_cli, start_app
    from gradio_client import Client

    store = loop_store
    admin = actor_for(store, None)
    seed_job = submit_job(store, admin, TrainingConfig(dataset=["loop"], max_steps=30, output_name="seed-rm",
                                                       eval_fraction=0.25, seed=0))
    assert execute_job(store, seed_job, log=_quiet) == 0
    assert run_cli("adduser", "ann", "--role", "annotator", "--password", "correct horse battery",
                   db_url=db_url).returncode == 0
    configured = run_cli("datasets", "loop", "--order", "uncertainty", "--model", "latest", "--random-fraction", "0.25",
                         "--retrain-every", "4", "--promotion-tolerance", "1.0", db_url=db_url)
    assert configured.returncode != 0 and "once the loop has promoted a version" in configured.stderr + configured.stdout
    configured = run_cli("datasets", "loop", "--order", "uncertainty", "--model", "seed-rm", "--random-fraction",
                         "0.25", "--retrain-every", "4", "--promotion-tolerance", "1.0", "--min-heldout-pairs", "5",
                         db_url=db_url)
    assert configured.returncode == 0, configured.stderr
    # From now on the queue follows the loop's promoted version (seed-rm until a retrain is promoted).
    assert run_cli("datasets", "loop", "--model", "latest", db_url=db_url).returncode == 0
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        _wait_for_sql(store, "SELECT status FROM trainingjob WHERE kind = 'rescore'",
                      lambda rows: rows and all(status == "succeeded" for status, in rows), app=app)
        plain = _plain_margins(store, "seed-rm")
        stored = _stored_keys(store)
        uncertain = sorted((cid for cid in stored if stored[cid][2] == "uncertainty"), key=lambda c: (plain[c], c))
        assert [cid for cid in sorted(stored, key=lambda c: stored[c][1]) if stored[cid][2] == "uncertainty"] == uncertain

        client = Client(app.url, auth=("ann", "correct horse battery"), verbose=False)
        served = []
        for _ in range(4):
            item = client.predict("loop", api_name="/next_in_dataset")
            served.append(item["comparison_id"])
            assert client.predict(item["comparison_id"], "a", "clearly", "", api_name="/label")["changed"] is True
        assert served == sorted(stored, key=lambda c: stored[c][1])[:4]  # the queue order the margins set

        # The app retrains on its own after the 4th label, promotes, and re-scores the queue with the new version.
        _wait_for_sql(store, "SELECT status, note FROM trainingjob WHERE kind = 'train' AND id > 1",
                      lambda rows: len(rows) == 1 and rows[0][0] == "succeeded" and rows[0][1].startswith("promoted"),
                      app=app)
        (retrain,), = sql(store, "SELECT id FROM trainingjob WHERE kind = 'train' AND id > 1")
        _wait_for_sql(store, f"SELECT status FROM trainingjob WHERE kind = 'rescore' AND id > {retrain}",
                      lambda rows: rows == [("succeeded",)], app=app)
        assert sql(store, "SELECT promoted_model FROM dataset WHERE name = 'loop'") == [("loop-loop",)]
        plain, stored = _plain_margins(store, "loop-loop"), _stored_keys(store)
        assert len(stored) == 20
        for comparison_id, (margin, _, _) in stored.items():
            assert margin == pytest.approx(plain[comparison_id], abs=1e-4)
        first_uncertain = min((c for c in stored if stored[c][2] == "uncertainty"), key=lambda c: (plain[c], c))
        lowest = min(stored, key=lambda c: stored[c][1])
        assert stored[lowest][2] == "random" or lowest == first_uncertain
        assert client.predict("loop", api_name="/next_in_dataset")["comparison_id"] == lowest
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.postgres
def test_ensemble_uncertainty_orders_the_queue_by_the_saved_heads_disagreement_on_a_plain_forward(loop_store):
    """With --uncertainty ensemble the rescore job fits bootstrap heads on the labeled pairs and keeps
    them in its folder; recomputing each open pair's disagreement from those heads and the model's own
    features (a plain transformers forward) gives the stored queue order. The heads differ, and each
    fits the labeled pairs at least as well as the model's head alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from storage.jobs import job_dir

    store = loop_store
    admin = actor_for(store, None)
    seed_job = submit_job(store, admin, TrainingConfig(dataset=["loop"], max_steps=10, output_name="seed-rm",
                                                       eval_fraction=0.25, seed=0))
    assert execute_job(store, seed_job, log=_quiet) == 0
    with pytest.raises(LoopError, match="uncertainty must be one of margin, ensemble"):
        configure_loop(store, admin, "loop", LoopSettings(uncertainty="bald"))
    with pytest.raises(LoopError, match="2 to 16 heads"):
        configure_loop(store, admin, "loop", LoopSettings(ensemble_size=1))
    status = configure_loop(store, admin, "loop", LoopSettings(order="uncertainty", model="seed-rm", random_fraction=0,
                                                               uncertainty="ensemble", ensemble_size=4))
    assert execute_job(store, status.queued_job, log=_quiet) == 0
    saved = torch.load(job_dir(store, status.queued_job) / "ensemble-heads.pt")
    heads = saved["heads"]
    assert saved["model"] == "seed-rm" and heads.shape[0] == 4
    assert min(torch.dist(heads[i], heads[j]).item() for i in range(4) for j in range(i + 1, 4)) > 0

    (path,), = sql(store, "SELECT path FROM rewardmodel WHERE name = 'seed-rm'")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def features_and_reward(messages: list, text: str) -> tuple:  # noqa: ANN001
        formatted = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}], tokenize=False)
        with torch.inference_mode():
            out = model(**tokenizer(formatted, return_tensors="pt"), output_hidden_states=True)
        return out.hidden_states[-1][0, -1], out.logits[0, 0].item()

    rows = sql(store, "SELECT c.id, p.messages, a.text, b.text, c.done FROM comparison c JOIN prompt p ON p.id = "
                      "c.prompt_id JOIN completion a ON a.id = c.completion_a_id JOIN completion b ON b.id = "
                      "c.completion_b_id JOIN dataset d ON d.id = c.dataset_id WHERE d.name = 'loop'")
    votes = dict(sql(store, "SELECT comparison_id, choice FROM label"))
    spread, fitted = {}, []
    for comparison_id, messages, a_text, b_text, done in rows:
        messages = messages if isinstance(messages, list) else __import__("json").loads(messages)
        (f_a, r_a), (f_b, r_b) = features_and_reward(messages, a_text), features_and_reward(messages, b_text)
        members = torch.tensor(r_a - r_b) + heads @ (f_a - f_b)
        if done:  # a labeled seed pair: how well the members and the model's head fit the humans' vote
            sign = 1.0 if votes[comparison_id] == "a" else -1.0
            fitted.append((torch.nn.functional.logsigmoid(sign * members).mean().item(),
                           torch.nn.functional.logsigmoid(torch.tensor(sign * (r_a - r_b))).item()))
        else:
            spread[comparison_id] = torch.sigmoid(members).std(unbiased=False).item()
    assert len(spread) == 24 and len(fitted) == 16
    assert sum(member for member, _ in fitted) >= sum(base for _, base in fitted)
    stored = _stored_keys(store)
    by_key = sorted(stored, key=lambda c: stored[c][1])
    by_spread = sorted(spread, key=lambda c: (-spread[c], c))
    assert by_key == by_spread


@pytest.mark.slow
@pytest.mark.postgres
def test_ensemble_order_with_labels_on_too_few_prompts_falls_back_to_margins_and_the_job_note_says_why(store):
    rows = separable_pairs(20)
    import_rows(store, rows[:5], source="import:seed", dataset="few")  # labels on 5 prompts: below 8
    import_rows(store, [{"prompt": r["prompt"], "completions": [r["chosen"][0]["content"], r["rejected"][0]["content"]]}
                        for r in rows[5:]], source="import:pool", dataset="few")
    admin = actor_for(store, None)
    seed_job = submit_job(store, admin, TrainingConfig(dataset=["few"], max_steps=5, output_name="few-rm",
                                                       eval_fraction=0.0, seed=0))
    assert execute_job(store, seed_job, log=_quiet) == 0
    status = configure_loop(store, admin, "few", LoopSettings(order="uncertainty", model="few-rm", random_fraction=0,
                                                              uncertainty="ensemble"))
    assert execute_job(store, status.queued_job, log=_quiet) == 0
    (note,), = sql(store, f"SELECT note FROM trainingjob WHERE id = {status.queued_job}")
    assert "few-rm's margins" in note and "needs labels on 8 prompts" in note and "has 5" in note
    rows_by_key = sql(store, "SELECT c.id, c.model_margin FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                             "WHERE d.name = 'few' AND c.done = false ORDER BY c.queue_key, c.id")
    assert [margin for _, margin in rows_by_key] == sorted(margin for _, margin in rows_by_key)
