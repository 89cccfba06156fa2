"""A queue model that is cheap to refresh: a frozen encoder (a tiny BERT made on the spot, under the models folder)
plus bootstrap heads, refitted by the scheduler's tick after every N human labels. Oracle: a plain transformers
forward (mean-pooled last hidden state of the (prompt, response) pair), heads solved by hand with Newton's method in
numpy on the same bootstrap resamples, DeltaUCB computed by hand, and the queue keys read with SQL."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import torch
from conftest import sql

from core.accounts import actor_for, add_user
from core.data.importer import import_rows
from storage.jobs import job_dir
from core.jobs.worker import execute_job
from core.labeling.actions import label_stored, next_comparison
from core.loop.ensemble import L2
from core.loop.frozen_queue import queue_refit_tick
from core.loop.settings import LoopError, LoopSettings, configure_loop
from core.model_folders import models_folder
from core.preferences.pairs import build_preference_rows, response_text

WORDS = "good great fine careful kind clear bad poor rude wrong vague lazy the answer is item yes no maybe".split()


def tiny_encoder(folder) -> None:  # noqa: ANN001
    """A 2-layer BERT with a word-level vocabulary, random weights (seeded): a stand-in for all-MiniLM-L6-v2."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [str(i) for i in range(40)]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)


@pytest.fixture
def frozen_loop(store):  # noqa: ANN001, ANN201
    """12 labeled seed pairs (good words beat bad ones), 5 prompts of 4 candidates, the tiny encoder."""
    good, bad = WORDS[:6], WORDS[6:12]
    seed = [{"prompt": f"item {i}", "chosen": f"the answer is {good[i % 6]} {good[(i + 1) % 6]}",
             "rejected": f"the answer is {bad[i % 6]} {bad[(i + 3) % 6]}"} for i in range(12)]
    import_rows(store, seed, source="import:seed", dataset="cands")
    pool = [{"prompt": f"item {20 + i}", "completions": [f"yes {good[i]} {i}", f"no {bad[i]} {i}", f"maybe {i}",
                                                       f"the answer is {good[i + 1]} {bad[i]}"]} for i in range(5)]
    import_rows(store, pool, source="import:pool", dataset="cands")
    tiny_encoder(models_folder(store) / "tiny-encoder")
    admin = actor_for(store, None)  # the local operator, before any account exists
    add_user(store, "ann", "annotator", "annotator pass 1")
    return store, admin


def features_by_hand(store, prompt: str, response: str) -> np.ndarray:  # noqa: ANN001
    from transformers import AutoModel, AutoTokenizer

    folder = models_folder(store) / "tiny-encoder"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        hidden = model(**tokenizer(prompt, response, return_tensors="pt")).last_hidden_state[0]
    return hidden.mean(0).double().numpy()


def newton_heads(differences: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Each member: argmin mean -log sigmoid(x . d) + L2/2 |d|^2 on the bootstrap resample fit_heads draws."""
    generator = torch.Generator().manual_seed(seed)
    heads = []
    for _ in range(size):
        x = differences[torch.randint(len(differences), (len(differences),), generator=generator).numpy()]
        d = np.zeros(x.shape[1])
        for _ in range(50):
            p = 1 / (1 + np.exp(-(x @ d)))
            gradient = -(x.T @ (1 - p)) / len(x) + L2 * d
            hessian = (x.T * (p * (1 - p))) @ x / len(x) + L2 * np.eye(len(d))
            d -= np.linalg.solve(hessian, gradient)
        heads.append(d)
    return np.stack(heads)


@pytest.mark.slow
def test_the_queue_encoders_heads_refit_after_n_labels_equal_heads_fitted_by_hand_and_order_the_queue(frozen_loop):
    store, admin = frozen_loop
    status = configure_loop(store, admin, "cands", LoopSettings(
        order="uncertainty", queue_encoder="tiny-encoder", refit_every=3, uncertainty="ensemble", ensemble_size=4,
        random_fraction=0, acquisition="delta-ucb"))
    assert status.queue_encoder == "tiny-encoder" and status.refit_every == 3 and status.queued_job is not None
    assert execute_job(store, status.queued_job, log=lambda *_: None) == 0
    annotator = actor_for(store, "ann")
    for count in range(3):
        assert queue_refit_tick(store) == [], f"a refit queued after {count} label(s), before 3"
        view = next_comparison(store, annotator, "cands")
        label_stored(store, annotator, view.comparison_id, "a")
    refit, = queue_refit_tick(store)
    assert queue_refit_tick(store) == []  # one waits at a time
    (dataset_id,), = sql(store, "SELECT id FROM dataset WHERE name = 'cands'")
    caches = store.data_dir / "queue-features"
    (cache_file,) = caches.glob(f"{dataset_id}-*.pt")
    stale = caches / f"{dataset_id}-0123456789abcdef.pt"  # as another encoder's cache of this dataset would be
    torch.save({"x": torch.zeros(3)}, stale)
    lines: list[str] = []
    assert execute_job(store, refit, log=lambda line: lines.append(str(line))) == 0
    assert any("(0 text(s) encoded, the rest cached" in line for line in lines), lines  # every text seen before
    # The cache holds what the dataset needs now, one entry per (prompt, completion) of its comparisons, and the
    # other encoder's cache is gone.
    texts = sql(store, "SELECT DISTINCT c.prompt_id, s.completion_id FROM comparison c JOIN (SELECT id, "
                       "completion_a_id AS completion_id FROM comparison UNION SELECT id, completion_b_id FROM "
                       f"comparison) s ON s.id = c.id WHERE c.dataset_id = {dataset_id}")
    assert len(torch.load(cache_file)) == len(texts) and not stale.exists()

    saved = torch.load(job_dir(store, refit) / "ensemble-heads.pt")
    assert saved["human_labels"] == 3
    rows = build_preference_rows(store, datasets=["cands"]).rows
    assert len(rows) == 15
    differences = np.stack([features_by_hand(store, r["prompt"], response_text(r["chosen"]))
                            - features_by_hand(store, r["prompt"], response_text(r["rejected"])) for r in rows])
    heads = newton_heads(differences, 4, dataset_id)
    assert heads.std(0).max() > 0.05, "the members should differ (bootstrap resamples of distinct features)"
    assert np.allclose(saved["heads"].double().numpy(), heads, atol=1e-3), "the refit heads differ from Newton's"

    # The queue follows them: per prompt the DeltaUCB pair (on the hand heads) first, the chosen pairs by the heads'
    # disagreement, the rest held back (key >= 1).
    open_items = sql(store, "SELECT c.id, p.text, a.id, a.text, b.id, b.text, c.queue_key FROM comparison c "
                            "JOIN prompt p ON p.id = c.prompt_id JOIN completion a ON a.id = c.completion_a_id "
                            "JOIN completion b ON b.id = c.completion_b_id WHERE c.dataset_id = "
                            f"{dataset_id} AND c.done = false")
    by_prompt: dict[str, dict] = {}
    for cid, prompt, a_id, a_text, b_id, b_text, key in open_items:
        entry = by_prompt.setdefault(prompt, {"pairs": {}, "members": {}})
        entry["pairs"][(min(a_id, b_id), max(a_id, b_id))] = (cid, key)
        for completion, text in ((a_id, a_text), (b_id, b_text)):
            entry["members"][completion] = heads @ features_by_hand(store, prompt, text)
    chosen_spread = {}
    for entry in by_prompt.values():
        members = entry["members"]
        mu = {c: m.mean() for c, m in members.items()}
        sigma = {c: m.std() for c, m in members.items()}

        def gap(pair: tuple[int, int], mu: dict = mu, sigma: dict = sigma) -> float:
            i, j = pair
            return max(mu[i] + sigma[i] - mu[j] + sigma[j], mu[j] + sigma[j] - mu[i] + sigma[i])

        best = max(entry["pairs"], key=gap)
        cid, key = entry["pairs"][best]
        assert key < 1, "the DeltaUCB pair by hand is not served first"
        assert all(k >= 1 for pair, (_, k) in entry["pairs"].items() if pair != best)
        chosen_spread[cid] = (1 / (1 + np.exp(-(members[best[0]] - members[best[1]])))).std()
    keys = dict((cid, key) for cid, *_, key in open_items)
    assert sorted(chosen_spread, key=lambda c: keys[c]) == sorted(chosen_spread, key=lambda c: -chosen_spread[c])
    assert len(by_prompt) == 5 and all(len(e["pairs"]) >= 5 for e in by_prompt.values())
    assert set(json.loads(sql(store, "SELECT value FROM setting WHERE key = 'loop_queue_encoder'")[0][0])) == {"cands"}
    assert all(len(set(combinations(e["members"], 2))) == 6 for e in by_prompt.values())


def test_a_queue_encoder_outside_the_models_folder_is_refused(frozen_loop, tmp_path):
    store, admin = frozen_loop
    tiny_encoder(tmp_path / "elsewhere")
    with pytest.raises(LoopError, match="inside the models folder"):
        configure_loop(store, admin, "cands", LoopSettings(order="uncertainty", queue_encoder=str(tmp_path / "elsewhere")))
    with pytest.raises(LoopError, match="refit every N labels"):
        configure_loop(store, admin, "cands", LoopSettings(refit_every=-1))
