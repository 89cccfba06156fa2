"""Which model a name means for score, eval and Inspect: a registry reference (name@vN, or a plain
name's newest version) wins, then a local folder, and anything else fails at once listing the
registered names, with no network call (a hub lookup once retried for ~50 s before failing)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from core.accounts import operator_actor
from core.scoring.engine import RewardScorer
from core.scoring.evaluation import EvalConfig, ScoreConfig, evaluate_pairs, model_folder, score_file
from core.scoring.inspection import resolve_model
from core.scoring.model_names import UnknownModel
from core.training.demo_model import build_demo_reward_model
from storage.registry import next_version_name, register_model

CORPUS = ["What is 2 + 2? It is 4.", "Name a color. Blue is a color.", "good answer bad"] * 20
PAIRS = [{"prompt": f"Q{i}? ", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(6)]


@pytest.fixture
def versions(store, tmp_path):
    """``rm`` registered three times (rm, rm@v2, rm@v3: folders of three plain folders), and ``other``."""
    folders = {}
    with store.write() as session:
        for name in ("rm", "rm@v2", "rm@v3", "other"):
            folder = tmp_path / "registered" / name.replace("@", "-")
            folder.mkdir(parents=True)
            folders[name] = folder
            register_model(session, name=name, path=str(folder))
    return folders


def _refuse_network(monkeypatch) -> list:  # noqa: ANN001
    """Record (and refuse) every name lookup and connection this process attempts."""
    attempts = []

    def refused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        attempts.append(args[:2])
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refused(*a))
    return attempts


def test_the_next_version_of_a_name_follows_its_highest_version(store, versions):
    with store.write() as session:
        names = [next_version_name(session, name) for name in ("rm", "other", "new", "r_")]
    # "r_" is free: the underscore is a character of the name, not LIKE's any-one-character wildcard (rm@v2).
    assert names == ["rm@v4", "other@v2", "new", "r_"]


def test_a_versioned_name_loads_that_version_and_a_plain_name_the_newest(store, db_url, versions):
    def folder_of(name: str) -> str:
        return model_folder(EvalConfig(model=name, input=Path("unused.jsonl"), db=db_url))

    assert folder_of("rm@v2") == str(versions["rm@v2"])
    assert folder_of("rm@v1") == str(versions["rm"])
    assert folder_of("rm") == str(versions["rm@v3"])
    assert folder_of("other") == str(versions["other"])


def test_a_registered_name_wins_over_a_local_folder_of_the_same_name(store, db_url, versions, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "unregistered").mkdir()

    assert model_folder(ScoreConfig(model="other", input="i.jsonl", output="o.jsonl", db=db_url)) == str(versions["other"])
    assert model_folder(ScoreConfig(model="unregistered", input="i.jsonl", output="o.jsonl", db=db_url)) == "unregistered"


def test_an_unknown_name_fails_listing_the_registered_names_without_any_network_call(store, db_url, versions, tmp_path,
                                                                                     monkeypatch):
    attempts = _refuse_network(monkeypatch)
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))

    with pytest.raises(UnknownModel) as score_error:
        score_file(ScoreConfig(model="rm-typo", input=source, output=tmp_path / "out.jsonl", db=db_url))
    with pytest.raises(UnknownModel) as eval_error:
        evaluate_pairs(EvalConfig(model="acme/reward-model", input=source, db=db_url))
    with pytest.raises(UnknownModel) as inspect_error:
        resolve_model(store, operator_actor(store), "rm-typo")

    for error in (score_error.value, eval_error.value, inspect_error.value):
        assert "Registered models: other, rm@v3, rm@v2, rm@v1." in str(error), str(error)  # newest first
    assert attempts == []
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_the_score_command_refuses_an_unknown_name_offline_listing_the_registered_names(store, db_url, versions, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "Q", "response": "A"}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "app.py", "score", "--model", "rm-typo", "--input", str(source),
                           "--output", str(tmp_path / "o.jsonl"), "--db", db_url],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "cannot load 'rm-typo'" in done.stderr
    assert all(name in done.stderr for name in ("rm@v1", "rm@v2", "rm@v3", "other")), done.stderr
    assert "huggingface.co" not in done.stderr and "Retry" not in done.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_older_versions_stay_listed_by_models_and_load_by_their_versioned_name(store, db_url, tmp_path):
    folders = [build_demo_reward_model(tmp_path / f"rm{seed}", CORPUS, hidden_size=32, num_layers=1, num_heads=2,
                                       seed=seed) for seed in (1, 2)]
    with store.write() as session:
        register_model(session, name="rm", path=str(folders[0]))
        register_model(session, name="rm@v2", path=str(folders[1]))
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "app.py", *args, "--db", db_url], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    listed = run("models")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[-1] for line in listed.stdout.splitlines()[1:]}
    assert rows == {"rm@v1": str(folders[0]), "rm@v2": str(folders[1])}

    def mean_margin(folder: Path) -> float:  # the oracle: the folder scored directly, no registry
        model = RewardScorer(folder, device="cpu")
        return sum(model.score(p["prompt"], [p["chosen"]])[0] - model.score(p["prompt"], [p["rejected"]])[0]
                   for p in PAIRS) / len(PAIRS)

    expected = [mean_margin(folder) for folder in folders]
    assert expected[0] != pytest.approx(expected[1], abs=1e-4)  # the two versions are told apart
    for name, want in (("rm@v1", expected[0]), ("rm@v2", expected[1]), ("rm", expected[1])):
        done = run("eval", "--model", name, "--input", str(source))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["mean_margin"] == pytest.approx(want, abs=1e-5), name
