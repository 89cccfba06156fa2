"""Scoring files and evaluating a reward model on preference pairs (the ``score`` and ``eval`` commands)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from core.config_fields import ConfigError, config_field
from core.scoring.confounds import Confounds, ScoredPair, confound_baselines
from core.data.formats import RowError, _check_messages, _check_text, parse_row
from core.data.readers import UnreadableFile, read_rows
from core.scoring.engine import Progress, RewardScorer, _WorkMeter
from core.scoring.steps import score_steps
from core.steps import StepError, StepRule, join_steps, prefix_ends, split_steps
from core.scoring.model_names import existing_folder, model_folder_for, registry_store, trained_max_length


class InputRejected(ValueError):
    """Bad input rows; one line per problem, nothing written."""


@dataclass
class ScoreConfig:
    """Score prompt/response rows with a reward model."""

    model: str = config_field(help="reward model: a registered name (name@vN for an older version) or a local folder "
                              "(full model or LoRA adapter); never looked up on the hub")
    input: Path = config_field(help="rows with 'prompt' (text or chat messages) and 'response' (.jsonl, .json, .csv, .parquet)")
    output: Path = config_field(help="output .jsonl: the input rows plus reward, thinking_reward, answer_reward")
    trajectory: bool = config_field(False, help="also write 'trajectory': [token, reward of the prefix] per response token")
    steps: bool = config_field(
        False, help="score each step of a reasoning trace with a process reward model: rows hold 'prompt' and "
        "'completion' (or 'response'; split by --step-separator) or 'steps' (a list); writes step_rewards, step_scores "
        "(sigmoid of the reward on the prefix ending at each step), first_low_step and the usual rewards")
    step_separator: str = config_field(
        "", help="with --steps: how a completion splits into steps: empty = blank-line paragraphs of the thinking, "
        "then the answer; 'text:SEP' or 'regex:PATTERN'")
    step_threshold: float = config_field(0.5, help="with --steps: first_low_step is the first step scored under this")
    batch_tokens: int = config_field(1024, help="most tokens in one batched forward pass (speed only)")
    db: Optional[str] = config_field(None, help="store whose registered models --model may name (default: $REWARDLAB_DB, "
                                                "or data/rewardlab.db when it exists)")

    def __post_init__(self) -> None:
        self.input, self.output = Path(self.input), Path(self.output)
        if self.batch_tokens < 16:
            raise ConfigError("batch_tokens must be at least 16")
        if not 0 < self.step_threshold < 1:
            raise ConfigError(f"step_threshold is a probability between 0 and 1, got {self.step_threshold}")
        if self.step_separator:
            try:
                StepRule.parse(self.step_separator)
            except StepError as error:
                raise ConfigError(str(error)) from None


@dataclass
class EvalConfig:
    """Accuracy and margin of a reward model on preference pairs."""

    model: str = config_field(help="reward model: a registered name (name@vN for an older version) or a local folder "
                              "(full model or LoRA adapter); never looked up on the hub")
    input: Path = config_field(help="preference pairs in any format `import` takes")
    batch_tokens: int = config_field(1024, help="most tokens in one batched forward pass (speed only)")
    db: Optional[str] = config_field(None, help="store whose registered models --model may name (default: $REWARDLAB_DB, "
                                                "or data/rewardlab.db when it exists)")

    def __post_init__(self) -> None:
        self.input = Path(self.input)


def model_folder(config: ScoreConfig | EvalConfig) -> str:
    """The folder ``config.model`` names (``core.scoring.model_names``): decided before any input is read
    or model loaded, without network. Raises ``UnknownModel``."""
    return model_to_load(config)[0]


def model_to_load(config: ScoreConfig | EvalConfig) -> tuple[str, int | None]:
    """``model_folder`` and, for a registered model, the ``max_length`` it was trained with, so rows
    longer than training allowed are flagged as in Inspect and the reward server."""
    store = registry_store(config.db)
    try:
        return model_folder_for(store, config.model, local_folder=existing_folder), trained_max_length(store, config.model)
    finally:
        if store is not None:
            store.dispose()


def _trace_of(row: dict[str, Any], rule: StepRule) -> tuple[str, list]:
    """A score row's trace (completion text and step spans): 'steps' listed, or 'completion'/'response' split."""
    if "steps" in row:
        return join_steps(row["steps"])
    field = "completion" if "completion" in row else "response"
    text = _check_text(row.get(field), field)
    return text, split_steps(text, rule)


def _read_checked_rows(path: Path, check: Callable[[dict[str, Any]], tuple]) -> list[tuple]:
    """``check(row)`` of every row of ``path`` (it raises ``RowError`` or ``StepError`` for a bad one). Raises
    ``InputRejected`` naming each bad row, or for a file without rows; nothing is scored then."""
    rows, problems = [], []
    try:
        for raw in read_rows(path):
            if raw.error:
                problems.append(f"{raw.location}: {raw.error}")
                continue
            try:
                rows.append(check(raw.value))
            except (RowError, StepError) as error:
                problems.append(f"{raw.location}: {error}")
    except UnreadableFile as error:
        problems.append(str(error))
    if problems:
        raise InputRejected("\n".join(problems[:50]) + (f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""))
    if not rows:
        raise InputRejected(f"{path}: no rows to score")
    return rows


def _row_prompt(row: dict[str, Any]) -> Any:
    prompt = row["prompt"]
    return _check_messages(prompt, "prompt") if isinstance(prompt, list) else _check_text(prompt, "prompt")


def read_step_rows(path: Path, rule: StepRule) -> list[tuple[dict[str, Any], Any, str, list]]:
    """Rows of ``score --steps``: (row, prompt, completion, step spans). Raises ``InputRejected`` naming each bad row."""
    def check(row: Any) -> tuple:
        if not isinstance(row, dict):
            raise RowError(f"a row must be an object with 'prompt' and 'completion' or 'steps', got {type(row).__name__}")
        if "prompt" not in row:
            raise RowError("field 'prompt' is missing")
        if not any(field in row for field in ("completion", "response", "steps")):
            raise RowError("a --steps row needs 'completion' (split into steps) or 'steps' (a list)")
        prompt = _row_prompt(row)
        completion, spans = _trace_of(row, rule)
        return row, prompt, completion, spans

    return _read_checked_rows(path, check)


def read_score_rows(path: Path) -> list[tuple[dict[str, Any], Any, str]]:
    def check(row: Any) -> tuple:
        if not isinstance(row, dict):
            raise RowError(f"a row must be an object with 'prompt' and 'response', got {type(row).__name__}")
        for field in ("prompt", "response"):
            if field not in row:
                raise RowError(f"field '{field}' is missing")
        prompt = _row_prompt(row)
        response = row["response"]
        if not isinstance(response, str):
            raise RowError(f"field 'response' must be a string, got {type(response).__name__}")
        return row, prompt, response

    return _read_checked_rows(path, check)


def _within_limit(model: RewardScorer, examples: list[tuple[Any, str]]) -> list[bool]:
    """Whether each (prompt, response) fits the model's ``max_length``: the rule training applies
    (RewardTrainer drops longer pairs). Longer inputs are never scored: past an encoder's position
    limit the forward fails, and past a decoder's trained length the reward means nothing."""
    if not model.max_length:
        return [True] * len(examples)
    return [len(model.format(prompt, response).ids) <= model.max_length for prompt, response in examples]


def score_file(config: ScoreConfig, model: RewardScorer | None = None, *, progress: Progress | None = None) -> int:
    """Write ``config.output`` (whole or not at all) and return the number of rows scored. A row
    longer than the model's ``max_length`` gets ``over_max_length: true`` and null rewards."""
    folder, max_length = (None, None) if model is not None else model_to_load(config)
    if config.steps:
        return _score_step_file(config, folder, max_length, model, progress)
    rows = read_score_rows(config.input)
    model = model or RewardScorer(folder, batch_tokens=config.batch_tokens, max_length=max_length)
    examples = [(prompt, response) for _, prompt, response in rows]
    fits = _within_limit(model, examples)
    scored_results = iter(model.score_responses([e for e, ok in zip(examples, fits, strict=True) if ok],
                                                trajectory=config.trajectory, progress=progress))
    config.output.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=config.output.parent, prefix=".score-", suffix=".jsonl")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        for (row, _, _), ok in zip(rows, fits, strict=True):
            result = next(scored_results) if ok else None
            scored = {**row, "reward": result and result.reward, "thinking_reward": result and result.thinking_reward,
                      "answer_reward": result and result.answer_reward, "over_max_length": not ok}
            if config.trajectory:
                scored["trajectory"] = [[token, reward] for token, reward in (result.trajectory or [])] if result else None
            out.write(json.dumps(scored, ensure_ascii=False) + "\n")
    os.replace(staging, config.output)
    return len(rows)


def _score_step_file(config: ScoreConfig, folder: str | None, max_length: int | None, model: RewardScorer | None,
                     progress: Progress | None) -> int:
    rows = read_step_rows(config.input, StepRule.parse(config.step_separator))
    model = model or RewardScorer(folder, batch_tokens=config.batch_tokens, max_length=max_length)
    meter = _WorkMeter(2 * len(rows), progress)
    try:
        steps = score_steps(model, [(prompt, completion, prefix_ends(len(completion), spans))
                                    for _, prompt, completion, spans in rows], threshold=config.step_threshold,
                            meter=meter)
    except ValueError as error:
        raise InputRejected(str(error)) from None
    whole_fits = _within_limit(model, [(prompt, completion) for _, prompt, completion, _ in rows])
    fits = [fit and not result.over_max_length for fit, result in zip(whole_fits, steps, strict=True)]
    segments = iter(model.score_responses([(prompt, completion) for (_, prompt, completion, _), ok
                                           in zip(rows, fits, strict=True) if ok]))
    meter.add(len(rows))
    config.output.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=config.output.parent, prefix=".score-", suffix=".jsonl")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        for (row, _, completion, spans), result, ok in zip(rows, steps, fits, strict=True):
            whole = next(segments) if ok else None
            scored = {**row, "steps_scored": [completion[s.start:s.end] for s in spans],
                      "step_rewards": result.rewards if ok else None, "step_scores": result.scores if ok else None,
                      "first_low_step": result.first_low_step if ok else None, "reward": whole and whole.reward,
                      "thinking_reward": whole and whole.thinking_reward, "answer_reward": whole and whole.answer_reward,
                      "over_max_length": not ok}
            out.write(json.dumps(scored, ensure_ascii=False) + "\n")
    os.replace(staging, config.output)
    return len(rows)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float | None
    mean_margin: float | None
    n: int
    n_over_max_length: int = 0
    confounds: Confounds | None = None  # baselines on the same pairs (core.scoring.confounds)

    def as_dict(self) -> dict[str, Any]:
        baselines = self.confounds
        return {"accuracy": self.accuracy, "mean_margin": self.mean_margin, "n": self.n,
                "n_over_max_length": self.n_over_max_length,
                "baselines": None if baselines is None else {
                    "prefer_longer": baselines.prefer_longer, "prefer_shorter": baselines.prefer_shorter,
                    "prefer_position_a": baselines.prefer_position_a,
                    "position_note": "a pairs file names chosen and rejected, not positions: no position baseline"},
                "reward_length_correlation": None if baselines is None else baselines.reward_length_correlation,
                "verdict": None if baselines is None else baselines.verdict}


def evaluate_pairs(config: EvalConfig, model: RewardScorer | None = None) -> EvalResult:
    """Accuracy (chosen scored strictly above rejected; a tie counts as wrong) and mean margin over
    the pairs that fit the model's ``max_length``; ``n_over_max_length`` counts the others, which
    are not scored (as training drops them)."""
    folder, max_length = (None, None) if model is not None else model_to_load(config)
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
    model = model or RewardScorer(folder, batch_tokens=config.batch_tokens, max_length=max_length)
    chosen_fit = _within_limit(model, [(p, c) for p, c, _ in pairs])
    rejected_fit = _within_limit(model, [(p, r) for p, _, r in pairs])
    kept = [pair for pair, a, b in zip(pairs, chosen_fit, rejected_fit, strict=True) if a and b]
    over = len(pairs) - len(kept)
    if not kept:
        return EvalResult(None, None, 0, over)
    rewards = model.score_pairs([(p, c) for p, c, _ in kept] + [(p, r) for p, _, r in kept])
    chosen, rejected = rewards[: len(kept)], rewards[len(kept) :]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    confounds = confound_baselines([ScoredPair(len(c), len(r), rc, rr) for (_, c, r), rc, rr
                                    in zip(kept, chosen, rejected, strict=True)])
    return EvalResult(sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins), len(margins), over,
                      confounds)
