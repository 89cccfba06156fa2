"""Step marks to stepwise-supervision rows: the one rule export and process-reward training share.

Each step's marks are folded by majority over the annotators who reviewed it (``core.steps.fold_marks``: an
unreviewed step does not vote; a tie folds to no mark). A row is TRL's stepwise supervision format:
``prompt``, ``completions`` (the step texts, in order) and ``labels`` (one bool per step, True = correct).
``neutral`` decides a step folded to neutral: ``correct`` (as PRM800K's training often does), ``wrong``, or
``drop`` (the trace is left out). A trace ends at its last labeled step: the steps after the first one with no
folded mark (after the first wrong step, in first-error labeling) are left out, as in PRM800K; a trace whose
first step has no mark is left out. What is left out is counted by reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.steps import StepSpan, fold_marks, prefix_ends
from storage.engine import Store
from storage.steps import StepTrace, step_traces

NEUTRAL_RULES = ("correct", "wrong", "drop")


@dataclass(frozen=True)
class StepwiseTrace:
    """One trace as training reads it: the whole completion, its step spans, and a label per kept step."""

    item_id: int
    dataset: str
    prompt: str | list[dict[str, Any]]
    completion: str
    steps: list[StepSpan]  # the kept steps (a prefix of the trace's steps)
    labels: list[bool]
    prefix_ends: list[int]  # where each kept step's scored prefix ends, in characters of the completion

    def row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completions": [self.completion[s.start:s.end] for s in self.steps],
                "labels": list(self.labels)}


@dataclass
class StepwiseRows:
    traces: list[StepwiseTrace]
    left_out: Counter = field(default_factory=Counter)
    votes: dict[int, dict[str, Any]] = field(default_factory=dict)  # item id -> annotator -> marks

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for trace in self.traces:
            digest.update(json.dumps(trace.row(), sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()


def fold_trace(trace: StepTrace, neutral: str) -> tuple[list[bool] | None, str | None]:
    """The kept labels of one trace, or None and the reason it is left out."""
    marks = [vote["marks"] for vote in trace.votes.values() if len(vote["marks"]) == len(trace.steps)]
    if not marks:
        return None, "without step labels"
    folded = fold_marks(marks)
    labels: list[bool] = []
    for mark in folded:
        if mark is None:
            break
        if mark == "0":
            if neutral == "drop":
                return None, "with a neutral step (--neutral drop)"
            labels.append(neutral == "correct")
        else:
            labels.append(mark == "+")
    if not labels:
        return None, "first step without a majority mark"
    return labels, None


def build_stepwise_rows(store: Store, dataset_ids: list[int], *, neutral: str = "correct",
                        since: datetime | None = None, annotators: list[str] | None = None) -> StepwiseRows:
    """Fold the marks of the steps items of ``dataset_ids`` into stepwise traces, in item order."""
    if neutral not in NEUTRAL_RULES:
        raise ValueError(f"neutral must be one of {', '.join(NEUTRAL_RULES)}, got {neutral!r}")
    with store.read() as session:
        traces = step_traces(session, dataset_ids, since=since, annotators=annotators)
    result = StepwiseRows(traces=[])
    for trace in traces:
        labels, reason = fold_trace(trace, neutral)
        if labels is None:
            result.left_out[f"traces {reason}"] += 1
            continue
        spans = [StepSpan(s.start, s.end, s.in_answer) for s in trace.steps]
        if len(labels) < len(spans):
            result.left_out["steps after the last labeled one"] += len(spans) - len(labels)
        prompt = trace.prompt_messages if trace.prompt_messages is not None else trace.prompt_text
        result.traces.append(StepwiseTrace(trace.item_id, trace.dataset, prompt, trace.completion,
                                           spans[:len(labels)], labels,
                                           prefix_ends(len(trace.completion), spans)[:len(labels)]))
        result.votes[trace.item_id] = trace.votes
    return result
