"""Reasoning traces as steps: how a completion splits into steps, and what a mark on a step means.

Process supervision (PRM800K, Math-Shepherd, TRL's stepwise format) labels each step of a trace. A steps
dataset fixes its split rule when it is made (``StepRule``):

* ``paragraphs`` (the default): the blank-line paragraphs of the thinking (inside ``<think>…</think>``, split
  at the last ``</think>`` as everywhere in RewardLab), then the answer as the last step; a completion with no
  ``</think>`` is its paragraphs, the last of them the answer;
* ``text:SEP``: split at each occurrence of the string SEP;
* ``regex:PATTERN``: split at each match of the pattern.

A step is a span of the stored completion (``StepSpan``): the separator after step k runs to step k+1's start,
so the prefix a process reward model scores for step k is ``completion[:end_of_prefix(k)]``, and the steps
always join back into exactly the imported text. Rows that list their steps (``steps: [...]`` or TRL's
``completions: [...]``) are joined with a blank line, so they split back the same way.

A mark is ``"+"`` (correct), ``"0"`` (neutral), ``"-"`` (wrong) or ``None`` (not reviewed: after the first
wrong step, in first-error labeling).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, NamedTuple, Sequence

from core.limits import MAX_STEP_CHARS, MAX_STEP_RULE_CHARS, MAX_STEPS_PER_TRACE
from core.segments import THINK_CLOSE, THINK_OPEN

MARKS = ("+", "0", "-")
MARK_NAMES = {"+": "correct", "0": "neutral", "-": "wrong", None: "unreviewed"}
FINAL_VERDICTS = ("correct", "wrong")
STEP_JOIN = "\n\n"  # listed steps are joined with a blank line: the default rule splits them back the same way
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


class StepError(ValueError):
    """A trace, a rule or marks that cannot be used; the message names the step and the fix."""


class StepSpan(NamedTuple):
    start: int  # first character of the step in the completion
    end: int  # one past its last character
    in_answer: bool  # the step is the final answer (after the last </think>)


class StepRule(NamedTuple):
    kind: str  # "paragraphs" | "text" | "regex"
    value: str = ""

    @classmethod
    def parse(cls, stored: str | None) -> "StepRule":
        """The rule a dataset stores (``Dataset.step_separator``): None = paragraphs, ``text:SEP`` or ``regex:P``."""
        if not stored or stored == "paragraphs":
            return cls("paragraphs")
        kind, _, value = stored.partition(":")
        if kind not in ("text", "regex") or not value:
            raise StepError(f"step rule {stored[:60]!r} is not 'paragraphs', 'text:SEPARATOR' or 'regex:PATTERN'")
        if len(value) > MAX_STEP_RULE_CHARS:
            raise StepError(f"the step separator is {len(value)} characters long; the limit is {MAX_STEP_RULE_CHARS}")
        if kind == "regex":
            try:
                pattern = re.compile(value)
            except re.error as error:
                raise StepError(f"step separator regex {value!r} does not compile: {error}") from None
            if pattern.match(""):
                raise StepError(f"step separator regex {value!r} matches the empty string; it must match a separator")
        return cls(kind, value)

    @property
    def stored(self) -> str | None:
        return None if self.kind == "paragraphs" else f"{self.kind}:{self.value}"

    def describe(self) -> str:
        return {"paragraphs": "blank-line paragraphs of the thinking, then the answer",
                "text": f"at each {self.value!r}", "regex": f"at each match of /{self.value}/"}[self.kind]


def _pieces(text: str, start: int, end: int, breaks: re.Pattern[str]) -> list[tuple[int, int]]:
    """The non-blank pieces of ``text[start:end]`` between matches of ``breaks``, trimmed of whitespace."""
    spans, cursor = [], start
    for match in breaks.finditer(text, start, end):
        if match.end() == match.start():
            continue
        spans.append((cursor, match.start()))
        cursor = match.end()
    spans.append((cursor, end))
    trimmed = []
    for a, b in spans:
        piece = text[a:b]
        stripped = piece.strip()
        if stripped:
            a += len(piece) - len(piece.lstrip())
            trimmed.append((a, a + len(stripped)))
    return trimmed


def split_steps(completion: str, rule: StepRule = StepRule("paragraphs")) -> list[StepSpan]:
    """The steps of ``completion`` under ``rule``, as spans. Raises ``StepError`` for a trace with no step
    or more steps than the cap, or a step longer than the cap."""
    close = completion.rfind(THINK_CLOSE)
    answer_start = close + len(THINK_CLOSE) if close != -1 else None
    if rule.kind == "paragraphs":
        if answer_start is None:
            pieces = _pieces(completion, 0, len(completion), _PARAGRAPH_BREAK)
            steps = [StepSpan(a, b, i == len(pieces) - 1) for i, (a, b) in enumerate(pieces)]
        else:
            open_at = completion.find(THINK_OPEN, 0, close)
            begin = open_at + len(THINK_OPEN) if open_at != -1 else 0
            thinking = _pieces(completion, begin, close, _PARAGRAPH_BREAK)
            answer = completion[answer_start:].strip()
            steps = [StepSpan(a, b, False) for a, b in thinking]
            if answer:
                a = completion.index(answer, answer_start)
                steps.append(StepSpan(a, a + len(answer), True))
    else:
        breaks = re.compile(re.escape(rule.value) if rule.kind == "text" else rule.value)
        pieces = _pieces(completion, 0, len(completion), breaks)
        last = len(pieces) - 1
        steps = [StepSpan(a, b, (a >= answer_start) if answer_start is not None else i == last)
                 for i, (a, b) in enumerate(pieces)]
    check_spans(completion, steps)
    return steps


def check_spans(completion: str, steps: Sequence[StepSpan]) -> None:
    if not steps:
        raise StepError("the completion has no step (it is blank under the dataset's step rule)")
    if len(steps) > MAX_STEPS_PER_TRACE:
        raise StepError(f"the trace has {len(steps)} steps; the limit is {MAX_STEPS_PER_TRACE} "
                        "(split it into fewer, longer steps)")
    for index, step in enumerate(steps):
        if step.end - step.start > MAX_STEP_CHARS:
            raise StepError(f"step {index + 1} is {step.end - step.start:,} characters long; the limit is "
                            f"{MAX_STEP_CHARS:,}")


def join_steps(steps: Sequence[Any], field: str = "steps") -> tuple[str, list[StepSpan]]:
    """A completion made of listed steps (blank-line joined) and their spans; the last step is the answer.
    Raises ``StepError`` naming the step that is not a non-empty string, or the count over the cap."""
    if not isinstance(steps, list) or not steps:
        raise StepError(f"field '{field}' must be a non-empty list of step texts")
    if len(steps) > MAX_STEPS_PER_TRACE:
        raise StepError(f"field '{field}' has {len(steps)} steps; the limit is {MAX_STEPS_PER_TRACE}")
    texts, spans, cursor = [], [], 0
    for index, step in enumerate(steps):
        where = f"{field}[{index}]"
        if not isinstance(step, str):
            raise StepError(f"field '{where}' must be a string, got {type(step).__name__}")
        stripped = step.strip()
        if not stripped:
            raise StepError(f"field '{where}' is empty; every step needs text")
        if len(stripped) > MAX_STEP_CHARS:
            raise StepError(f"field '{where}' is {len(stripped):,} characters long; the limit is {MAX_STEP_CHARS:,}")
        if "\x00" in stripped:
            raise StepError(f"field '{where}' contains a NUL character (\\u0000); remove it")
        texts.append(stripped)
        spans.append(StepSpan(cursor, cursor + len(stripped), index == len(steps) - 1))
        cursor += len(stripped) + len(STEP_JOIN)
    return STEP_JOIN.join(texts), spans


def prefix_ends(completion_length: int, steps: Sequence[StepSpan]) -> list[int]:
    """Where the prefix scored for each step ends, in characters of the completion: the next step's start
    (the step and its separator), the completion's end for the last step."""
    return [steps[k + 1].start for k in range(len(steps) - 1)] + [completion_length]


def check_marks(marks: Any, n_steps: int, field: str = "labels") -> list[str | None]:
    """A list of one mark per step ("+", "0", "-" or None). Raises ``StepError`` naming the bad step."""
    if not isinstance(marks, list):
        raise StepError(f"{field} must be a list with one mark per step (\"+\", \"0\", \"-\" or null), "
                        f"got {type(marks).__name__}")
    if len(marks) != n_steps:
        raise StepError(f"{field} has {len(marks)} marks but the trace has {n_steps} steps; give one per step")
    for index, mark in enumerate(marks):
        if mark is not None and mark not in MARKS:
            raise StepError(f"{field}[{index}] (step {index + 1}) is {str(mark)[:20]!r}; a mark is \"+\" (correct), "
                            "\"0\" (neutral), \"-\" (wrong) or null (not reviewed)")
    if all(mark is None for mark in marks):
        raise StepError(f"{field} marks no step; mark at least the first (or skip the trace)")
    return list(marks)


def marks_from_booleans(labels: Any, n_steps: int) -> list[str]:
    """TRL's stepwise ``labels`` (one bool per step) as marks. Raises ``StepError`` naming the bad one."""
    if not isinstance(labels, list):
        raise StepError(f"field 'labels' must be a list of booleans, got {type(labels).__name__}")
    if len(labels) != n_steps:
        raise StepError(f"field 'labels' has {len(labels)} values but 'completions' has {n_steps} steps; "
                        "give one per step")
    for index, value in enumerate(labels):
        if not isinstance(value, bool):
            raise StepError(f"field 'labels[{index}]' must be true or false, got {str(value)[:20]!r}")
    return ["+" if value else "-" for value in labels]


def first_error(marks: Sequence[str | None]) -> int | None:
    """Index of the first step marked wrong; None when no step is."""
    return next((index for index, mark in enumerate(marks) if mark == "-"), None)


def fold_marks(votes: Sequence[Sequence[str | None]]) -> list[str | None]:
    """Each step's majority mark over several annotators' marks (unreviewed marks do not vote); a tie, or a step
    no one reviewed, folds to None."""
    folded: list[str | None] = []
    for step_votes in zip(*votes, strict=True):
        counts = Counter(mark for mark in step_votes if mark is not None)
        top = counts.most_common(2)
        folded.append(top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None)
    return folded
