"""What a row of an imported file means.

Two families of rows, each plain text ("standard") or chat messages ("conversational"), as TRL
names them:

* **preference**: ``chosen`` and ``rejected``, with an explicit ``prompt`` or an implicit one (the
  HH-RLHF layout, where both sides are whole conversations that share everything up to the last
  assistant turn). An optional numeric ``margin``.
* **candidates**: ``prompt`` and ``completions`` (two or more strings, or ``{"text", "model"}``
  objects); every pair becomes a comparison to label.
* **steps** (a steps dataset only, ``parse_steps_row``): ``prompt`` and a ``completion`` split by the dataset's
  step rule, or ``steps: [...]`` listed, or TRL's stepwise supervision rows ``{prompt, completions: [step, ...],
  labels: [bool, ...]}`` (imported as labeled).

``parse_row`` turns a decoded row into a ``ParsedRow`` or raises ``RowError`` naming the field.
Content hashes are computed here so that storage can deduplicate without knowing formats.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, NamedTuple

from core.limits import MAX_COMPLETIONS_PER_ROW, MAX_FIELDS_PER_ROW, MAX_MODEL_NAME_CHARS, MAX_TEXT_CHARS
from core.steps import StepError, StepRule, StepSpan, join_steps, marks_from_booleans, split_steps

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# The turn marker of Anthropic's HH-RLHF transcripts; the implicit prompt ends right after it.
HH_ASSISTANT_MARKER = "\n\nAssistant:"


class RowError(ValueError):
    """A row that cannot be imported; the message names the field and the fix."""


class Candidate(NamedTuple):
    text: str
    model: str | None = None


class ParsedRow(NamedTuple):
    kind: str  # "preference" | "candidates" | "steps"
    style: str  # "text" | "chat"
    prompt_text: str | None
    prompt_messages: list[dict[str, str]] | None
    # preference: [chosen, rejected]; candidates: the distinct completions in file order
    completions: list[Candidate]
    margin: float | None = None
    steps: tuple[StepSpan, ...] = ()  # a steps row: the steps of its one completion
    step_marks: list[str] | None = None  # a labeled steps row (TRL's stepwise labels): one mark per step

    @property
    def prompt_hash(self) -> str:
        return prompt_content_hash(self.prompt_text, self.prompt_messages)


def prompt_content_hash(text: str | None, messages: list[dict[str, str]] | None) -> str:
    # A kind prefix keeps a text prompt from ever hashing like a chat prompt.
    if messages is None:
        content = "text\n" + text
    else:
        content = "chat\n" + json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()


def completion_content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_text(value: Any, field: str) -> str:
    if value is None:
        raise RowError(f"field '{field}' is null; it must be a non-empty string")
    if not isinstance(value, str):
        raise RowError(f"field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"field '{field}' is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise RowError(f"field '{field}' is {len(value):,} characters long; the limit is {MAX_TEXT_CHARS:,}")
    if "\x00" in value:
        raise RowError(f"field '{field}' contains a NUL character (\\u0000); remove it")
    return value


def _check_messages(value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"field '{field}' must be a non-empty list of chat messages")
    messages = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise RowError(f"field '{where}' must be an object with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise RowError(f"field '{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        content = _check_text(message.get("content"), f"{where}.content")
        messages.append({"role": role, "content": content})
    return messages


def _is_chat(value: Any) -> bool:
    return isinstance(value, list)


def _single_assistant_reply(messages: list[dict[str, str]], field: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise RowError(
            f"field '{field}' must be exactly one assistant message after the prompt, got [{roles}]"
        )
    return messages[0]["content"]


def _margin(row: dict[str, Any]) -> float | None:
    value = row.get("margin")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RowError(f"field 'margin' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"field 'margin' must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise RowError(f"field 'margin' must be a finite number, got {value}")
    return float(value)


def split_implicit_text_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF-style transcripts into (prompt, chosen reply, rejected reply).

    The prompt is the shared text up to and including the last ``\\n\\nAssistant:`` before the
    two sides differ, so ``prompt + reply`` reproduces each original exactly.
    """
    shared = 0
    limit = min(len(chosen), len(rejected))
    while shared < limit and chosen[shared] == rejected[shared]:
        shared += 1
    cut = chosen.rfind(HH_ASSISTANT_MARKER, 0, shared)
    # The marker must lie wholly inside the shared part.
    while cut != -1 and cut + len(HH_ASSISTANT_MARKER) > shared:
        cut = chosen.rfind(HH_ASSISTANT_MARKER, 0, cut)
    if cut == -1:
        raise RowError(
            "no 'prompt' field, and 'chosen' and 'rejected' share no '\\n\\nAssistant:' turn to split "
            "the prompt from; add an explicit 'prompt' field"
        )
    end = cut + len(HH_ASSISTANT_MARKER)
    return chosen[:end], chosen[end:], rejected[end:]


def _parse_preference(row: dict[str, Any]) -> ParsedRow:
    for field in ("chosen", "rejected"):
        if field not in row:
            raise RowError(f"field '{field}' is missing")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    chat = _is_chat(chosen)
    if _is_chat(rejected) != chat or (prompt is not None and _is_chat(prompt) != chat):
        raise RowError("fields 'prompt', 'chosen' and 'rejected' mix plain text and chat messages; use one kind")
    margin = _margin(row)
    if chat:
        chosen_messages = _check_messages(chosen, "chosen")
        rejected_messages = _check_messages(rejected, "rejected")
        if prompt is not None:
            prompt_messages = _check_messages(prompt, "prompt")
        else:
            shared = 0
            while (
                shared < min(len(chosen_messages), len(rejected_messages))
                and chosen_messages[shared] == rejected_messages[shared]
            ):
                shared += 1
            if shared == 0:
                raise RowError(
                    "no 'prompt' field, and 'chosen' and 'rejected' share no leading messages; "
                    "add an explicit 'prompt' field"
                )
            prompt_messages = chosen_messages[:shared]
            chosen_messages, rejected_messages = chosen_messages[shared:], rejected_messages[shared:]
            if not chosen_messages or not rejected_messages:
                side = "chosen" if not chosen_messages else "rejected"
                raise RowError(f"field '{side}' has no reply after the messages it shares with the other side")
        chosen_text = _single_assistant_reply(chosen_messages, "chosen")
        rejected_text = _single_assistant_reply(rejected_messages, "rejected")
        prompt_text = None
    else:
        chosen = _check_text(chosen, "chosen")
        rejected = _check_text(rejected, "rejected")
        prompt_messages = None
        if prompt is not None:
            prompt_text = _check_text(prompt, "prompt")
            chosen_text, rejected_text = chosen, rejected
        else:
            if chosen == rejected:
                raise RowError("fields 'chosen' and 'rejected' are identical; a preference needs two different responses")
            # A blank reply after the split is data, not a bad field: HH-RLHF has preferred replies
            # that are a single space (the assistant said nothing, and raters preferred that).
            prompt_text, chosen_text, rejected_text = split_implicit_text_prompt(chosen, rejected)
    if chosen_text == rejected_text:
        raise RowError("fields 'chosen' and 'rejected' are identical; a preference needs two different responses")
    return ParsedRow(
        kind="preference",
        style="chat" if chat else "text",
        prompt_text=prompt_text,
        prompt_messages=prompt_messages,
        completions=[Candidate(chosen_text), Candidate(rejected_text)],
        margin=margin,
    )


def _parse_candidate(item: Any, index: int) -> Candidate:
    field = f"completions[{index}]"
    if isinstance(item, str):
        return Candidate(_check_text(item, field))
    if isinstance(item, dict):
        if "text" not in item:
            raise RowError(f"field '{field}.text' is missing")
        model = item.get("model")
        if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME_CHARS):
            raise RowError(f"field '{field}.model' must be a string of at most {MAX_MODEL_NAME_CHARS} characters")
        return Candidate(_check_text(item["text"], f"{field}.text"), model or None)
    raise RowError(f"field '{field}' must be a string or an object with 'text' (and 'model'), got {type(item).__name__}")


def _explicit_prompt(row: dict[str, Any]) -> tuple[str | None, list[dict[str, str]] | None]:
    """A row's ``prompt`` field as (text, None) or (None, chat messages). Raises ``RowError``."""
    if "prompt" not in row:
        raise RowError("field 'prompt' is missing")
    prompt = row["prompt"]
    if _is_chat(prompt):
        return None, _check_messages(prompt, "prompt")
    return _check_text(prompt, "prompt"), None


def _parse_candidates(row: dict[str, Any]) -> ParsedRow:
    prompt_text, prompt_messages = _explicit_prompt(row)
    chat = prompt_messages is not None
    completions = row["completions"]
    if isinstance(completions, str):
        # CSV cells are strings: accept a JSON array there.
        try:
            completions = json.loads(completions)
        except json.JSONDecodeError:
            raise RowError("field 'completions' must be a list (in CSV: a JSON array)") from None
    if not isinstance(completions, list):
        raise RowError(f"field 'completions' must be a list, got {type(completions).__name__}")
    if len(completions) > MAX_COMPLETIONS_PER_ROW:
        raise RowError(f"field 'completions' has {len(completions)} items; the limit is {MAX_COMPLETIONS_PER_ROW}")
    distinct: dict[str, Candidate] = {}
    for index, item in enumerate(completions):
        candidate = _parse_candidate(item, index)
        distinct.setdefault(candidate.text, candidate)
    if len(distinct) < 2:
        raise RowError("field 'completions' needs at least two different completions to compare")
    return ParsedRow(
        kind="candidates",
        style="chat" if chat else "text",
        prompt_text=prompt_text,
        prompt_messages=prompt_messages,
        completions=list(distinct.values()),
    )


def parse_row(row: Any) -> ParsedRow:
    """Validate one decoded row and say what it is. Raises ``RowError``."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be an object with named fields, got {type(row).__name__}")
    if len(row) > MAX_FIELDS_PER_ROW:
        raise RowError(f"row has {len(row):,} fields; a preference row has a handful (at most {MAX_FIELDS_PER_ROW:,})")
    has_pair = "chosen" in row or "rejected" in row
    if "completions" in row and has_pair:
        raise RowError("row mixes formats: it has 'completions' (candidates) and 'chosen'/'rejected' (preference)")
    if "completions" in row:
        return _parse_candidates(row)
    if has_pair:
        return _parse_preference(row)
    raise RowError(
        "row has neither 'chosen'/'rejected' (a preference) nor 'prompt' + 'completions' (candidates to label)"
    )


def parse_steps_row(row: Any, rule: StepRule) -> ParsedRow:
    """Validate one row of a steps dataset: ``prompt`` (text or chat) and the trace as ``completion`` (split by
    ``rule``), ``steps`` (listed) or ``completions`` + optional ``labels`` (TRL's stepwise supervision format).
    Raises ``RowError`` naming the field or the step."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be an object with named fields, got {type(row).__name__}")
    if len(row) > MAX_FIELDS_PER_ROW:
        raise RowError(f"row has {len(row):,} fields; a steps row has a handful (at most {MAX_FIELDS_PER_ROW:,})")
    if "chosen" in row or "rejected" in row:
        raise RowError("a steps dataset takes one trace per row (prompt + completion, steps or TRL's completions + "
                       "labels), not a chosen/rejected pair")
    given = [field for field in ("completion", "steps", "completions") if field in row]
    if len(given) != 1:
        raise RowError("a steps row needs exactly one of 'completion' (split by the dataset's step rule), 'steps' "
                       f"(a list) or 'completions' with 'labels' (TRL's stepwise format); it has {given or 'none'}")
    prompt_text, prompt_messages = _explicit_prompt(row)
    chat = prompt_messages is not None
    field, = given
    marks = None
    try:
        if field == "completion":
            if "labels" in row:
                raise StepError("field 'labels' goes with 'completions' (TRL's stepwise format), whose steps it marks; "
                                "a 'completion' is split by the dataset's rule, so its steps are not known to the file")
            text = _check_text(row["completion"], "completion")
            spans = split_steps(text, rule)
        else:
            listed = row[field]
            if isinstance(listed, str):  # CSV cells are strings: accept a JSON array there
                try:
                    listed = json.loads(listed)
                except json.JSONDecodeError:
                    raise RowError(f"field '{field}' must be a list (in CSV: a JSON array)") from None
            text, spans = join_steps(listed, field)
            if len(text) > MAX_TEXT_CHARS:
                raise RowError(f"the steps join to {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
            if "labels" in row:
                labels = row["labels"]
                if isinstance(labels, str):
                    try:
                        labels = json.loads(labels)
                    except json.JSONDecodeError:
                        raise RowError("field 'labels' must be a list of booleans (in CSV: a JSON array)") from None
                marks = marks_from_booleans(labels, len(spans))
    except StepError as error:
        raise RowError(str(error)) from None
    return ParsedRow(kind="steps", style="chat" if chat else "text", prompt_text=prompt_text,
                     prompt_messages=prompt_messages, completions=[Candidate(text)], steps=tuple(spans),
                     step_marks=marks)
