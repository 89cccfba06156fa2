"""Per-token trajectories of long responses: seconds and peak memory, against one plain forward pass
of the same sequence (the baseline), in the same run.

    python bench/trajectory_memory.py [--tokens 1000 4000 16000 32000] [--smoke]

The model is the benchmark Qwen3 of ``scoring_speed.py`` (hidden 512, 10 layers, ~25M parameters
without embeddings, built locally). Each measurement runs in a fresh process, which reports the
growth of its peak RSS over what it held once the model was loaded and the example tokenized:
* ``forward``: one forward pass over the example (the reward), no mask (attention's causal path);
* ``trajectory``: the reward of every response prefix plus EOS (``RewardScorer.trajectory_of``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, line_chart_svg, parse_with_smoke  # noqa: E402

PROMPT = "Solve the puzzle and show your reasoning. "
STEP = "we check each case in turn and keep the ones that fit the rule. "


def measure(model_dir: str, tokens: int, mode: str) -> dict:
    """Runs in the child: build the example, note the RSS, time the work, report the peak growth."""
    import torch

    from core.scoring.engine import RewardScorer

    scorer = RewardScorer(model_dir, device="cpu")
    response = "<think>"
    while len(scorer.format(PROMPT, response).ids) < tokens:
        response += STEP * max(1, (tokens - len(scorer.format(PROMPT, response).ids)) // 16)
    response += "</think> The answer is 7."
    example = scorer.format(PROMPT, response)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "forward":
        with torch.inference_mode():
            hidden = scorer.backbone(input_ids=torch.tensor([example.ids])).last_hidden_state
            scorer.head(hidden[:, -1])
    else:
        steps, _ = scorer.trajectory_of(example)
        assert len(steps) == example.response_tokens[1] - example.response_tokens[0]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"tokens": len(example.ids), "mode": mode, "seconds": seconds, "extra_mib": (peak - before) / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1_000, 4_000, 16_000, 32_000])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "trajectory", help="where the JSON and chart go")
    args = parse_with_smoke(parser, tokens=[300])
    from core.training.demo_model import build_demo_reward_model

    with tempfile.TemporaryDirectory() as folder:
        corpus = [PROMPT + STEP * 20 + "</think> The answer is 7."] * 50
        size = {"hidden_size": 64, "num_layers": 2, "num_heads": 4} if args.smoke else \
            {"hidden_size": 512, "num_layers": 10, "num_heads": 8}
        model = build_demo_reward_model(Path(folder) / "rm", corpus, vocab_size=8192, max_positions=65_536, **size)
        rows = []
        for tokens in args.tokens:
            result = {}
            for mode in ("forward", "trajectory"):
                done = subprocess.run([sys.executable, __file__, "--worker", str(model), str(tokens), mode],
                                      capture_output=True, text=True, check=True)
                result[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(result)
            print(f"{result['forward']['tokens']:,} tokens done", file=sys.stderr, flush=True)
    print("| tokens | forward s | trajectory s | time vs forward | forward extra MiB | trajectory extra MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for result in rows:
        forward, trajectory = result["forward"], result["trajectory"]
        print(f"| {forward['tokens']:,} | {forward['seconds']:.2f} | {trajectory['seconds']:.2f} | "
              f"{trajectory['seconds'] / forward['seconds']:.2f}x | {forward['extra_mib']:.0f} | "
              f"{trajectory['extra_mib']:.0f} |")
    with tempfile.TemporaryDirectory() as scratch:  # a smoke run writes its files there, to be thrown away
        out = Path(scratch) if args.smoke else args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        tokens = [r["forward"]["tokens"] for r in rows]
        line_chart_svg([
            {"title": "seconds", "x_label": "tokens", "y_label": "seconds", "series": {
                "one forward pass": ("#1f77b4", [(t, r["forward"]["seconds"]) for t, r in zip(tokens, rows)]),
                "trajectory (every prefix + EOS)": ("#d62728",
                                                    [(t, r["trajectory"]["seconds"]) for t, r in zip(tokens, rows)]),
                "goal: 3x one forward": ("#999", [(t, 3 * r["forward"]["seconds"]) for t, r in zip(tokens, rows)])}},
            {"title": "extra peak memory (MiB)", "x_label": "tokens", "y_label": "MiB", "series": {
                "one forward pass": ("#1f77b4", [(t, r["forward"]["extra_mib"]) for t, r in zip(tokens, rows)]),
                "trajectory": ("#d62728", [(t, r["trajectory"]["extra_mib"]) for t, r in zip(tokens, rows)]),
                "goal: 3 GB": ("#999", [(t, 3 * 1024) for t in tokens])}},
        ], out / "trajectory.svg")
        print(f"wrote {out}/results.json and trajectory.svg")


if __name__ == "__main__":
    main()
