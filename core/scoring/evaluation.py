"""Scoring files and evaluating a reward model on preference pairs (the ``score`` and ``eval`` commands)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config_fields import ConfigError, config_field
from core.data.readers import UnreadableFile, read_rows
from core.data.formats import RowError, _check_messages, _check_text, parse_row
from core.scoring.engine import RewardScorer


class InputRejected(ValueError):
    """Bad input rows; one line per problem, nothing written."""


@dataclass
class ScoreConfig:
    """Score prompt/response rows with a reward model."""

    model: str = config_field(help="reward model: a local folder (full model or LoRA adapter) or a hub id")
    input: Path = config_field(help="rows with 'prompt' (text or chat messages) and 'response' (.jsonl, .json, .csv, .parquet)")
    output: Path = config_field(help="output .jsonl: the input rows plus reward, thinking_reward, answer_reward")
    trajectory: bool = config_field(False, help="also write 'trajectory': [token, reward of the prefix] per response token")
    batch_tokens: int = config_field(1024, help="most tokens in one batched forward pass (speed only)")

    def __post_init__(self) -> None:
        self.input, self.output = Path(self.input), Path(self.output)
        if self.batch_tokens < 16:
            raise ConfigError("batch_tokens must be at least 16")


@dataclass
class EvalConfig:
    """Accuracy and margin of a reward model on preference pairs."""

    model: str = config_field(help="reward model: a local folder (full model or LoRA adapter) or a hub id")
    input: Path = config_field(help="preference pairs in any format `import` takes")
    batch_tokens: int = config_field(1024, help="most tokens in one batched forward pass (speed only)")

    def __post_init__(self) -> None:
        self.input = Path(self.input)


def _read_score_rows(path: Path) -> list[tuple[dict[str, Any], Any, str]]:
    rows, problems = [], []
    try:
        for raw in read_rows(path):
            if raw.error:
                problems.append(f"{raw.location}: {raw.error}")
                continue
            try:
                row = raw.value
                if not isinstance(row, dict):
                    raise RowError(f"a row must be an object with 'prompt' and 'response', got {type(row).__name__}")
                for field in ("prompt", "response"):
                    if field not in row:
                        raise RowError(f"field '{field}' is missing")
                prompt = row["prompt"]
                prompt = _check_messages(prompt, "prompt") if isinstance(prompt, list) else _check_text(prompt, "prompt")
                response = row["response"]
                if not isinstance(response, str):
                    raise RowError(f"field 'response' must be a string, got {type(response).__name__}")
                rows.append((row, prompt, response))
            except RowError as error:
                problems.append(f"{raw.location}: {error}")
    except UnreadableFile as error:
        problems.append(str(error))
    if problems:
        raise InputRejected("\n".join(problems[:50]) + (f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""))
    if not rows:
        raise InputRejected(f"{path}: no rows to score")
    return rows


def score_file(config: ScoreConfig, model: RewardScorer | None = None) -> int:
    """Write ``config.output`` (whole or not at all) and return the number of rows scored."""
    rows = _read_score_rows(config.input)
    model = model or RewardScorer(config.model, batch_tokens=config.batch_tokens)
    results = model.score_responses([(prompt, response) for _, prompt, response in rows], trajectory=config.trajectory)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=config.output.parent, prefix=".score-", suffix=".jsonl")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        for (row, _, _), result in zip(rows, results, strict=True):
            scored = {**row, "reward": result.reward, "thinking_reward": result.thinking_reward,
                      "answer_reward": result.answer_reward}
            if config.trajectory:
                scored["trajectory"] = [[token, reward] for token, reward in (result.trajectory or [])]
            out.write(json.dumps(scored, ensure_ascii=False) + "\n")
    os.replace(staging, config.output)
    return len(rows)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    mean_margin: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"accuracy": self.accuracy, "mean_margin": self.mean_margin, "n": self.n}


def evaluate_pairs(config: EvalConfig, model: RewardScorer | None = None) -> EvalResult:
    """Accuracy (chosen scored strictly above rejected; a tie counts as wrong) and mean margin."""
    pairs, problems = [], []
    try:
        for raw in read_rows(config.input):
            if raw.error:
                problems.append(f"{raw.location}: {raw.error}")
                continue
            try:
                parsed = parse_row(raw.value)
            except RowError as error:
                problems.append(f"{raw.location}: {error}")
                continue
            if parsed.kind != "preference":
                problems.append(f"{raw.location}: a candidates row; eval needs chosen/rejected pairs")
                continue
            prompt = parsed.prompt_messages if parsed.prompt_messages is not None else parsed.prompt_text
            pairs.append((prompt, parsed.completions[0].text, parsed.completions[1].text))
    except UnreadableFile as error:
        problems.append(str(error))
    if problems:
        raise InputRejected("\n".join(problems[:50]))
    if not pairs:
        raise InputRejected(f"{config.input}: no preference pairs")
    model = model or RewardScorer(config.model, batch_tokens=config.batch_tokens)
    rewards = model.score_pairs([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs])
    chosen, rejected = rewards[: len(pairs)], rewards[len(pairs) :]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return EvalResult(sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins), len(margins))
