"""Dataset diagnostics with a reward model trained on the demo pairs: accuracy, suspected label
errors found and sent back to the queue, health checks, and two models compared."""

from __future__ import annotations

import pytest

from core.accounts import PermissionDenied, actor_for, add_user
from core.data.demo_data import demo_preference_rows
from core.data.importer import import_rows
from core.labeling.actions import next_comparison
from core.scoring.diagnostics import Diagnostics, _health, compare_models, diagnose, send_for_review
from core.scoring.engine import RewardScorer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_demo_model) -> RewardScorer:  # noqa: ANN001
    return RewardScorer(trained_demo_model[0], device="cpu")


def swapped(row: dict) -> dict:
    return {**row, "chosen": row["rejected"], "rejected": row["chosen"]}


def test_mislabeled_pairs_are_suspected_and_sent_back_for_review(store, trained):
    rows = demo_preference_rows()
    import_rows(store, rows[:10] + [swapped(r) for r in rows[10:]], source="import:mixed")
    report = diagnose(store, trained, name="demo")
    assert len(report.pairs) == 14
    assert report.accuracy == pytest.approx(10 / 14)
    suspects = {p.comparison_id for p in report.suspected_label_errors}
    assert suspects == {11, 12, 13, 14}
    assert report.thinking_accuracy is not None

    add_user(store, "eng", "engineer", "long enough pw")
    add_user(store, "ann", "annotator", "long enough pw")
    with pytest.raises(PermissionDenied):
        send_for_review(store, actor_for(store, "ann"), sorted(suspects))
    assert send_for_review(store, actor_for(store, "eng"), sorted(suspects)) == 4
    annotator = actor_for(store, "ann")
    handed = []
    for _ in range(4):
        view = next_comparison(store, annotator)
        handed.append(view.comparison_id)
        from core.labeling.actions import label_on_screen

        label_on_screen(store, annotator, view, "left")
    assert sorted(handed) == sorted(suspects)
    assert next_comparison(store, annotator) is None


def _plain_margins(folder, rows: list[dict]) -> list[float]:
    """The oracle: transformers' own forward on each side, formatted with the model's chat template."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def reward(messages: list[dict]) -> float:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    return [reward(row["prompt"] + row["chosen"]) - reward(row["prompt"] + row["rejected"]) for row in rows]


def test_two_models_disagree_where_their_preferences_flip(store, trained, tmp_path):
    from core.training.demo_model import build_demo_reward_model

    rows = demo_preference_rows()
    import_rows(store, rows, source="demo")
    raw = build_demo_reward_model(tmp_path / "raw", ["a b c"] * 10, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    flips = compare_models(store, trained, RewardScorer(raw, device="cpu"))
    first, second = _plain_margins(trained.name, rows), _plain_margins(raw, rows)
    expected = {index + 1 for index, (a, b) in enumerate(zip(first, second, strict=True)) if (a > 0) != (b > 0)}
    assert expected, "the untrained model should disagree somewhere: the check would prove nothing"
    assert {f.comparison_id for f in flips} == expected


def _report(**overrides) -> Diagnostics:
    values = dict(model="m", pairs=[object()] * 40, accuracy=0.95, mean_margin=2.0, answer_accuracy=0.9, thinking_accuracy=None,
                  length_correlation=0.1)
    values.update(overrides)
    return Diagnostics(**values)


def test_health_checks_name_the_symptom_and_the_fix():
    assert _health(_report(), [-1.0, 1.0, -2.0, 2.0], typical_margin=2.0) == []
    [poor] = _health(_report(accuracy=0.52), [-1.0, 1.0, -2.0, 2.0], typical_margin=0.01)
    assert poor.symptom == "poor discrimination" and "learning rate" in poor.fix
    [extreme] = _health(_report(), [40.0, 41.0, 39.0, 42.0], typical_margin=1.0)
    assert extreme.symptom == "overconfident or extreme rewards" and "center_rewards_coefficient" in extreme.fix
    [length] = _health(_report(length_correlation=0.8), [-1.0, 1.0, -2.0, 2.0], typical_margin=2.0)
    assert length.symptom == "reward grows with length" and "over 80 responses" in length.evidence
    assert "on 40 pairs" in poor.evidence
    # Below the minimum no symptom is diagnosed, and the page says why.
    [withheld] = _health(_report(pairs=[object()] * 29, accuracy=0.52), [-1.0, 1.0], typical_margin=0.01)
    assert withheld.symptom == "no health verdict" and "29 pair(s)" in withheld.evidence
