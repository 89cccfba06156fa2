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
