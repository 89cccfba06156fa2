"""The score and eval commands, and the reward function for TRL, on a tiny model built on the spot."""

from __future__ import annotations

import json

import pytest
from conftest import PROJECT_ROOT

from core.scoring.engine import RewardScorer
from core.serving.reward_fn import RewardEnsemble, RewardNormalizer, make_reward_fn
from core.training.demo_model import build_demo_reward_model

CORPUS = ["What is 2 + 2? <think>add them</think> It is 4.", "Name a color. Blue is a color."] * 20


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [build_demo_reward_model(root / f"rm{seed}", CORPUS, hidden_size=32, num_layers=1, num_heads=2, seed=seed)
            for seed in (1, 2)]


def run(*args: str):  # noqa: ANN202
    import subprocess
    import sys

    return subprocess.run([sys.executable, "app.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_score_writes_rewards_segments_and_trajectories(model_dirs, tmp_path):
    rows = [
        {"prompt": "What is 2 + 2? ", "response": "<think>add them</think> It is 4.", "id": 1},
        {"prompt": [{"role": "user", "content": "Name a color."}], "response": "Blue.", "id": 2},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    done = run("score", "--model", str(model_dirs[0]), "--input", str(source), "--output", str(out), "--trajectory")
    assert done.returncode == 0, done.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    expected = RewardScorer(model_dirs[0], device="cpu").score_responses([(r["prompt"], r["response"]) for r in rows],
                                                                       trajectory=True)
    assert [s["id"] for s in scored] == [1, 2]  # the input fields are kept
    for row, result in zip(scored, expected, strict=True):
        assert row["reward"] == pytest.approx(result.reward, abs=1e-5)
        assert row["answer_reward"] == pytest.approx(result.answer_reward, abs=1e-5)
        assert [token for token, _ in row["trajectory"]] == [token for token, _ in result.trajectory]
    assert scored[0]["thinking_reward"] is not None and scored[1]["thinking_reward"] is None
    assert "".join(token for token, _ in scored[0]["trajectory"]) == rows[0]["response"]


def test_score_refuses_bad_rows_naming_the_line_and_writes_nothing(model_dirs, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "Q", "response": "A"}\n{"prompt": "Q"}\n{"prompt": 3, "response": "A"}\n')
    out = tmp_path / "out.jsonl"
    done = run("score", "--model", str(model_dirs[0]), "--input", str(source), "--output", str(out))
    assert done.returncode == 2
    assert f"{source}:2: field 'response' is missing" in done.stderr
    assert f"{source}:3: field 'prompt' must be a string, got int" in done.stderr
    assert not out.exists()


def test_eval_prints_accuracy_margin_and_count(model_dirs, tmp_path):
    pairs = [{"prompt": f"Q{i}? ", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(8)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    done = run("eval", "--model", str(model_dirs[0]), "--input", str(source))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    model = RewardScorer(model_dirs[0], device="cpu")
    margins = [model.score(p["prompt"], [p["chosen"]])[0] - model.score(p["prompt"], [p["rejected"]])[0] for p in pairs]
    assert result["n"] == 8
    assert result["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 8)
    assert result["mean_margin"] == pytest.approx(sum(margins) / 8, abs=1e-5)
    # The confound baselines on the same pairs, worked out by hand: every chosen is longer ("good answer i" vs
    # "bad i"), so "prefer the longer" is right on all 8 and "prefer the shorter" on none; no positions in a file.
    assert result["baselines"]["prefer_longer"] == 1.0 and result["baselines"]["prefer_shorter"] == 0.0
    assert result["baselines"]["prefer_position_a"] is None
    assert result["verdict"].startswith("no verdict on confounds: 8 pair(s), fewer than 30")


def test_the_confound_verdict_names_a_baseline_the_model_does_not_beat():
    from core.scoring.confounds import ScoredPair, confound_baselines

    # 40 pairs: the model is right on 24 (0.6); the chosen response is longer in 32 (0.8).
    pairs = [ScoredPair(10 if i < 32 else 5, 5 if i < 32 else 10, 1.0 if i < 24 else 0.0, 0.5) for i in range(40)]
    result = confound_baselines(pairs)
    assert (result.n, result.model_accuracy, result.prefer_longer, result.prefer_shorter) == (40, 0.6, 0.8, 0.2)
    assert "no better than 'prefer the longer response' on these 40 pairs (0.600 vs 0.800)" in result.verdict
    ties = confound_baselines([ScoredPair(5, 5, 1.0, 0.0, chosen_at_a=True)] * 30)
    assert ties.prefer_longer == ties.prefer_shorter == 0.5 and ties.prefer_position_a == 1.0


def test_a_missing_model_is_a_clear_error(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "Q", "response": "A"}\n')
    done = run("score", "--model", str(tmp_path / "nope"), "--input", str(source), "--output", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2 and "cannot load" in done.stderr and "Traceback" not in done.stderr


def test_make_reward_fn_has_trls_signature_and_scores_like_the_engine(model_dirs):
    reward_fn = make_reward_fn(model_dirs[0])
    model = RewardScorer(model_dirs[0], device="cpu")
    prompts = ["What is 2 + 2? ", "Name a color. "]
    completions = ["It is 4.", "Blue."]
    assert reward_fn(prompts=prompts, completions=completions, completion_ids=None) == pytest.approx(
        model.score_pairs(list(zip(prompts, completions, strict=True))), abs=1e-5
    )
    chat_prompts = [[{"role": "user", "content": "Name a color."}]]
    chat_completions = [[{"role": "assistant", "content": "Blue."}]]
    assert reward_fn(chat_prompts, chat_completions) == pytest.approx(
        model.score_pairs([(chat_prompts[0], "Blue.")]), abs=1e-5
    )


def test_an_ensemble_reduces_by_mean_or_min(model_dirs):
    models = [RewardScorer(folder, device="cpu") for folder in model_dirs]
    examples = [("What is 2 + 2? ", "It is 4."), ("Name a color. ", "Blue.")]
    each = [m.score_pairs(examples) for m in models]
    assert RewardEnsemble(models, "mean").score_pairs(examples) == pytest.approx(
        [(a + b) / 2 for a, b in zip(*each, strict=True)], abs=1e-6)
    assert RewardEnsemble(models, "min").score_pairs(examples) == pytest.approx(
        [min(a, b) for a, b in zip(*each, strict=True)], abs=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of"):
        RewardEnsemble(models, "max")


def test_the_normalizer_z_scores_and_clips():
    normalizer = RewardNormalizer.fit([1.0, 2.0, 3.0, 4.0, 5.0], clip=1.0)
    assert normalizer(3.0) == pytest.approx(0.0)
    assert normalizer(3.0 + normalizer.std * 0.5) == pytest.approx(0.5)
    assert normalizer(100.0) == 1.0 and normalizer(-100.0) == -1.0


@pytest.mark.slow
def test_score_trajectory_memory_grows_linearly_from_8k_to_16k_tokens(tmp_path):
    """The per-token trajectory's memory grows linearly with the length (the oracle: the OS's peak RSS of the
    `score` process at two lengths); 16k tokens once took 16 GB through a dense length x length mask, whose
    growth from 8k to 16k alone would be ~3x that of the first 8k."""
    from conftest import run_app_measuring_peak_rss

    folder = build_demo_reward_model(tmp_path / "rm", ["step by step we add the numbers"] * 20, hidden_size=32,
                                     num_layers=2, num_heads=2, max_positions=65_536)
    peaks, lengths = {}, {}
    for repeats in (1_400, 2_800):
        response = "<think>" + "step by step we add the numbers " * repeats + "</think> four"
        rows = tmp_path / f"rows{repeats}.jsonl"
        rows.write_text(json.dumps({"prompt": "2+2? ", "response": response}) + "\n")
        out = tmp_path / f"out{repeats}.jsonl"
        done, peaks[repeats] = run_app_measuring_peak_rss("score", "--model", str(folder), "--input", str(rows),
                                                          "--output", str(out), "--trajectory")
        assert done.returncode == 0, done.stderr[-2000:]
        lengths[repeats] = len(json.loads(out.read_text())["trajectory"])
    print(f"\ntrajectory peak RSS: {lengths[1_400]:,} tokens {peaks[1_400] / 2**20:.0f} MiB, "
          f"{lengths[2_800]:,} tokens {peaks[2_800] / 2**20:.0f} MiB")
    assert lengths[2_800] >= 16_000 and lengths[1_400] >= 8_000
    assert peaks[2_800] < 1.5 * 2**30
    # Doubling the length adds at most a few hundred MiB (linear terms); a dense mask would add ~768 MiB more.
    assert peaks[2_800] - peaks[1_400] < 400 * 2**20
