"""Rules below the Inspect tab and the settings, with hand-computed expectations: where a preference
flips once the thinking is removed, and the range of every admin setting."""

from __future__ import annotations

import pytest
from conftest import sql

from core.scoring.engine import FormattedExample, ScoreResult
from core.scoring.inspection import inspect_responses
from storage.datasets import MAX_GUIDELINES_CHARS, DatasetError, DatasetSettings, change_dataset, get_or_create_dataset
from storage.settings import SettingError, get_setting, set_setting


class FixedScorer:
    """A scorer whose rewards are given: the flips rule is checked on numbers worked out by hand."""

    is_decoder, max_length = False, 100

    def __init__(self, rewards: list[tuple[float, float]]) -> None:
        self.rewards = rewards  # (whole reward, answer reward) per response

    def score_responses(self, examples, trajectory=False, progress=None):  # noqa: ANN001, ANN201
        return [ScoreResult(whole, None, answer, 3, False) for whole, answer in self.rewards[: len(examples)]]

    def format(self, prompt, response):  # noqa: ANN001, ANN201
        return FormattedExample([1, 2, 3], f"{prompt}{response}", None, [])


def test_a_flip_is_reported_where_the_whole_and_the_answer_prefer_different_responses():
    # A: whole 2.0, answer 0.5 · B: whole 1.0, answer 1.5 · C: whole 0.0, answer -1.0
    # A vs B: whole prefers A, answer prefers B -> flip. A vs C and B vs C: both prefer the same -> none.
    scorer = FixedScorer([(2.0, 0.5), (1.0, 1.5), (0.0, -1.0)])
    inspection = inspect_responses({"m": scorer}, "p", ["a", "b", "c"])
    assert [(f.first, f.second, f.whole_prefers, f.answer_prefers) for f in inspection.flips] == [(0, 1, 0, 1)]
    agreeing = inspect_responses({"m": FixedScorer([(2.0, 2.0), (1.0, 1.0)])}, "p", ["a", "b"])
    assert agreeing.flips == []
    with pytest.raises(ValueError, match="at least two"):
        inspect_responses({"m": scorer}, "p", ["only one"])


@pytest.mark.parametrize("key,bad,good", [("annotators_may_inspect", [2, -1], [0, 1])])
def test_every_store_setting_refuses_values_out_of_its_range_and_keeps_the_last_good_one(store, key, bad, good):
    for value in good:
        with store.write() as session:
            set_setting(session, key, value)
        with store.read() as session:
            assert get_setting(session, key) == value
    for value in bad:
        with pytest.raises(SettingError):
            with store.write() as session:
                set_setting(session, key, value)
        with store.read() as session:
            assert get_setting(session, key) == good[-1]


@pytest.mark.parametrize("field,bad,good", [
    ("overlap", [0, 11], [1, 10]),
    ("lease_seconds", [9, 86_401], [10, 86_400]),
    ("default_priority", [-1_000_001, 1_000_001], [-5, 7]),
])
def test_every_dataset_setting_refuses_values_out_of_its_range_and_keeps_the_last_good_one(store, field, bad, good):
    with store.write() as session:
        get_or_create_dataset(session, "d")
    for value in good:
        with store.write() as session:
            change_dataset(session, "d", DatasetSettings(**{field: value}))
        assert sql(store, f"SELECT {field} FROM dataset WHERE name = 'd'") == [(value,)]
    for value in bad:
        with pytest.raises(DatasetError, match=str(value)):
            with store.write() as session:
                change_dataset(session, "d", DatasetSettings(**{field: value}))
        assert sql(store, f"SELECT {field} FROM dataset WHERE name = 'd'") == [(good[-1],)]


def test_guidelines_over_the_cap_unknown_datasets_and_unknown_settings_are_refused(store):
    with store.write() as session:
        get_or_create_dataset(session, "d")
    with pytest.raises(DatasetError, match=f"{MAX_GUIDELINES_CHARS:,}"):
        with store.write() as session:
            change_dataset(session, "d", DatasetSettings(guidelines="x" * (MAX_GUIDELINES_CHARS + 1)))
    assert sql(store, "SELECT length(guidelines) < 1000 FROM dataset WHERE name = 'd'") == [(True,)]
    with pytest.raises(DatasetError, match="no dataset named 'nope'"):
        with store.write() as session:
            change_dataset(session, "nope", DatasetSettings(overlap=2))
    with pytest.raises(SettingError, match="unknown setting"):
        with store.write() as session:
            set_setting(session, "overlap", 2)


def test_an_over_length_response_gets_no_reward_no_flip_and_agrees_with_the_score_command(tmp_path):
    """One rule for what a model can score: Inspect gives a response over max_length no reward (as ``score``
    does for the same input, read from its output file), leaves it out of the flips and says so; its answer
    alone, which fits, is given apart. The oracle for the fitting side is a plain forward pass."""
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.scoring.engine import RewardScorer
    from core.scoring.evaluation import ScoreConfig, score_file
    from core.training.demo_model import build_demo_reward_model

    folder = build_demo_reward_model(tmp_path / "rm", ["What is 2 + 2? <think>add them</think> It is 4."] * 20,
                                     hidden_size=32, num_layers=1, num_heads=2, seed=4)
    scorer = RewardScorer(str(folder), max_length=40)
    prompt = "What is 2 + 2? "
    short, long = "<think>add</think> It is 4.", "<think>" + "add them up " * 30 + "</think> It is 4."
    inspection = inspect_responses({"rm": scorer}, prompt, [short, long, "It is 5."])
    by_index = {s.response_index: s for s in inspection.scores}
    assert by_index[1].result.reward is None and by_index[1].result.answer_reward is None
    assert by_index[1].result.trajectory is None and by_index[1].result.exceeds_max_length
    assert by_index[1].answer_alone_reward is not None  # "It is 4." alone fits
    assert inspection.pairs_compared == 1  # A vs C only: the pairs with B are left out
    assert any("response B" in why and "max_length 40" in why for why in inspection.left_out)

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        plain = model(input_ids=torch.tensor([tokenizer(prompt + short + tokenizer.eos_token)["input_ids"]])).logits[0, 0]
    assert abs(by_index[0].result.reward - plain.item()) < 1e-4

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": prompt, "response": r}) + "\n" for r in (short, long)))
    score_file(ScoreConfig(model=str(folder), input=rows, output=tmp_path / "out.jsonl"), scorer)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written[1]["reward"] is None and written[1]["over_max_length"] is True
    assert abs(written[0]["reward"] - by_index[0].result.reward) < 1e-6
