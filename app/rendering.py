"""HTML for prompts and completions, which are untrusted text.

Every piece of stored text goes through ``html.escape`` before it reaches ``gr.HTML``; nothing
from a completion is ever interpreted as HTML or Markdown. So a completion holding ``<script>``,
``onerror=``, a ``javascript:`` link, ``<style>`` or a remote image shows as those characters and
can neither run code, restyle the page nor make the browser fetch anything. (``gr.Markdown`` would
keep ``<img src=...>`` and fetch it; ``gr.HTML`` would run it.)
"""

from __future__ import annotations

import html

from core.labeling.actions import ComparisonView, ResponseView
from core.segments import thinking_body

LABEL_CSS = """
.rl-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: inherit; line-height: 1.5; }
.rl-turn { border-left: 3px solid var(--border-color-primary); padding: 4px 10px; margin: 6px 0; }
.rl-turn.rl-user { border-left-color: #3b82f6; }
.rl-turn.rl-assistant { border-left-color: #10b981; }
.rl-turn.rl-system, .rl-turn.rl-developer { border-left-color: #a855f7; }
.rl-role { font-size: 0.75em; text-transform: uppercase; opacity: 0.7; letter-spacing: 0.05em; }
.rl-response { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 14px; min-height: 120px; }
.rl-response h4 { margin: 0 0 8px 0; }
.rl-thinking { margin-bottom: 10px; opacity: 0.85; }
.rl-thinking summary { cursor: pointer; font-size: 0.9em; }
.rl-thinking .rl-text { font-size: 0.9em; border-left: 2px dashed var(--border-color-primary); padding-left: 8px; }
.rl-empty { font-style: italic; opacity: 0.6; }
.rl-shortcuts kbd { border: 1px solid var(--border-color-primary); border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
"""


def _text(value: str) -> str:
    if not value.strip():
        return '<div class="rl-text rl-empty">(empty response)</div>'
    return f'<div class="rl-text">{html.escape(value)}</div>'


def render_prompt(view: ComparisonView) -> str:
    if view.prompt_messages is None:
        return f'<div class="rl-prompt">{_text(view.prompt_text or "")}</div>'
    turns = []
    for message in view.prompt_messages:
        role = html.escape(message["role"])
        turns.append(f'<div class="rl-turn rl-{role}"><div class="rl-role">{role}</div>{_text(message["content"])}</div>')
    return '<div class="rl-prompt">' + "".join(turns) + "</div>"


def render_response(response: ResponseView, title: str) -> str:
    parts = [f'<div class="rl-response"><h4>{html.escape(title)}</h4>']
    if response.thinking is not None:
        body = thinking_body(response.thinking)
        words = len(body.split())
        parts.append(
            f'<details class="rl-thinking"><summary>Thinking ({words} words)</summary>{_text(body)}</details>'
        )
    parts.append(_text(response.answer))
    parts.append("</div>")
    return "".join(parts)
