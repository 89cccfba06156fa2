"""Where a trace's step scores are read: one token position per step, in the tokenization of the whole trace.

A process reward model here is a plain ``*ForSequenceClassification`` (num_labels 1) whose reward on the prefix
ending at step k, separator included, is step k's score. A decoder's score head runs at every position and
attention is causal, so the head's output at the last token of that prefix, in one forward pass of the whole
trace, is exactly the reward of the prefix alone (the tokens ``ids[:position + 1]``): all step scores cost one
forward, and a plain forward of each prefix is the test's oracle.

The trace is formatted as everywhere in RewardLab (``core.scoring.engine.format_example``: prompt + completion for
text prompts, the chat template for chat prompts); the step's prefix ends at the last token that ends at or
before the prefix's last character (a token that straddles the boundary belongs to the next step).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from core.scoring.engine import Prompt, format_example


@dataclass(frozen=True)
class FormattedTrace:
    ids: list[int]
    step_positions: list[int]  # token index of each step's score, in step order (non-decreasing)


def completion_offset(text: str, prompt: Prompt, completion: str) -> int:
    """Where the completion starts in the formatted text."""
    if isinstance(prompt, list):
        return text.rfind(completion)
    return len(prompt)


def format_trace(tokenizer: Any, prompt: Prompt, completion: str, prefix_ends: list[int]) -> FormattedTrace:
    """The trace's token ids, cut after its last step's score position, and the position of each step's score.
    ``prefix_ends`` are character offsets in ``completion`` (``core.steps.prefix_ends``)."""
    example = format_example(tokenizer, prompt, completion)
    start = completion_offset(example.text, prompt, completion)
    # real tokens only (special tokens added by the template have empty spans), with their ends in order
    real = [k for k, (a, b) in enumerate(example.offsets) if b > a]
    ends = [example.offsets[k][1] for k in real]
    positions = []
    first_response = bisect.bisect_right(ends, start)  # the first token ending inside the completion
    for end in prefix_ends:
        index = bisect.bisect_right(ends, start + end) - 1
        positions.append(real[max(index, first_response)])
    last = max(positions)
    return FormattedTrace(list(example.ids[: last + 1]), positions)


@dataclass(frozen=True)
class StepScores:
    """A trace's step scores: ``rewards[k]`` is the model's reward on the prefix ending at step k, ``scores[k]`` its
    sigmoid (a process reward model's P(step k is correct)); None when the trace is over the model's max_length."""

    rewards: list[float] | None
    scores: list[float] | None
    first_low_step: int | None  # index of the first step scored under the threshold; None when none is
    n_tokens: int
    over_max_length: bool
    step_positions: list[int]  # token index of each step's score


def first_below(scores: list[float], threshold: float) -> int | None:
    return next((k for k, score in enumerate(scores) if score < threshold), None)


def score_steps(scorer: Any, traces: list[tuple[Prompt, str, list[int]]], *, threshold: float = 0.5,
                meter: Any = None) -> list[StepScores]:
    """Step scores of each ``(prompt, completion, prefix ends)`` trace with a loaded ``RewardScorer``: one forward
    pass per trace (the score head at every position, read at each step's position), whatever its length; a
    trace longer than the model's ``max_length`` is not scored. Raises ``ValueError`` for an encoder model."""
    import math

    if not scorer.is_decoder:
        raise ValueError(f"{scorer.name} is an encoder (bidirectional): a step's score is the reward of its prefix, "
                         "which only a causal model reads off the whole trace; use a decoder reward model")
    results = []
    for prompt, completion, ends in traces:
        trace = format_trace(scorer.tokenizer, prompt, completion, ends)
        if scorer.max_length and len(trace.ids) > scorer.max_length:
            results.append(StepScores(None, None, None, len(trace.ids), True, trace.step_positions))
            if meter is not None:
                meter.add(1)
            continue
        rewards = scorer.scores_at(trace.ids, trace.step_positions)
        scores = [1 / (1 + math.exp(-r)) for r in rewards]
        results.append(StepScores(rewards, scores, first_below(scores, threshold), len(trace.ids), False,
                                  trace.step_positions))
        if meter is not None:
            meter.add(1)
    return results
