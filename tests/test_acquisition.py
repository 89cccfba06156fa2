"""Acquisition that chooses pairs: per prompt of K = 4 candidates, the loop serves first the one pair its rule
picks and holds the prompt's other pairs back. Oracle: the rule computed by hand from the saved ensemble heads
and a plain transformers forward of the registered model (features and rewards per completion), and SQL."""

from __future__ import annotations

import json
from itertools import combinations

import pytest
import torch
from conftest import sql
from test_loop import _quiet
from test_training import separable_pairs

from core.accounts import actor_for
from core.data.importer import import_rows
from core.jobs.scheduling import submit_job
from storage.jobs import job_dir
from core.jobs.worker import execute_job
from core.labeling.actions import next_comparison
from core.loop.settings import LoopError, LoopSettings, configure_loop
from core.training.config import TrainingConfig

PROMPTS = 5


@pytest.fixture
def candidates_loop(store):  # noqa: ANN001, ANN201
    """16 labeled seed pairs, then 5 prompts of 4 candidates (6 open pairs each), and a model trained on the seeds."""
    rows = separable_pairs(16 + PROMPTS)
    import_rows(store, rows[:16], source="import:seed", dataset="cands")
    pool = [{"prompt": r["prompt"], "completions": [r["chosen"][0]["content"], r["rejected"][0]["content"],
                                                    f"maybe {i}", f"The answer is {2 * i}, I think."]}
            for i, r in enumerate(rows[16:])]
    import_rows(store, pool, source="import:pool", dataset="cands")
    admin = actor_for(store, None)
    seed_job = submit_job(store, admin, TrainingConfig(dataset=["cands"], max_steps=10, output_name="seed-rm",
                                                       eval_fraction=0.25, seed=0))
    assert execute_job(store, seed_job, log=_quiet) == 0
    return store


def by_hand(store, heads) -> dict[int, dict]:  # noqa: ANN001
    """Per open prompt: its open comparisons by completion pair, and each completion's plain-forward reward and
    members' rewards (reward + head . features, features = last hidden state at the last token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    (path,), = sql(store, "SELECT path FROM rewardmodel WHERE name = 'seed-rm'")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = sql(store, "SELECT c.id, c.prompt_id, p.messages, c.completion_a_id, a.text, c.completion_b_id, b.text "
                      "FROM comparison c JOIN prompt p ON p.id = c.prompt_id JOIN completion a ON a.id = "
                      "c.completion_a_id JOIN completion b ON b.id = c.completion_b_id JOIN dataset d ON d.id = "
                      "c.dataset_id WHERE d.name = 'cands' AND c.done = false")
    prompts: dict[int, dict] = {}
    for cid, prompt_id, messages, a_id, a_text, b_id, b_text in rows:
        messages = messages if isinstance(messages, list) else json.loads(messages)
        entry = prompts.setdefault(prompt_id, {"pairs": {}, "reward": {}, "members": {}})
        entry["pairs"][tuple(sorted((a_id, b_id)))] = cid
        for completion_id, text in ((a_id, a_text), (b_id, b_text)):
            formatted = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}],
                                                      tokenize=False)
            with torch.inference_mode():
                out = model(**tokenizer(formatted, return_tensors="pt"), output_hidden_states=True)
            entry["reward"][completion_id] = out.logits[0, 0].item()
            entry["members"][completion_id] = out.logits[0, 0].item() + heads @ out.hidden_states[-1][0, -1]
    return prompts


def rescore_with(store, rule: str) -> tuple[dict, dict, torch.Tensor]:  # noqa: ANN001
    status = configure_loop(store, actor_for(store, None), "cands", LoopSettings(
        order="uncertainty", model="seed-rm", random_fraction=0, uncertainty="ensemble", ensemble_size=4,
        acquisition=rule))
    assert status.acquisition == rule and execute_job(store, status.queued_job, log=_quiet) == 0
    folder = job_dir(store, status.queued_job)
    keys = dict(sql(store, "SELECT c.id, c.queue_key FROM comparison c JOIN dataset d ON d.id = c.dataset_id "
                           "WHERE d.name = 'cands' AND c.done = false"))
    return keys, json.loads((folder / "acquisition.json").read_text()), torch.load(folder / "ensemble-heads.pt")["heads"]


@pytest.mark.slow
def test_delta_ucb_serves_each_prompts_largest_optimistic_gap_first_and_holds_the_rest_back(candidates_loop):
    store = candidates_loop
    keys, record, heads = rescore_with(store, "delta-ucb")
    expected, gaps = set(), {}
    for entry in by_hand(store, heads).values():
        members = entry["members"]
        upper = {c: (m.mean() + m.std(unbiased=False)).item() for c, m in members.items()}
        lower = {c: (m.mean() - m.std(unbiased=False)).item() for c, m in members.items()}
        best = max(entry["pairs"], key=lambda p: max(upper[p[0]] - lower[p[1]], upper[p[1]] - lower[p[0]]))
        expected.add(entry["pairs"][best])
        gaps[entry["pairs"][best]] = max(upper[best[0]] - lower[best[1]], upper[best[1]] - lower[best[0]])
    assert len(expected) == PROMPTS and len(keys) == 6 * PROMPTS
    assert {cid for cid, key in keys.items() if key < 1} == expected
    assert set(map(int, record["chosen"])) == expected
    assert all(chosen["rule"] == "delta-ucb" and chosen["params"] == {"beta": 1.0} and len(chosen["held_back"]) == 5
               for chosen in record["chosen"].values())
    # The queue as an annotator sees it: a chosen pair first.
    from core.accounts import add_user

    add_user(store, "ann", "annotator", "long enough pw")
    served = next_comparison(store, actor_for(store, "ann"), "cands").comparison_id
    assert served in expected
    # The loop page says why each chosen pair is served, in the rule's numbers (the gap worked by hand above).
    from core.loop.evaluation import loop_report

    add_user(store, "lead", "engineer", "long enough pw")
    report = loop_report(store, actor_for(store, "lead"), "cands")
    assert {c.item_id for c in report.chosen_pairs} == expected and report.chosen_total == PROMPTS
    for chosen in report.chosen_pairs:
        assert chosen.rule == "delta-ucb" and chosen.held_back == 5 and chosen.still_open
        assert f"largest optimistic gap {gaps[chosen.item_id]:.3f} (beta 1.0) of 6 open pairs" in chosen.why


@pytest.mark.slow
def test_double_thompson_sampling_and_margin_pick_what_the_heads_and_the_model_say(candidates_loop):
    store = candidates_loop
    keys, record, heads = rescore_with(store, "dts")
    prompts = by_hand(store, heads)
    for cid, chosen in record["chosen"].items():
        entry = prompts[chosen["prompt_id"]]
        first_member, second_member = chosen["params"]["members"]
        first = max(entry["members"], key=lambda c: entry["members"][c][first_member].item())
        second = max((c for c in entry["members"] if c != first), key=lambda c: entry["members"][c][second_member].item())
        assert entry["pairs"][tuple(sorted((first, second)))] == int(cid)
    assert len(record["chosen"]) == PROMPTS and sum(key < 1 for key in keys.values()) == PROMPTS

    keys, record, _ = rescore_with(store, "margin")
    for entry in prompts.values():
        reward = entry["reward"]
        closest = min(entry["pairs"], key=lambda p: abs(reward[p[0]] - reward[p[1]]))
        assert keys[entry["pairs"][closest]] < 1
        assert all(keys[cid] >= 1 for pair, cid in entry["pairs"].items() if pair != closest)
    with pytest.raises(LoopError, match="acquisition must be one of all, margin, delta-ucb, dts, random"):
        configure_loop(store, actor_for(store, None), "cands", LoopSettings(acquisition="ucb"))
    status = configure_loop(store, actor_for(store, None), "cands", LoopSettings(acquisition="all"))
    assert execute_job(store, status.queued_job, log=_quiet) == 0
    assert all(key < 1 for (key,) in sql(store, "SELECT c.queue_key FROM comparison c JOIN dataset d ON d.id = "
                                                "c.dataset_id WHERE d.name = 'cands' AND c.done = false"))
    assert len(list(combinations(range(4), 2))) * PROMPTS == len(keys)


def test_delta_ucb_prefers_an_uncertain_optimistic_gap_to_the_largest_mean_gap():
    """Worked by hand: A is sure at 1, B sure at 0, C uncertain around 0.6 (two members: -1.4 and 2.6, population
    std 2). Mean gaps: A-B 1.0, A-C 0.4, B-C 0.6; optimistic gaps (beta 1): A-B 1.0, A over C 1 - (0.6 - 2) = 2.4,
    C over B (0.6 + 2) - 0 = 2.6. DeltaUCB asks about B and C; the margin rule about A and C (closest rewards)."""
    from core.loop.acquisition import choose_pair

    a, b, c = 1, 2, 3
    members = torch.tensor([[1.0, 0.0, -1.4], [1.0, 0.0, 2.6]])
    base = torch.tensor([1.0, 0.0, 0.6])
    pairs = [(a, b), (a, c), (b, c)]
    assert choose_pair("delta-ucb", [a, b, c], pairs, members, base).pair == (b, c)
    assert choose_pair("margin", [a, b, c], pairs, None, base).pair == (a, c)
    assert choose_pair("delta-ucb", [a, b, c], [(a, b), (a, c)], members, base).pair == (a, c)  # only open pairs
    with pytest.raises(ValueError, match="needs the ensemble's heads"):
        choose_pair("dts", [a, b, c], pairs, None, base)
