"""The reward server (``python app.py serve-rm``) on a tiny model built on the spot, as RL trainers call it.

Oracles, independent of the server: the ``score`` command's output file, a plain
``AutoModelForSequenceClassification`` forward on the text formatted by RewardTrainer's documented
rule (standard: prompt + response + EOS; chat: the chat template, nothing added), and, for the
parity check, a vLLM-style ``/classify`` server written here on plain transformers.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, _free_port, run_app

from core.config_fields import ConfigError
from core.serving.batching import DynamicBatcher, ScoringWork, ServerBusy
from core.scoring.engine import RewardScorer
from core.serving.http_client import RemoteError, wait_until_serving
from core.serving.client import make_remote_reward_fn
from core.serving.config import ServerConfig
from core.training.demo_model import build_demo_reward_model, build_demo_tokenizer
from storage.engine import Store
from storage.registry import register_model

CORPUS = ["What is 2 + 2? <think>add them</think> It is 4.", "Name a color. Blue is a color.",
          "four four four", "the numbers add up"] * 20
MAX_LENGTH = 56  # the registered model's training max_length: longer examples get no reward
LONG = "four " * 60
ROWS = [
    {"prompt": "What is 2 + 2? ", "response": "<think>add them</think> It is 4."},
    {"prompt": "Name a color. ", "response": "Blue is a color."},
    {"prompt": [{"role": "user", "content": "Name a color."}], "response": "<think>any will do</think> Blue."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}], "response": "It is 4."},
    {"prompt": "What is 2 + 2? ", "response": LONG},  # over max_length
]
PAIRS = [{"prompt": f"Question {i}: what is {i} + {i}? ", "chosen": f"It is {2 * i}.", "rejected": f"maybe {i}"}
         for i in range(8)]
KEY = "k" * 40
PARITY_BODY_CAP_MB = "1"


class PlainForward:
    """Rewards by a plain transformers forward pass, formatting by TRL's rule written out here."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def ids(self, prompt, response: str) -> list[int]:  # noqa: ANN001
        tokenizer = self.tokenizer
        if isinstance(prompt, str):
            eos = tokenizer.eos_token
            return tokenizer(prompt + response + ("" if response.endswith(eos) else eos))["input_ids"]
        text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def reward(self, prompt, response: str) -> float:  # noqa: ANN001
        with self.torch.inference_mode():
            return self.model(input_ids=self.torch.tensor([self.ids(prompt, response)])).logits[0, 0].item()


def call(url: str, body=None, *, headers: dict | None = None, raw: bytes | None = None) -> tuple[int, dict]:  # noqa: ANN001
    """(status, JSON body) of a GET (no body) or POST, errors included."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {**json.loads(error.read() or b"{}"), "_headers": dict(error.headers)}


def start_reward_server(log_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py serve-rm ARGS`` on a free port, once its /health says it serves (after the parity check)."""
    port = _free_port()
    log = open(log_path, "w")  # noqa: SIM115 (the child writes to it)
    process = subprocess.Popen([sys.executable, "app.py", "serve-rm", *args, "--port", str(port)], cwd=PROJECT_ROOT,
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    if wait_until_serving(url, timeout=240, still_starting=lambda: process.poll() is None):
        return process, url
    process.kill()
    raise RuntimeError(f"serve-rm did not start (exit code {process.poll()}):\n{log_path.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [build_demo_reward_model(root / f"rm{seed}", CORPUS, hidden_size=32, num_layers=1, num_heads=2, seed=seed)
            for seed in (1, 2)]


@pytest.fixture(scope="module")
def registry(module_db_url, model_dirs, tmp_path_factory):
    """A store holding labeled pairs and the model registered as ``rm`` by a training job's record:
    max_length 56, a quarter of the pairs held out with seed 3."""
    from core.data.importer import ImportConfig, import_file

    folder = tmp_path_factory.mktemp("pairs")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    store = Store(module_db_url)
    import_file(store, ImportConfig(path=folder / "pairs.jsonl"))
    training = {"max_length": MAX_LENGTH, "eval_fraction": 0.25, "seed": 3, "dataset": None, "annotators": None,
                "labels_since": None, "base_model": "demo"}
    with store.write() as session:
        register_model(session, name="rm", path=str(model_dirs[0]), base_model="demo", config=training, n_pairs=8)
        register_model(session, name="rm-other", path=str(model_dirs[1]), base_model="demo", config=training, n_pairs=8)
    store.dispose()
    return module_db_url


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve-rm.log"
    process, url = start_reward_server(log, "--model", "rm", "--db", registry,
                                       env={"REWARDLAB_MAX_SERVE_BODY_MB": PARITY_BODY_CAP_MB})
    yield url
    stop(process)


@pytest.fixture(scope="module")
def oracle(model_dirs):
    return PlainForward(model_dirs[0])


@pytest.fixture(scope="module")
def scored_by_cli(registry, tmp_path_factory):
    """``python app.py score --trajectory`` on ROWS: the command-line oracle."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    done = run_app("score", "--model", "rm", "--db", registry, "--input", str(folder / "in.jsonl"),
                   "--output", str(folder / "out.jsonl"), "--trajectory")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]


def close(a: float | None, b: float | None, tol: float = 1e-4) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)


def test_score_endpoint_matches_the_score_command(server, scored_by_cli):
    status, body = call(server + "/score", {"prompts": [r["prompt"] for r in ROWS],
                                            "completions": [r["response"] for r in ROWS],
                                            "segments": True, "trajectory": True})
    assert status == 200, body
    assert scored_by_cli[-1]["over_max_length"] and scored_by_cli[-1]["reward"] is None
    for i, expected in enumerate(scored_by_cli):
        assert body["over_max_length"][i] == expected["over_max_length"]
        for ours, theirs in (("rewards", "reward"), ("thinking_rewards", "thinking_reward"), ("answer_rewards", "answer_reward")):
            assert close(body[ours][i], expected[theirs]), (i, ours, body[ours][i], expected[theirs])
        if expected["trajectory"] is None:
            assert body["trajectories"][i] is None
            continue
        assert [t for t, _ in body["trajectories"][i]] == [t for t, _ in expected["trajectory"]]
        assert all(close(a, b) for (_, a), (_, b) in zip(body["trajectories"][i], expected["trajectory"], strict=True))


def test_get_reward_and_classify_match_the_score_command(server, scored_by_cli, oracle):
    text_rows = [i for i, r in enumerate(ROWS) if isinstance(r["prompt"], str)]
    status, body = call(server + "/get_reward", {"query": [ROWS[i]["prompt"] + ROWS[i]["response"] for i in text_rows],
                                                 "prompts": [ROWS[i]["prompt"] for i in text_rows], "labels": [""] * 3})
    assert status == 200, body
    assert all(close(body["rewards"][k], scored_by_cli[i]["reward"]) for k, i in enumerate(text_rows))
    assert body["scores"] == body["rewards"]
    assert body["extra_logs"]["over_max_length"] == [float(scored_by_cli[i]["over_max_length"]) for i in text_rows]

    # vLLM's pooling API as verl calls it: the text already formatted (here with EOS), activation off.
    eos = oracle.tokenizer.eos_token
    status, body = call(server + "/classify", {"input": [ROWS[i]["prompt"] + ROWS[i]["response"] + eos for i in text_rows],
                                               "use_activation": False})
    assert status == 200, body
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["data"][0]["num_classes"] == 1
    assert all(close(body["data"][k]["probs"][0], scored_by_cli[i]["reward"]) for k, i in enumerate(text_rows))
    assert body["data"][2]["over_max_length"] is True and body["data"][2]["probs"] == [None]
    status, body = call(server + "/classify", {"input": [5] * 300})  # one sequence of ids: a length, not a count
    assert status == 200 and body["data"][0]["over_max_length"] is True and body["data"][0]["probs"] == [None]
    for i, row in enumerate(ROWS):
        if isinstance(row["prompt"], list):
            messages = [*row["prompt"], {"role": "assistant", "content": row["response"]}]
            status, plain = call(server + "/classify", {"messages": messages, "activation": False})
            assert status == 200 and close(plain["data"][0]["probs"][0], scored_by_cli[i]["reward"])
            status, squashed = call(server + "/classify", {"messages": messages})  # vLLM's default: the sigmoid
            assert close(squashed["data"][0]["probs"][0], 1 / (1 + math.exp(-scored_by_cli[i]["reward"])))


def test_rewards_equal_a_plain_transformers_forward(server, oracle):
    rows = ROWS[:4]
    status, body = call(server + "/score", {"prompts": [r["prompt"] for r in rows], "completions": [r["response"] for r in rows]})
    assert status == 200
    assert body["rewards"] == pytest.approx([oracle.reward(r["prompt"], r["response"]) for r in rows], abs=1e-4)
    assert body["n_tokens"] == [len(oracle.ids(r["prompt"], r["response"])) for r in rows]


def test_a_text_over_max_length_gets_a_null_reward_and_a_flag_never_a_truncated_one(server, oracle):
    prompt = "What is 2 + 2? "
    assert len(oracle.ids(prompt, LONG)) > MAX_LENGTH >= len(oracle.ids(prompt, "It is 4."))
    status, body = call(server + "/score", {"prompts": [prompt, prompt], "completions": [LONG, "It is 4."]})
    assert status == 200
    assert body["rewards"][0] is None and body["over_max_length"] == [True, False]
    assert body["rewards"][1] == pytest.approx(oracle.reward(prompt, "It is 4."), abs=1e-4)
    status, body = call(server + "/get_reward", {"query": [prompt + LONG]})
    assert body["rewards"] == [None] and body["extra_logs"]["over_max_length"] == [1.0]


def test_score_with_steps_returns_each_steps_reward_equal_to_a_plain_forward_of_its_prefix(server, oracle):
    import torch

    completion = "<think>two plus two\n\nis four</think>\n\nIt is 4."
    status, body = call(server + "/score", {"prompts": ["What is 2 + 2? "], "completions": [completion], "steps": True})
    assert status == 200, body
    assert body["steps"] == [["two plus two", "is four", "It is 4."]]
    # the oracle: the text of each step's prefix (up to the next step), tokenized within the whole example, read by
    # a plain forward of that token prefix (the model pools at its last token)
    ids = oracle.tokenizer("What is 2 + 2? " + completion + oracle.tokenizer.eos_token, return_offsets_mapping=True)
    prompt_chars = len("What is 2 + 2? ")
    ends = [prompt_chars + completion.index("is four"), prompt_chars + completion.index("It is 4."),
            prompt_chars + len(completion)]
    expected = []
    for end in ends:
        last = max(k for k, (a, b) in enumerate(ids["offset_mapping"]) if a < b <= end)
        with torch.inference_mode():
            expected.append(oracle.model(input_ids=torch.tensor([ids["input_ids"][: last + 1]])).logits[0, 0].item())
    assert body["step_rewards"][0] == pytest.approx(expected, abs=1e-4)
    assert body["step_scores"][0] == pytest.approx([1 / (1 + math.exp(-r)) for r in expected], abs=1e-4)
    status, refused = call(server + "/score", {"prompts": ["p"], "completions": ["a"], "step_separator": "text:###"})
    assert status == 400 and "send it with" in refused["error"]


def test_pooling_token_classify_returns_the_score_at_every_token_equal_to_a_plain_forward_of_each_prefix(server, oracle):
    import torch

    ids = oracle.ids("What is 2 + 2? ", "two plus two is four")
    status, body = call(server + "/pooling", {"input": [ids], "task": "token_classify", "use_activation": False})
    assert status == 200, body
    per_token = [values[0] for values in body["data"][0]["data"]]
    with torch.inference_mode():
        expected = [oracle.model(input_ids=torch.tensor([ids[: k + 1]])).logits[0, 0].item() for k in range(len(ids))]
    assert per_token == pytest.approx(expected, abs=1e-4)
    status, squashed = call(server + "/pooling", {"input": [ids]})  # vLLM's default: the activation (sigmoid)
    assert [v[0] for v in squashed["data"][0]["data"]] == pytest.approx([1 / (1 + math.exp(-r)) for r in expected],
                                                                        abs=1e-4)
    status, refused = call(server + "/pooling", {"input": "x", "task": "embed"})
    assert status == 400 and "token_classify" in refused["error"]


def test_health_and_info_describe_the_served_model(server):
    assert call(server + "/health") == (200, {"status": "serving"})
    status, info = call(server + "/info")
    assert status == 200
    assert info["server"] == "rewardlab" and info["apis"] == ["/score", "/get_reward", "/classify", "/pooling"]
    (model,) = info["models"]
    assert (model["model"], model["registered_name"], model["version"]) == ("rm", "rm", 1)
    assert model["max_length"] == MAX_LENGTH and model["training_config"]["eval_fraction"] == 0.25
    # The parity check ran on the registry's snapshot: 2 held-out pairs of 8 (a quarter), then the rest.
    assert "16 responses of 2 held-out pairs" in info["reference_samples"]
    assert info["parity"]["passed"] is True and info["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/score", b"not json", 400, "not valid JSON"),
    ("/score", b"\xff\xfe", 400, "not UTF-8"),
    ("/score", b"[" * 100 + b"]" * 100, 400, "deeper than"),
    ("/score", {"completions": ["x"]}, 400, "prompts: missing"),
    ("/score", {"prompts": ["a", "b"], "completions": ["x", 3]}, 400, "completions[1]: must be a string"),
    ("/score", {"prompts": ["a"], "completions": ["x", "y"]}, 400, "one prompt per completion"),
    ("/score", {"prompts": [[{"role": "robot", "content": "x"}]], "completions": ["y"]}, 400, "prompts[0][0].role"),
    ("/score", {"prompts": ["a"], "completions": [[{"role": "user", "content": "x"}]]}, 400, "completions[0]: the last"),
    ("/score", {"prompts": ["a"] * 257, "completions": ["b"] * 257}, 413, "at most 256"),
    ("/score", {"prompts": ["a"], "completions": ["x" * 200_001]}, 413, "completions[0]: 200,001 characters"),
    ("/score", {"prompts": ["a"] * 9, "completions": ["b"] * 9, "trajectory": True}, 400, "at most 8"),
    ("/score", {"prompts": ["a"], "completions": ["b"], "segments": "yes"}, 400, "segments: must be true or false"),
    ("/score", {"prompts": ["a"] * 8, "completions": ["x" * 150_000] * 8}, 413, "over 1,048,576 bytes"),
    ("/get_reward", {"query": "not a list"}, 400, "query: must be a list"),
    ("/classify", {"input": [1, "a"]}, 400, "mixes kinds"),
    ("/classify", {"input": [[10**9]]}, 400, "input[0][0]: token id 1000000000 is outside"),
    ("/classify", {"messages": [{"role": "user", "content": "hi"}]}, 400, "last message must be the assistant's"),
    ("/classify", {"input": "x", "truncate_prompt_tokens": 5}, 400, "never truncates"),
    ("/classify", {"input": "x", "model": "other"}, 404, "does not exist"),
])
def test_a_bad_body_gets_a_4xx_that_says_what_and_where(server, path, body, status, says):
    got, answer = call(server + path, raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert got == status, answer
    assert says in answer["error"]


def test_concurrent_requests_each_get_their_own_rewards(server, oracle):
    prompts = ["What is 2 + 2? ", "Name a color. ", [{"role": "user", "content": "Name a color."}]]
    requests = [[(prompts[(k + j) % 3], f"answer {k} {'four ' * (j + k % 5)}") for j in range(8)] for k in range(16)]
    before = call(server + "/info")[1]["batching"]["requests"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda pairs: call(server + "/score", {"prompts": [p for p, _ in pairs],
                                                                       "completions": [c for _, c in pairs]}), requests))
    for pairs, (status, body) in zip(requests, answers, strict=True):
        assert status == 200
        assert body["rewards"] == pytest.approx([oracle.reward(p, c) for p, c in pairs], abs=1e-4)
    assert call(server + "/info")[1]["batching"]["requests"] - before == 16


class CountingScorer:
    """A real scorer that counts the batched calls the batcher makes."""

    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer, self.calls = scorer, []

    def score_ids(self, sequences):  # noqa: ANN001, ANN201
        self.calls.append(len(sequences))
        return self.scorer.score_ids(sequences)


def test_the_batcher_scores_waiting_requests_together_and_refuses_past_its_queue(model_dirs):
    scorer = RewardScorer(model_dirs[0], device="cpu")
    tokenizer = scorer.tokenizer
    works = [[tokenizer(f"request {k} item {j}" + " four" * j + "<|im_end|>")["input_ids"] for j in range(k + 2)]
             for k in range(3)]
    counting = CountingScorer(scorer)
    batcher = DynamicBatcher([counting], wait_seconds=0.05, max_batch_sequences=64, max_queue=3)
    futures = [batcher.submit(ScoringWork([sequences])) for sequences in works]  # all waiting before the worker starts
    with pytest.raises(ServerBusy, match="3 requests are waiting"):
        batcher.submit(ScoringWork([works[0]]))
    batcher.start()
    results = [future.result(timeout=60) for future in futures]
    batcher.close()
    assert counting.calls == [2 + 3 + 4]  # one pass for the three requests
    for sequences, result in zip(works, results, strict=True):
        assert result.rewards[0] == pytest.approx(scorer.score_ids(sequences), abs=1e-5)
    # A request is never split: with room for 5 sequences, requests of 3 and 3 go in two passes.
    counting.calls.clear()
    small = DynamicBatcher([counting], wait_seconds=0.05, max_batch_sequences=5, max_queue=4)
    pending = [small.submit(ScoringWork([works[1]])) for _ in range(2)]
    small.start()
    assert all(future.result(timeout=60) for future in pending)
    small.close()
    assert counting.calls == [3, 3]


def test_the_server_refuses_to_serve_when_its_http_path_differs_from_in_process_scoring(model_dirs, monkeypatch):
    from core.serving.parity import ParityFailed
    from core.serving.reward_service import CompletionScore, RewardService
    from core.serving.reward_server import serve_reward_models

    assemble = RewardService.assemble

    def off_by_a_little(self, prepared, scored):  # noqa: ANN001, ANN202
        return [CompletionScore(r.reward + 1e-3 if r.reward is not None else None, r.thinking_reward, r.answer_reward,
                                r.over_max_length, r.n_tokens) for r in assemble(self, prepared, scored)]

    monkeypatch.setattr(RewardService, "assemble", off_by_a_little)
    port = _free_port()
    lines, outcome = [], []

    def serve() -> None:
        try:
            serve_reward_models(ServerConfig(model=[str(model_dirs[0])], port=port), say=lines.append)
        except Exception as error:  # noqa: BLE001 (the test reads it)
            outcome.append(error)

    # In a thread only so that a broken check, which would serve for ever, fails the test instead of hanging it.
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), f"the server kept serving rewards that differ from in-process scoring: {lines}"
    assert len(outcome) == 1 and isinstance(outcome[0], ParityFailed), outcome
    report = outcome[0].report
    assert not report.passed and report.max_abs_diff == pytest.approx(1e-3, abs=1e-5)
    assert any("/score" in line and "max |Δ| 1.00e-03" in line for line in report.lines())
    assert not any(line.startswith("serving") for line in lines)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(f"http://127.0.0.1:{port}/health")  # it stopped listening


def test_the_start_gate_lets_only_the_parity_check_through_until_it_passes():
    from starlette.requests import Request

    from core.serving.routes import PARITY_HEADER, ServerState, admit
    from core.serving.request_bodies import BadRequest

    def request(**headers: str) -> Request:
        return Request({"type": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})

    state = ServerState()
    with pytest.raises(BadRequest, match="parity check is running") as refused:
        admit(request(), "", state)
    assert refused.value.status == 503
    admit(request(**{PARITY_HEADER: state.parity_token}), "", state)
    with pytest.raises(BadRequest) as refused:
        admit(request(**{PARITY_HEADER: state.parity_token}), KEY, state)  # the key comes first
    assert refused.value.status == 401
    state.phase = "failed"
    with pytest.raises(BadRequest, match="failed"):
        admit(request(**{PARITY_HEADER: state.parity_token}), "", state)
    state.phase = "serving"
    admit(request(Authorization=f"Bearer {KEY}"), KEY, state)


def test_check_server_passes_the_same_model_and_reports_a_different_one(server, registry):
    same = run_app("check-server", server, "--model", "rm", "--db", registry)
    assert same.returncode == 0, same.stdout + same.stderr
    for endpoint in ("/score", "/get_reward", "/classify"):  # the 16 responses of the registry's snapshot
        assert f"  {endpoint}: 16 samples, max |Δ|" in same.stdout
    assert "order agreement 100.0%" in same.stdout and "PASS" in same.stdout
    other = run_app("check-server", server, "--model", "rm-other", "--db", registry)
    assert other.returncode == 1, other.stdout + other.stderr
    assert "FAIL" in other.stdout and "max |Δ|" in other.stdout


@pytest.fixture
def vllm_like_server(model_dirs):
    """A vLLM pooling server's /classify, written on plain transformers: token ids or chat messages in,
    ``data[i].probs`` out, max_model_len refused with a 400."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    plain = PlainForward(model_dirs[0])

    async def classify(request):  # noqa: ANN001, ANN202
        body = await request.json()
        if body.get("model") not in (None, "fake-rm"):
            return JSONResponse({"message": "model not found"}, status_code=404)
        if "messages" in body:
            text = plain.tokenizer.apply_chat_template(body["messages"], tokenize=False)
            inputs = [plain.tokenizer(text, add_special_tokens=False)["input_ids"]]
        else:
            inputs = body["input"] if isinstance(body["input"][0], list) else [body["input"]]
        with plain.torch.inference_mode():
            rewards = [plain.model(input_ids=plain.torch.tensor([ids])).logits[0, 0].item() for ids in inputs]
        return JSONResponse({"object": "list", "data": [{"index": i, "label": "LABEL_0", "probs": [r], "num_classes": 1}
                                                        for i, r in enumerate(rewards)]})

    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_check_server_accepts_a_vllm_style_pooling_server(vllm_like_server, model_dirs):
    done = run_app("check-server", vllm_like_server, "--model", str(model_dirs[0]), "--served-model-name", "fake-rm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/classify: 8 samples" in done.stdout and "PASS" in done.stdout
    assert "not spoken by the server: /score, /get_reward" in done.stdout


def test_make_remote_reward_fn_scores_text_and_chat_like_a_plain_forward(server, oracle):
    reward_fn = make_remote_reward_fn(server)
    prompts = ["What is 2 + 2? ", [{"role": "user", "content": "Name a color."}], "What is 2 + 2? "]
    completions = ["It is 4.", [{"role": "assistant", "content": "Blue."}], LONG]  # TRL's conversational shape too
    rewards = reward_fn(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None)
    assert rewards[:2] == pytest.approx([oracle.reward(prompts[0], "It is 4."), oracle.reward(prompts[1], "Blue.")], abs=1e-4)
    assert rewards[2] is None  # over max_length: TRL counts None as no reward from this function
    assert reward_fn.__name__ == "rewardlab_remote"


def test_off_loopback_needs_an_api_key(model_dirs):
    refused = run_app("serve-rm", "--model", str(model_dirs[0]), "--host", "0.0.0.0", timeout=90)
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in refused.stderr and "--api-key-env" in refused.stderr
    unset = run_app("serve-rm", "--model", str(model_dirs[0]), "--host", "0.0.0.0", "--api-key-env", "NO_SUCH_VAR_SET",
                    timeout=90)
    assert unset.returncode == 2 and "$NO_SUCH_VAR_SET is unset" in unset.stderr
    with pytest.raises(ConfigError, match="without an API key"):
        ServerConfig(model=["x"], host="192.168.1.20")


@pytest.mark.slow
def test_a_server_with_a_key_requires_the_bearer_token(model_dirs, tmp_path):
    env = {"RM_TEST_KEY": KEY}
    process, url = start_reward_server(tmp_path / "keyed.log", "--model", str(model_dirs[0]), "--host", "0.0.0.0",
                                       "--api-key-env", "RM_TEST_KEY", env=env)
    try:
        body = {"prompts": ["What is 2 + 2? "], "completions": ["It is 4."]}
        status, answer = call(url + "/score", body)
        assert status == 401 and "Authorization: Bearer" in answer["error"]
        assert answer["_headers"]["www-authenticate"] == "Bearer"
        assert call(url + "/score", body, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(url + "/info")[0] == 401
        assert call(url + "/health")[0] == 200  # no key needed to know it serves
        status, answer = call(url + "/score", body, headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200 and answer["rewards"][0] is not None
        with pytest.raises(RemoteError) as without:
            make_remote_reward_fn(url)(["Q "], ["A"])
        assert without.value.status == 401
        assert make_remote_reward_fn(url, api_key=KEY)(["Q "], ["A"])[0] is not None
        no_key = run_app("check-server", url, "--model", str(model_dirs[0]))
        assert no_key.returncode == 2 and "--api-key-env" in no_key.stderr
        keyed = subprocess.run([sys.executable, "app.py", "check-server", url, "--model", str(model_dirs[0]),
                                "--api-key-env", "RM_TEST_KEY"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=300, env={**os.environ, **env})
        assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    finally:
        stop(process)


@pytest.mark.slow
def test_an_ensemble_server_normalizes_each_model_on_the_snapshot_and_takes_the_min(registry, model_dirs, tmp_path):
    process, url = start_reward_server(tmp_path / "ensemble.log", "--model", "rm", "--model", "rm-other", "--db",
                                       registry, "--normalize", "--reduction", "min")
    try:
        oracles = [PlainForward(folder) for folder in model_dirs]
        # The snapshot holds all 8 pairs (2 held out, 6 trained on): each model's z-score is fitted on their 16 responses.
        references = [(p["prompt"], p[side]) for p in PAIRS for side in ("chosen", "rejected")]
        stats = []
        for plain in oracles:
            rewards = [plain.reward(p, r) for p, r in references if len(plain.ids(p, r)) <= MAX_LENGTH]
            stats.append((statistics.fmean(rewards), statistics.pstdev(rewards)))
        prompts, completions = [r["prompt"] for r in ROWS[:4]], [r["response"] for r in ROWS[:4]]
        status, body = call(url + "/score", {"prompts": prompts, "completions": completions})
        assert status == 200
        expected = [min(max(-5.0, min(5.0, (plain.reward(p, c) - mean) / std)) for plain, (mean, std) in zip(oracles, stats))
                    for p, c in zip(prompts, completions)]
        assert body["rewards"] == pytest.approx(expected, abs=1e-4)
        status, body = call(url + "/score", {"prompts": ["Q "], "completions": ["A"], "trajectory": True})
        assert status == 400 and "trajectories are per model's tokens" in body["error"]
    finally:
        stop(process)


def build_tiny_policy(folder: Path) -> Path:
    """A tiny causal Qwen3 with the demo tokenizer: a policy for a GRPO step on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    tokenizer = build_demo_tokenizer(CORPUS)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_grpo_step_runs_with_the_remote_reward_fn(server, oracle, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    policy_dir = build_tiny_policy(tmp_path / "policy")
    remote = make_remote_reward_fn(server)
    calls = []

    def recorded(prompts, completions, **kwargs):  # noqa: ANN001, ANN202
        rewards = remote(prompts, completions, **kwargs)
        calls.append((list(prompts), list(completions), rewards))
        return rewards

    recorded.__name__ = "rm"
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, use_cpu=True, bf16=False, report_to=[], logging_steps=1,
                      save_strategy="no", disable_tqdm=True, learning_rate=1e-3, seed=0)
    data = datasets.Dataset.from_list([{"prompt": "What is 2 + 2? "}, {"prompt": "Name a color. "}] * 4)
    before = call(server + "/info")[1]["batching"]["requests"]
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir), reward_funcs=[recorded], args=args,
                          train_dataset=data, processing_class=AutoTokenizer.from_pretrained(policy_dir))
    trainer.train()
    assert len(calls) == 2 and call(server + "/info")[1]["batching"]["requests"] - before == 2
    logged = [entry["rewards/rm/mean"] for entry in trainer.state.log_history if "rewards/rm/mean" in entry]
    assert logged == pytest.approx([statistics.fmean(rewards) for _, _, rewards in calls], abs=1e-5)
    prompts, completions, rewards = calls[0]
    assert rewards == pytest.approx([oracle.reward(p, c) for p, c in zip(prompts, completions)], abs=1e-4)


# ----- round 3 of attacks: memory under parallel maximal bodies, idle connections, broken Unicode


@pytest.fixture(scope="module")
def default_caps_server(registry, tmp_path_factory):
    """The registered ``rm`` (max_length 56) served with the default body cap (16 MiB)."""
    log = tmp_path_factory.mktemp("server-default-caps") / "serve-rm.log"
    process, url = start_reward_server(log, "--model", "rm", "--db", registry)
    yield process, url
    stop(process)


@pytest.mark.slow
def test_six_concurrent_maximal_bodies_over_max_length_keep_the_server_small(default_caps_server):
    """Six /get_reward bodies of 60 texts x 200,000 characters at once, every text over max_length: before the
    prefix check every text was tokenized whole (516 -> 6,111 MiB on the team's run); the OS's RSS is the oracle."""
    import concurrent.futures

    import psutil

    process, url = default_caps_server
    server = psutil.Process(process.pid)
    before = server.memory_info().rss
    body = json.dumps({"query": [("four " * 40_000)[:200_000]] * 60}).encode()
    peak = [before]

    def send(_: int) -> tuple[int, dict]:
        return call(url + "/get_reward", raw=body)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send, i) for i in range(6)]
        while not all(f.done() for f in futures):
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.05)
        results = [f.result() for f in futures]
    for status, answer in results:
        assert status == 200, answer
        assert answer["rewards"] == [None] * 60 and answer["extra_logs"]["over_max_length"] == [1.0] * 60
    grown = (peak[0] - before) / 2**20
    print(f"serve-rm RSS {before / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB under 6 maximal bodies")
    assert peak[0] < 1.5 * 2**30, f"peak RSS {peak[0] / 2**20:.0f} MiB"
    assert grown < 600, f"grew {grown:.0f} MiB"


@pytest.mark.slow
def test_health_stays_200_while_a_thousand_idle_connections_are_open(default_caps_server):
    import socket

    _, url = default_caps_server
    port = int(url.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(1_000):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        status, body = call(url + "/health")
        assert status == 200, body
        status, body = call(url + "/score", {"prompts": ["Q? "], "completions": ["It is 4."]})
        assert status == 200 and body["rewards"][0] is not None
    finally:
        for sock in idle:
            sock.close()


def test_a_lone_surrogate_is_refused_naming_where(server):
    raw = b'{"prompts": ["Q? "], "completions": ["ok \\ud800 then"]}'
    status, body = call(server + "/score", raw=raw)
    assert status == 400, body
    assert "completions[0]" in body["error"] and "surrogate" in body["error"]
    status, body = call(server + "/get_reward", raw=b'{"query": ["\\udfff"]}')
    assert status == 400 and "query[0]" in body["error"]


def test_the_prefix_check_never_calls_an_example_over_that_fits(model_dirs):
    """``surely_over_max_length`` only says "over" when the whole example is over: checked against the token
    count of the full formatted example (a plain tokenizer call) for texts around the limit."""
    from core.scoring.engine import RewardScorer

    scorer = RewardScorer(str(model_dirs[0]), max_length=MAX_LENGTH)
    oracle = PlainForward(model_dirs[0])
    words = ["four", "Blue", "is", "a", "color.", "2 + 2", "<think>", "add them", "</think>", "x" * 300, "\n\n"]
    for n in range(1, 400, 7):
        response = " ".join(words[(i * 3) % len(words)] for i in range(n))
        surely = scorer.surely_over_max_length(["Q? ", response])
        if surely:
            assert len(oracle.ids("Q? ", response)) > MAX_LENGTH, n
    assert scorer.surely_over_max_length(["Q? ", "four " * 40_000])
