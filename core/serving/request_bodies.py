"""The reward server's request bodies: parsed, checked against ``core.limits`` and turned into typed
requests before any model runs. Every refusal is a ``BadRequest`` whose message says what is wrong
and where (``completions[3]: must be a string ...``), so a trainer's log shows the fix.

Three shapes, one per client the server speaks to:

* ``/score`` (RewardLab's own): ``prompts`` (text or chat messages) and ``completions`` (text, or
  TRL's conversational completion: a list of messages ending with the assistant's), one prompt per
  completion; ``segments`` and ``trajectory`` ask for more than the reward.
* ``/get_reward`` (OpenRLHF's ``--remote_rm_url``): ``query``, a list of full texts (prompt and
  response already joined); OpenRLHF also sends ``prompts`` and ``labels``, which are not needed.
* ``/classify`` (vLLM's pooling API, which verl calls for a remote reward model): ``input`` as one
  text, a list of texts, one list of token ids or a list of them, or ``messages`` (one chat).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from core.data.formats import CHAT_ROLES
from core.limits import MAX_JSON_DEPTH, MAX_SERVE_CHARS, MAX_SERVE_MESSAGES, MAX_SERVE_TEXTS, MAX_SERVE_TRAJECTORY_TEXTS
from core.scoring.engine import Prompt
from core.steps import StepError, StepRule



class BadRequest(ValueError):
    """A request the server refuses; ``status`` is the HTTP status, the message says what and where."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass(frozen=True)
class ScoreRequest:
    prompts: list[Prompt]
    completions: list[str]
    segments: bool
    trajectory: bool
    steps: StepRule | None = None  # per-step rewards asked for, with the rule that splits each completion


@dataclass(frozen=True)
class ClassifyRequest:
    """One of ``texts`` (formatted text, tokenized as given), ``token_ids`` or ``messages`` is set."""

    texts: list[str] | None
    token_ids: list[list[int]] | None
    messages: list[dict[str, str]] | None
    model: str | None
    activation: bool
    add_special_tokens: bool


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object. Raises ``BadRequest`` for bytes that are not UTF-8 JSON, JSON nested
    deeper than ``MAX_JSON_DEPTH``, or anything but an object at the top."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the body is not UTF-8 (byte {error.start}); send JSON") from None
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels; no request of this server does")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {_json_type(body)}")
    return body


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings: strings are dropped by one regular expression and
    only the brackets left are walked, so a body of long texts costs a pass in C, not in Python."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        if bracket.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_score_request(body: dict[str, Any]) -> ScoreRequest:
    """``{"prompts": [...], "completions": [...], "segments": false, "trajectory": false, "steps": false,
    "step_separator": ""}``."""
    prompts = _list_field(body, "prompts")
    completions = _list_field(body, "completions")
    if len(prompts) != len(completions):
        raise BadRequest(f"prompts has {len(prompts)} items and completions {len(completions)}: "
                         "give one prompt per completion (repeat a prompt for each of its completions)")
    segments = _flag(body, "segments")
    trajectory = _flag(body, "trajectory")
    if trajectory and len(completions) > MAX_SERVE_TRAJECTORY_TEXTS:
        raise BadRequest(f"trajectory: a request asking for trajectories may hold at most {MAX_SERVE_TRAJECTORY_TEXTS} "
                         f"completions, got {len(completions)}; split it")
    steps = None
    if _flag(body, "steps"):
        separator = body.get("step_separator", "") or ""
        if not isinstance(separator, str):
            raise BadRequest(f"step_separator must be a string ('text:SEP' or 'regex:PATTERN'), got {_json_type(separator)}")
        try:
            steps = StepRule.parse(separator)
        except StepError as error:
            raise BadRequest(f"step_separator: {error}") from None
    elif "step_separator" in body:
        raise BadRequest("step_separator splits completions into steps: send it with \"steps\": true")
    return ScoreRequest(
        [_prompt(value, f"prompts[{i}]") for i, value in enumerate(prompts)],
        [_completion(value, f"completions[{i}]") for i, value in enumerate(completions)],
        segments, trajectory, steps,
    )


def parse_get_reward_request(body: dict[str, Any]) -> list[str]:
    """OpenRLHF's ``{"query": [full texts], "prompts": [...], "labels": [...]}``: the queries."""
    queries = _list_field(body, "query")
    return [_text(value, f"query[{i}]") for i, value in enumerate(queries)]


def parse_classify_request(body: dict[str, Any]) -> ClassifyRequest:
    """vLLM's ``/classify`` body: ``input`` (text, texts, token ids) or ``messages``, optional ``model``,
    ``use_activation`` (older names ``activation``, ``softmax``; default true, as vLLM), ``add_special_tokens``."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model: must be a string, got {_json_type(model)}")
    activation = True
    for name in ("softmax", "activation", "use_activation"):  # the newest name wins, as in vLLM
        if body.get(name) is not None:
            activation = _flag(body, name)
    if body.get("truncate_prompt_tokens") not in (None, -1):
        raise BadRequest("truncate_prompt_tokens: this server never truncates (a cut text gets another reward); "
                         "texts over the model's max_length get a null reward and over_max_length: true")
    has_input, has_messages = body.get("input") is not None, body.get("messages") is not None
    if has_input == has_messages:
        raise BadRequest("give either 'input' (a text, a list of texts, or token ids) or 'messages' (one chat)")
    if has_messages:
        messages = _messages(body["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise BadRequest("messages: the last message must be the assistant's response to score, "
                             f"got role {messages[-1]['role']!r}")
        add_special = _flag(body, "add_special_tokens", default=False)
        return ClassifyRequest(None, None, messages, model, activation, add_special)
    add_special = _flag(body, "add_special_tokens", default=True)
    texts, ids = _classify_input(body["input"])
    return ClassifyRequest(texts, ids, None, model, activation, add_special)


def _classify_input(value: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        return [_text(value, "input")], None
    if not isinstance(value, list) or not value:
        raise BadRequest(f"input: must be a text, a non-empty list of texts or token ids, got {_json_type(value)}")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return None, [_token_ids(value, "input")]  # one sequence: its length is checked as tokens
    _check_count(value, "input")
    if all(isinstance(item, str) for item in value):
        return [_text(item, f"input[{i}]") for i, item in enumerate(value)], None
    if all(isinstance(item, list) for item in value):
        return None, [_token_ids(item, f"input[{i}]") for i, item in enumerate(value)]
    raise BadRequest("input: mixes kinds; give texts, one list of token ids, or a list of token-id lists")


def _token_ids(value: list[Any], where: str) -> list[int]:
    if not value:
        raise BadRequest(f"{where}: an empty list of token ids")
    if len(value) > MAX_SERVE_CHARS:
        raise BadRequest(f"{where}: {len(value):,} token ids; at most {MAX_SERVE_CHARS:,}")
    for k, token in enumerate(value):
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise BadRequest(f"{where}[{k}]: a token id is a non-negative integer, got {json.dumps(token)[:40]}")
    return list(value)


def _list_field(body: dict[str, Any], name: str) -> list[Any]:
    if name not in body:
        raise BadRequest(f"{name}: missing")
    value = body[name]
    if not isinstance(value, list):
        raise BadRequest(f"{name}: must be a list, got {_json_type(value)}")
    if not value:
        raise BadRequest(f"{name}: empty; send at least one")
    _check_count(value, name)
    return value


def _check_count(value: list[Any], name: str) -> None:
    if len(value) > MAX_SERVE_TEXTS:
        raise BadRequest(f"{name}: {len(value)} items; a request holds at most {MAX_SERVE_TEXTS} "
                         "($REWARDLAB_MAX_SERVE_TEXTS): split it", status=413)


def _flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false, got {json.dumps(value)[:40]}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string, got {_json_type(value)}")
    if len(value) > MAX_SERVE_CHARS:
        raise BadRequest(f"{where}: {len(value):,} characters; at most {MAX_SERVE_CHARS:,} per text", status=413)
    _refuse_lone_surrogates(value, where)
    return value


def _refuse_lone_surrogates(value: str, where: str) -> None:
    """JSON may escape half of a UTF-16 pair (``"\\ud800"``); Python then holds a string no tokenizer can
    encode. Refused here, naming the place, rather than failing inside the model's tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequest(f"{where}: character {error.start} is half of a UTF-16 surrogate pair "
                         f"(\\u{ord(value[error.start]):04x}) with no other half; send valid Unicode") from None


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{where}: chat messages are a non-empty list of {{\"role\", \"content\"}} objects, "
                         f"got {_json_type(value)}")
    if len(value) > MAX_SERVE_MESSAGES:
        raise BadRequest(f"{where}: {len(value)} messages; at most {MAX_SERVE_MESSAGES}", status=413)
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRequest(f"{where}[{index}]: must be an object with 'role' and 'content', got {_json_type(message)}")
        if message.get("role") not in CHAT_ROLES:
            raise BadRequest(f"{where}[{index}].role: must be one of {', '.join(CHAT_ROLES)}, "
                             f"got {json.dumps(message.get('role'))[:40]}")
        messages.append({"role": message["role"], "content": _text(message.get("content"), f"{where}[{index}].content")})
    return messages


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, list):
        return _messages(value, where)
    raise BadRequest(f"{where}: a prompt is a string or a list of chat messages, got {_json_type(value)}")


def _completion(value: Any, where: str) -> str:
    """A completion as text; TRL's conversational completions are a list of messages ending with the
    assistant's reply, whose content is the response."""
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, list):
        messages = _messages(value, where)
        if messages[-1]["role"] != "assistant":
            raise BadRequest(f"{where}: the last message of a chat completion must be the assistant's, "
                             f"got role {messages[-1]['role']!r}")
        return messages[-1]["content"]
    raise BadRequest(f"{where}: must be a string or a list of chat messages, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
