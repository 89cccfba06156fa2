"""Marking the steps of a reasoning trace: what the annotator sees and the marks they give.

A steps item shows the prompt and the trace's steps, numbered, the thinking steps apart from the answer. The
annotator marks each step correct ("+"), neutral ("0") or wrong ("-"), or leaves it unreviewed (None: the steps
after the first wrong one, in first-error labeling as in PRM800K), and may say whether the final answer is
correct. The marks are stored with the label (``Label.steps``), one per step, in step order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from core.accounts import Actor
from core.labeling.ranking import check_comment
from core.steps import FINAL_VERDICTS, StepError, check_marks
from storage.labels import LabelInput
from storage.queries import load_comparison
from storage.queue import QueueError, label_of
from storage.steps import steps_of


@dataclass(frozen=True)
class ShownStep:
    step_id: int  # its number in the trace, from 0 (the API's ``id``)
    text: str
    in_answer: bool


@dataclass(frozen=True)
class GivenMarks:
    marks: list[str | None]
    final: str | None = None
    comment: str | None = None


@dataclass(frozen=True)
class StepsView:
    item_id: int
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    steps: list[ShownStep]
    existing: GivenMarks | None = None  # the actor's stored marks (None when unmarked or skipped)
    existing_choice: str | None = None  # "steps" or "skip" when the actor labeled it before
    dataset: str = ""

    @property
    def comparison_id(self) -> int:  # the queue's name for an item
        return self.item_id


def steps_view_in(session: Session, actor: Actor, item_id: int, dataset: str) -> StepsView | None:
    record = load_comparison(session, item_id)
    if record is None:
        return None
    steps = [ShownStep(step.position, record.a_text[step.start:step.end], step.in_answer)
             for step in steps_of(session, item_id)]
    stored = label_of(session, annotator_id=actor.user_id, comparison_id=item_id)
    existing = None
    if stored is not None and stored.steps is not None:
        existing = GivenMarks(list(stored.steps["marks"]), stored.steps.get("final"), stored.comment)
    return StepsView(item_id, record.prompt_text, record.prompt_messages, steps, existing,
                     stored.choice if stored is not None else None, dataset)


def steps_label_input(session: Session, actor: Actor, item_id: int, marks: Any, *, final: Any, comment: Any,
                      seconds_spent: float | None) -> LabelInput:
    """The label ``marks`` make on steps item ``item_id``, checked against its steps inside the caller's
    transaction. Raises ``QueueError`` naming the step at fault."""
    steps = steps_of(session, item_id)
    if not steps:
        raise QueueError(f"item {item_id} is not a steps item: label pairwise comparisons with a choice (a, b, ...) "
                         "and ranking items with a ranking")
    check_comment(comment)
    if final is not None and final not in FINAL_VERDICTS:
        raise QueueError(f"final must be 'correct', 'wrong' or null (not judged), got {str(final)[:20]!r}")
    try:
        clean = check_marks(marks, len(steps))
    except StepError as error:
        raise QueueError(f"item {item_id}: {error}") from None
    return LabelInput(comparison_id=item_id, annotator_id=actor.user_id, choice="steps",
                      steps={"marks": clean, "final": final}, comment=(comment or "").strip() or None,
                      seconds_spent=seconds_spent)


def marks_from_screen(text: str, n_steps: int) -> list[str | None]:
    """The page's marks field (one character per step: "+", "0", "-", "." = unreviewed, "?" = not marked yet) as
    marks. Raises ``QueueError`` naming the first step not marked."""
    text = (text or "").strip() or "?" * n_steps
    if len(text) != n_steps:
        raise QueueError(f"the page sent {len(text)} marks for {n_steps} steps: reload the item")
    marks = []
    for index, character in enumerate(text):
        if character == "?":
            raise QueueError(f"step {index + 1} is not marked: mark every step, or press f at the first wrong one "
                             "to leave the rest unreviewed")
        if character not in "+0-.":
            raise QueueError(f"step {index + 1}: unknown mark {character!r}")
        marks.append(None if character == "." else character)
    return marks


def screen_from_marks(marks: list[str | None] | None, n_steps: int) -> str:
    """The page's marks field for stored marks ("" when there are none)."""
    if marks is None or len(marks) != n_steps:
        return "?" * n_steps
    return "".join("." if mark is None else mark for mark in marks)
