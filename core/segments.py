"""Splitting a reasoning model's response into its thinking segment and its answer.

The split is at the **last** ``</think>``; the opening ``<think>`` is optional, because chat
templates (Qwen3-Thinking's among them) often put it in the prompt. Thinking is the response up to
and including that ``</think>``; the answer is what follows, leading whitespace removed. A response
without ``</think>`` has no thinking segment and its answer is the whole response.
"""

from __future__ import annotations

from typing import NamedTuple

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class Segments(NamedTuple):
    thinking: str | None  # includes the closing </think>; None when there is none
    answer: str


def split_thinking(response: str) -> Segments:
    cut = response.rfind(THINK_CLOSE)
    if cut == -1:
        return Segments(None, response)
    end = cut + len(THINK_CLOSE)
    return Segments(response[:end], response[end:].lstrip())


def thinking_body(thinking: str) -> str:
    """The thinking text without its ``<think>``/``</think>`` markers, for display."""
    body = thinking[: -len(THINK_CLOSE)] if thinking.endswith(THINK_CLOSE) else thinking
    body = body.lstrip()
    return body[len(THINK_OPEN):] if body.startswith(THINK_OPEN) else body
