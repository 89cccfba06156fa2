"""Reward server load test: completions/s and latency with 1, 8 and 32 concurrent clients, against
in-process scoring of the same data, in one run.

    python bench/serve_load.py [--requests 48] [--clients 1 8 32]

Each request is what a GRPO step sends: 8 completions of one prompt, of long-tailed lengths (log-normal,
median ~100 words, tail to 1,500). The baseline scores the same requests in this process before the
server starts and again after it stops, one request at a time (what ``make_reward_fn`` does per
call; ratios are against the faster of the two runs), with the same model
folder and batch size in tokens; "all at once" (every completion in one call) is the ceiling batching
could reach. The server is ``python app.py serve-rm`` in its own process (parity check included),
called over HTTP by client threads; its rewards are checked against the baseline's.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, free_port, parse_with_smoke, percentile, texts_with_lengths  # noqa: E402

from core.scoring.engine import RewardScorer  # noqa: E402
from core.serving.http_client import get_json, post_json, wait_until_serving  # noqa: E402
from core.training.demo_model import build_demo_reward_model  # noqa: E402

COMPLETIONS_PER_REQUEST = 8
PROMPTS = ["Explain how to add two numbers. ", "Check this sum step by step: 7 + 5. ", "What is twelve? "]


def make_requests(count: int, seed: int = 2) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    texts = texts_with_lengths(count * COMPLETIONS_PER_REQUEST, seed=seed)
    return [[(PROMPTS[k % len(PROMPTS)], texts[k * COMPLETIONS_PER_REQUEST + j]) for j in range(COMPLETIONS_PER_REQUEST)]
            for k in rng.sample(range(count), count)]


def in_process(folder: Path, requests: list, batch_tokens: int) -> dict:
    scorer = RewardScorer(folder, device="cpu", batch_tokens=batch_tokens)
    scorer.score_pairs(requests[0])  # warm-up
    latencies, rewards = [], []
    start = time.perf_counter()
    for pairs in requests:
        began = time.perf_counter()
        rewards.append(scorer.score_pairs(pairs))
        latencies.append(time.perf_counter() - began)
    per_request = time.perf_counter() - start
    everything = [pair for pairs in requests for pair in pairs]
    start = time.perf_counter()
    scorer.score_pairs(everything)
    at_once = time.perf_counter() - start
    return {"per_request_s": per_request, "at_once_s": at_once, "latencies": latencies, "rewards": rewards}


def start_server(folder: Path, batch_tokens: int, wait_ms: float, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "w")  # noqa: SIM115 (the child writes to it)
    process = subprocess.Popen(
        [sys.executable, "app.py", "serve-rm", "--model", str(folder), "--port", str(port), "--batch-tokens",
         str(batch_tokens), "--batch-wait-ms", str(wait_ms)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    if wait_until_serving(url, still_starting=lambda: process.poll() is None):
        return process, url
    process.kill()
    raise RuntimeError(f"serve-rm did not start (exit code {process.poll()}):\n{log_path.read_text()}")


def load(url: str, requests: list, clients: int) -> dict:
    """``clients`` threads sending the requests (each takes the next one left) as fast as answers come."""
    latencies: list[float] = [0.0] * len(requests)
    rewards: list = [None] * len(requests)
    cursor = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                k = next(cursor, None)
            if k is None:
                return
            body = {"prompts": [p for p, _ in requests[k]], "completions": [c for _, c in requests[k]]}
            began = time.perf_counter()
            rewards[k] = post_json(url + "/score", body, timeout=600)["rewards"]
            latencies[k] = time.perf_counter() - began

    before = get_json(url + "/info")["batching"]
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = get_json(url + "/info")["batching"]
    batches = after["batches"] - before["batches"]
    return {"seconds": seconds, "latencies": latencies, "rewards": rewards,
            "requests_per_batch": (after["requests"] - before["requests"]) / max(1, batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="requests of 8 completions at each client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parse_with_smoke(parser, requests=6, clients=[1, 4])
    requests = make_requests(args.requests)
    completions = args.requests * COMPLETIONS_PER_REQUEST
    with tempfile.TemporaryDirectory() as folder:
        size = {"hidden_size": 32, "num_layers": 1, "num_heads": 2} if args.smoke else \
            {"hidden_size": 256, "num_layers": 4, "num_heads": 4}
        model = build_demo_reward_model(Path(folder) / "rm", texts_with_lengths(300, seed=1), vocab_size=4096, **size)
        before = in_process(model, requests, args.batch_tokens)
        gc.collect()
        process, url = start_server(model, args.batch_tokens, args.batch_wait_ms, Path(folder) / "serve-rm.log")
        try:
            runs = {clients: load(url, requests, clients) for clients in args.clients}
        finally:
            process.terminate()
            process.wait(timeout=30)
        # Measured again after the server has gone: on a shared machine the load drifts, and the ratios
        # are taken against the faster of the two runs (the one less favourable to the server).
        after = in_process(model, requests, args.batch_tokens)
    baseline = min(before, after, key=lambda run: run["per_request_s"])
    characters = sum(len(p) + len(c) for pairs in requests for p, c in pairs)
    print(f"{args.requests} requests x {COMPLETIONS_PER_REQUEST} completions ({completions} completions, "
          f"{characters:,} characters); model hidden {size['hidden_size']} x {size['num_layers']} layers; "
          f"batch_tokens {args.batch_tokens}, batch wait {args.batch_wait_ms} ms; in-process one request at a time "
          f"{completions / before['per_request_s']:.1f} completions/s before the server ran, "
          f"{completions / after['per_request_s']:.1f} after")
    per_request_rate = completions / baseline["per_request_s"]
    worst = max(abs(a - b) for k, run in runs.items() for got, want in zip(run["rewards"], baseline["rewards"])
                for a, b in zip(got, want))
    print("| path | clients | completions/s | vs in-process (per request) | p50 ms | p99 ms | requests per batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    lat = baseline["latencies"]
    print(f"| in-process, one request at a time (baseline) | 1 | {per_request_rate:.1f} | 1.00x | "
          f"{percentile(lat, 50) * 1000:.0f} | {percentile(lat, 99) * 1000:.0f} | 1 |")
    print(f"| in-process, all {completions} at once (ceiling) | - | {completions / baseline['at_once_s']:.1f} | "
          f"{baseline['per_request_s'] / baseline['at_once_s']:.2f}x | - | - | - |")
    for clients, run in runs.items():
        rate = completions / run["seconds"]
        print(f"| serve-rm over HTTP | {clients} | {rate:.1f} | {rate / per_request_rate:.2f}x | "
              f"{percentile(run['latencies'], 50) * 1000:.0f} | {percentile(run['latencies'], 99) * 1000:.0f} | "
              f"{run['requests_per_batch']:.1f} |")
    print(f"largest |reward difference| server vs in-process: {worst:.1e}")


if __name__ == "__main__":
    main()
