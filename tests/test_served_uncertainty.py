"""Uncertainty served: ``serve-rm --heads`` returns each reward's spread over the loop's ensemble heads.

Oracle, independent of the server: the saved head weights applied by plain torch to the reward-token
features of a plain ``AutoModelForSequenceClassification`` forward (its backbone's last hidden state at the
last token of the text formatted by RewardTrainer's documented rule: prompt + response + EOS for text, the chat
template for chat).
"""

from __future__ import annotations

import pytest
from test_reward_server import CORPUS, PlainForward, call, start_reward_server, stop

from core.config_fields import ConfigError
from core.scoring.engine import RewardScorer
from core.serving.served_models import ServedModel, load_ensemble_heads
from core.training.demo_model import build_demo_reward_model

HIDDEN = 32
ROWS = [
    ("What is 2 + 2? ", "<think>add them</think> It is 4."),
    ("Name a color. ", "Blue is a color."),
    ("Name a color. ", "four four four"),
    ([{"role": "user", "content": "Name a color."}], "<think>any will do</think> Blue."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}], "It is 4."),
]


@pytest.fixture(scope="module")
def model_and_heads(tmp_path_factory):
    """A tiny model and 5 heads saved as a rescore job saves them (``{"model", "heads"}``)."""
    import torch

    root = tmp_path_factory.mktemp("uncertainty")
    folder = build_demo_reward_model(root / "rm", CORPUS, hidden_size=HIDDEN, num_layers=1, num_heads=2, seed=4)
    heads = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(28)) * 0.5
    torch.save({"model": "rm", "heads": heads}, root / "ensemble-heads.pt")
    return folder, root / "ensemble-heads.pt"


def spread_by_hand(plain: PlainForward, heads_file, prompt, response: str) -> float:  # noqa: ANN001
    """Population std over the heads of delta_k . f, f the backbone's last hidden state at the last token."""
    import torch

    heads = torch.load(heads_file, weights_only=True)["heads"]
    backbone = getattr(plain.model, plain.model.base_model_prefix)
    with torch.inference_mode():
        hidden = backbone(input_ids=torch.tensor([plain.ids(prompt, response)])).last_hidden_state[0, -1]
    members = plain.reward(prompt, response) + heads @ hidden
    return float(members.std(unbiased=False))


@pytest.mark.slow
def test_score_and_get_reward_return_the_spread_over_the_saved_heads(model_and_heads, db_url, tmp_path):
    folder, heads_file = model_and_heads
    process, url = start_reward_server(tmp_path / "serve.log", "--model", str(folder), "--heads", str(heads_file),
                                       "--db", db_url)
    try:
        plain = PlainForward(folder)
        expected = [spread_by_hand(plain, heads_file, p, r) for p, r in ROWS]
        assert min(expected) > 1e-3  # the heads disagree, so a wrong feature or head shows
        status, body = call(url + "/score", {"prompts": [p for p, _ in ROWS], "completions": [r for _, r in ROWS],
                                             "segments": True})
        assert status == 200
        assert body["rewards"] == pytest.approx([plain.reward(p, r) for p, r in ROWS], abs=1e-4)
        assert body["reward_spread"] == pytest.approx(expected, abs=1e-4)
        text_rows = [(p, r) for p, r in ROWS if isinstance(p, str)]
        status, body = call(url + "/get_reward", {"query": [p + r for p, r in text_rows]})
        assert status == 200
        assert body["extra_logs"]["reward_spread"] == pytest.approx(expected[:len(text_rows)], abs=1e-4)
        assert body["extra_logs"]["over_max_length"] == [0.0] * len(text_rows)
        assert call(url + "/info")[1]["models"][0]["ensemble_heads"]["members"] == 5
    finally:
        stop(process)


def test_heads_of_another_width_or_a_file_that_is_not_heads_are_refused(model_and_heads, tmp_path):
    import torch

    folder, _ = model_and_heads
    model = ServedModel(str(folder), RewardScorer(folder, device="cpu"), None)
    torch.save({"model": "other", "heads": torch.zeros(5, HIDDEN + 1)}, tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=f"do not fit .* reads {HIDDEN} features"):
        load_ensemble_heads(model, tmp_path / "wide.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not the loop's ensemble heads"):
        load_ensemble_heads(model, tmp_path / "junk.pt")
    assert model.heads is None


def test_an_ensemble_of_models_gets_the_spread_over_their_rewards(model_and_heads, tmp_path):
    import asyncio
    import concurrent.futures
    import statistics

    from core.serving.batching import DynamicBatcher
    from core.serving.reward_service import RewardService

    folders = [model_and_heads[0], build_demo_reward_model(tmp_path / "rm5", CORPUS, hidden_size=HIDDEN, num_layers=1,
                                                           num_heads=2, seed=5)]
    models = [ServedModel(str(folder), RewardScorer(folder, device="cpu"), None) for folder in folders]
    batcher = DynamicBatcher([m.scorer for m in models], wait_seconds=0.0, max_batch_sequences=64, max_queue=4).start()
    try:
        service = RewardService(models, "mean", batcher)
        prepared = service.prepare_completions([p for p, _ in ROWS], [r for _, r in ROWS])
        # In a thread of its own: the browser tests' Playwright (sync API, session-scoped) keeps an event loop
        # running in the main thread for the rest of the session, where asyncio.run refuses to start another.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            results = pool.submit(asyncio.run, service.score(prepared)).result()
    finally:
        batcher.close()
    plain = [PlainForward(folder) for folder in folders]
    expected = [statistics.pstdev([model.reward(p, r) for model in plain]) for p, r in ROWS]
    assert [r.spread for r in results] == pytest.approx(expected, abs=1e-4)
    assert min(expected) > 1e-3
