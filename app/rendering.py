"""HTML for prompts and completions, which are untrusted text.

Stored text is shown two ways, both in every block, and a checkbox on the Label tab picks one with CSS:

* **Rendered**: Markdown parsed by markdown-it-py with raw HTML off, so ``<script>``, ``<style>``,
  ``onerror=`` or ``<iframe>`` in a completion are text, never markup. Images become links (their
  text and URL) so showing a completion never makes the browser fetch anything. Code blocks are
  highlighted by Pygments on the server. The HTML that comes out then goes through nh3, an
  allow-list sanitizer: only the tags and attributes listed below survive, links keep only http,
  https and mailto URLs (no ``javascript:``, no relative URLs into this app) and get
  ``rel="noopener noreferrer nofollow"``. The parser's escaping is the first wall, the sanitizer the
  second, so one bug in either does not open the page.
* **Raw**: the exact stored text, ``html.escape``d, in a monospace pre-wrap block.

(``gr.Markdown`` would keep ``<img src=...>`` and fetch it; ``gr.HTML`` would run it; hence this.)

Cost is linear in the text and bounded: markdown-it parses in linear time with a nesting limit, nh3
is a streaming HTML5 parser, a text longer than ``MAX_MARKDOWN_CHARS`` is shown raw, and Pygments,
whose regex lexers can backtrack badly on some inputs, sees at most ``MAX_HIGHLIGHT_CHARS`` of code
per text. The text itself is capped at import (``core/limits.py``, 1,000,000 characters a field).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from core.limits import MAX_HIGHLIGHT_CHARS, MAX_MARKDOWN_CHARS
from core.labeling.steps import StepsView
from core.labeling.actions import ComparisonView, ResponseView
from core.segments import thinking_body


# Pygments' token classes get a prefix so that they cannot collide with Gradio's own classes, and
# only those classes survive the sanitizer.
_TOKEN_CLASS_PREFIX = "rl-tok-"
_FORMATTER = HtmlFormatter(nowrap=True, classprefix=_TOKEN_CLASS_PREFIX)
_TOKEN_CLASSES = {_TOKEN_CLASS_PREFIX + name for name in STANDARD_TYPES.values() if name}

_ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "s", "code", "pre", "span",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"style"},  # markdown-it writes a column's alignment as style="text-align:..."
    "td": {"style"},
}


def _code_block(content: str, language: str) -> str:
    """A code block as ``<pre class="rl-code">``: highlighted when Pygments knows the language and
    the block is short enough, else escaped as it is. Either way indentation is kept (``pre``)."""
    body = None
    if language:
        try:
            lexer = get_lexer_by_name(language, stripnl=False, ensurenl=False)
        except ClassNotFound:  # an unknown or made-up language name: plain code
            lexer = None
        if lexer is not None:
            body = highlight(content, lexer, _FORMATTER)
    if body is None:
        body = html.escape(content)
    return f'<pre class="rl-code"><code>{body}</code></pre>'


def _highlight(content: str, language: str, _attributes: str) -> str:
    # markdown-it uses a result that starts with "<pre" as the whole block.
    return _code_block(content, language)


def _indented_code(self, tokens: Sequence[Token], idx: int, options, env) -> str:  # noqa: ANN001
    # markdown-it calls `highlight` for fenced blocks only; indented blocks get the same look.
    return _code_block(tokens[idx].content, "") + "\n"


def _image_as_link(self, tokens: Sequence[Token], idx: int, options, env) -> str:  # noqa: ANN001
    # Never an <img>: a remote image would tell its owner who looked at the completion, and when.
    # The annotator sees the alt text and the URL, and may open it on purpose.
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    url = str(token.attrGet("src") or "")
    label = html.escape(f"image: {alt} ({url})" if alt else f"image: {url}")
    return f'<a href="{html.escape(url)}">{label}</a>'


def _markdown_parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "breaks": True, "highlight": _highlight})
    parser.enable(["table", "strikethrough"])
    parser.add_render_rule("code_block", _indented_code)
    parser.add_render_rule("image", _image_as_link)
    return parser


_MARKDOWN = _markdown_parser()


def sanitize(fragment: str) -> str:
    """Keep only the allow-listed tags, attributes, classes and URL schemes of an HTML fragment."""
    return nh3.clean(
        fragment,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        allowed_classes={"span": _TOKEN_CLASSES, "pre": {"rl-code"}},
        filter_style_properties={"text-align"},
        url_schemes={"http", "https", "mailto"},
        url_relative="deny",  # a relative link would point into this app
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},  # opening a link never leaves the page
    )


def render_markdown(text: str) -> str:
    """Untrusted Markdown as sanitized HTML (see the module docstring for what survives); a text
    over ``MAX_MARKDOWN_CHARS`` as escaped raw text with a note saying why."""
    if len(text) > MAX_MARKDOWN_CHARS:
        return (f'<p class="rl-note">Longer than {MAX_MARKDOWN_CHARS:,} characters: shown as raw text.</p>'
                f'<div class="rl-raw-long">{html.escape(text)}</div>')
    tokens = _MARKDOWN.parse(text)
    budget = MAX_HIGHLIGHT_CHARS
    for token in tokens:  # fenced blocks are all in this flat list, however deeply nested
        if token.type == "fence":
            if len(token.content) > budget:
                token.info = ""  # no language: `_highlight` shows it escaped
            else:
                budget -= len(token.content)
    return sanitize(_MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {}))


def _text(value: str, raw_value: str | None = None) -> str:
    """A block of stored text, rendered and raw; ``raw_value`` when the raw view shows more (the
    whole stored completion, thinking included) than the rendered part."""
    raw_value = value if raw_value is None else raw_value
    raw = f'<div class="rl-raw">{html.escape(raw_value)}</div>'
    if not value.strip():
        return f'<div class="rl-text rl-empty">(empty response)</div>{raw}'
    return f'<div class="rl-text rl-md">{render_markdown(value)}</div>{raw}'


def render_prompt(view: ComparisonView) -> str:
    if view.prompt_messages is None:
        return f'<div class="rl-prompt">{_text(view.prompt_text or "")}</div>'
    turns = []
    for message in view.prompt_messages:
        role = html.escape(message["role"])
        turns.append(
            f'<div class="rl-turn rl-{role}"><div class="rl-role">{role}</div>{_text(message["content"])}</div>'
        )
    return '<div class="rl-prompt">' + "".join(turns) + "</div>"


def render_response(response: ResponseView, title: str) -> str:
    parts = [f'<div class="rl-response"><h4>{html.escape(title)}</h4>']
    if response.thinking is not None:
        body = thinking_body(response.thinking)
        words = len(body.split())
        parts.append(
            f'<details class="rl-thinking"><summary>Thinking ({words} words)</summary>'
            f'<div class="rl-text rl-md">{render_markdown(body)}</div></details>'
        )
    # The raw view shows the completion exactly as stored, <think> block and all.
    parts.append(_text(response.answer, raw_value=response.text))
    parts.append("</div>")
    return "".join(parts)


STEP_MARK_BUTTONS = (("+", "✓ correct", "1"), ("0", "~ neutral", "2"), ("-", "✗ wrong", "3"),
                     ("f", "first wrong: rest unreviewed", "f"))


def render_steps(view: StepsView) -> str:
    """A trace's steps as numbered blocks (thinking steps apart from the answer), each with its mark buttons; the
    page's script (app/label_tab.py) reads the buttons' ``data-`` attributes and paints the marks."""
    parts = [f'<div class="rl-steps" id="steps-view" data-item="{view.item_id}" data-n="{len(view.steps)}">']
    answer_started = False
    for step in view.steps:
        if step.in_answer and not answer_started:
            answer_started = True
            parts.append('<div class="rl-steps-divider">Final answer</div>')
        kind = "answer" if step.in_answer else "thinking"
        buttons = "".join(
            f'<button type="button" class="rl-mark rl-mark-{"f" if mark == "f" else {"+": "ok", "0": "neutral", "-": "bad"}[mark]}" '
            f'data-step="{step.step_id}" data-mark="{mark}" title="key {key}">{html.escape(text)}</button>'
            for mark, text, key in STEP_MARK_BUTTONS)
        parts.append(f'<div class="rl-step rl-step-{kind}" data-step="{step.step_id}" data-mark="?">'
                     f'<div class="rl-step-head"><span class="rl-step-number">Step {step.step_id + 1}</span>'
                     f'<span class="rl-step-kind">{kind}</span><span class="rl-step-state"></span>'
                     f'<span class="rl-mark-buttons">{buttons}</span></div>{_text(step.text)}</div>')
    parts.append("</div>")
    return "".join(parts)


# Only the token colours: Pygments' style sheet also restyles every `pre` and line-number cell on
# the page, which is not ours to change.
# Gradio patches a changed gr.HTML in place, so a scrolled box would keep its scroll position into
# the next comparison; the Label tab runs this in the browser whenever a box's content changes.
SCROLL_BOXES_TO_TOP_JS = (
    "() => { document.querySelectorAll('.rl-response').forEach((box) => { box.scrollTop = 0; });"
    " document.querySelectorAll('.rl-prompt').forEach((box) => { box.scrollTop = box.scrollHeight; }); }"
)

_CODE_COLOURS = "\n".join(
    line for line in _FORMATTER.get_style_defs(".rl-code").splitlines()
    if line.startswith(".rl-code ." + _TOKEN_CLASS_PREFIX)
)

LABEL_CSS = """
.rl-text { overflow-wrap: anywhere; line-height: 1.5; }
.rl-md > :first-child { margin-top: 0; }
.rl-md > :last-child { margin-bottom: 0; }
.rl-md h1, .rl-md h2, .rl-md h3 { font-size: 1.15em; margin: 0.8em 0 0.4em; }
.rl-md h4, .rl-md h5, .rl-md h6 { font-size: 1em; margin: 0.8em 0 0.4em; }
/* A wide table scrolls sideways inside its side instead of widening it. */
.rl-md table { border-collapse: collapse; border: none; display: block; width: max-content; max-width: 100%;
  overflow-x: auto; margin: 0.5em 0; }
/* Cells break between words only (the text around them may break anywhere), so a wide table
   scrolls instead of stacking its headers one letter a line. */
.rl-md th, .rl-md td { border: 1px solid var(--border-color-primary); padding: 2px 8px; overflow-wrap: normal; }
/* Gradio styles links inside gr.HTML like buttons (padding); these are links in running text. */
.gradio-container .rl-text.rl-md a { padding: 0; color: var(--link-text-color, #2563eb); text-decoration: underline; }
.rl-md blockquote { border-left: 3px solid var(--border-color-primary); margin: 0.5em 0; padding-left: 10px; opacity: 0.85; }
.rl-md code { font-family: var(--font-mono), ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
/* Code keeps its indentation and never wraps: a long line scrolls inside the block. */
.rl-md pre.rl-code { font-family: var(--font-mono), ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  white-space: pre; overflow-x: auto; overflow-wrap: normal; max-width: 100%; padding: 8px 10px;
  background: #f6f8fa; color: #1f2328; border-radius: 6px; font-size: 0.85em; line-height: 1.45; }
.rl-md pre.rl-code code { font-family: inherit; font-size: inherit; white-space: pre; background: none; padding: 0; }
.rl-note { font-style: italic; opacity: 0.7; }
.rl-raw-long { white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.45; font-size: 0.9em;
  font-family: var(--font-mono), ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
/* The exact stored text ("Show raw text"): shown instead of the rendered text when the box is ticked. */
.rl-raw { display: none; white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.45; font-size: 0.9em;
  font-family: var(--font-mono), ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
/* :has() lets the checkbox switch every block at once with no round trip to the server, and the
   choice survives the next comparison because nothing re-renders the checkbox. */
body:has(#label-raw input:checked) .rl-raw { display: block; }
body:has(#label-raw input:checked) .rl-md,
body:has(#label-raw input:checked) .rl-empty,
body:has(#label-raw input:checked) .rl-thinking { display: none; }
.rl-turn { border-left: 3px solid var(--border-color-primary); padding: 4px 10px; margin: 6px 0; }
.rl-turn.rl-user { border-left-color: #3b82f6; }
.rl-turn.rl-assistant { border-left-color: #10b981; }
.rl-turn.rl-system, .rl-turn.rl-developer { border-left-color: #a855f7; }
.rl-role { font-size: 0.75em; text-transform: uppercase; opacity: 0.7; letter-spacing: 0.05em; }
/* A long prompt or completion scrolls in its own box, so both sides and the buttons stay in reach; the prompt
   box opens at its end (the last turn, which the answers reply to). */
.rl-prompt { max-height: 18vh; overflow-y: auto; }
.rl-response { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px; min-height: 80px;
  max-height: 60vh; overflow-y: auto; overflow-x: hidden; }
.rl-response h4 { margin: 0 0 4px 0; font-size: 0.95em; }
/* At 1280x800 the page must show the first lines of both answers above the choice bar: a one-line header,
   a one-line dataset row, a one-line guidelines header, a short prompt box. */
#app-header { gap: 8px; }
#app-title h1 { font-size: 1.25em; margin: 0; display: inline; }
#app-title p { display: inline; margin: 0 0 0 0.6em; opacity: 0.75; font-size: 0.9em; }
#label-topline { align-items: center; gap: 10px; }
#label-topline #label-progress p { margin: 0; }
#label-my-datasets, #label-guidelines-box { padding: 2px 10px; }
#label-my-datasets .label-wrap, #label-guidelines-box .label-wrap { padding: 2px 0; }
#label-prompt .rl-turn { margin: 2px 0; padding: 2px 8px; }
#label-guidelines { max-height: 28vh; overflow-y: auto; }
[id^="rank-text-"] .rl-response { max-height: 32vh; }
/* A ranking slot's place buttons stay one short line, so K=4 slots fit in one row above the bar at 900 px. */
#rank-slots { gap: 8px; }
.rl-place { padding: 2px 6px !important; }
.rl-place .wrap { gap: 3px !important; flex-wrap: wrap; }
.rl-place label { padding: 1px 4px !important; min-height: 0 !important; font-size: 0.85em; }
.rl-place > span, .rl-place [data-testid="block-info"] { font-size: 0.8em; margin-bottom: 2px; }
.rl-response h4 { margin: 0 0 8px 0; }
.rl-thinking { margin-bottom: 10px; opacity: 0.85; }
.rl-thinking summary { cursor: pointer; font-size: 0.9em; }
.rl-thinking .rl-text { font-size: 0.9em; border-left: 2px dashed var(--border-color-primary); padding-left: 8px; }
.rl-empty { font-style: italic; opacity: 0.6; }
/* Steps of a reasoning trace: a block each, the current one outlined (keys j/k), coloured by its mark. */
.rl-steps { max-height: 58vh; overflow-y: auto; padding-right: 4px; }
.rl-step { border: 1px solid var(--border-color-primary); border-left-width: 5px; border-radius: 6px; padding: 4px 10px;
  margin: 4px 0; }
.rl-step-answer { background: rgba(16, 185, 129, 0.05); }
.rl-steps-divider { font-size: 0.8em; text-transform: uppercase; letter-spacing: 0.05em; opacity: 0.7; margin-top: 8px; }
.rl-step[data-current="1"] { outline: 2px solid #3b82f6; }
.rl-step[data-mark="+"] { border-left-color: #10b981; }
.rl-step[data-mark="0"] { border-left-color: #a3a3a3; }
.rl-step[data-mark="-"] { border-left-color: #ef4444; }
.rl-step[data-mark="."] { opacity: 0.55; }
.rl-step-head { display: flex; gap: 8px; align-items: center; font-size: 0.85em; }
.rl-step-number { font-weight: 600; }
.rl-step-kind { opacity: 0.6; }
.rl-step-state { flex: 1; font-style: italic; opacity: 0.8; }
.rl-mark-buttons { display: flex; gap: 4px; }
.gradio-container button.rl-mark { padding: 0 6px; font-size: 0.85em; border: 1px solid var(--border-color-primary);
  border-radius: 4px; background: var(--background-fill-secondary); cursor: pointer; }
.rl-step[data-mark="+"] .rl-mark-ok, .rl-step[data-mark="0"] .rl-mark-neutral,
.rl-step[data-mark="-"] .rl-mark-bad { font-weight: 700; background: var(--color-accent-soft, #dbeafe); }
#step-marks { display: none; }
/* The steps bar is one short row like the pair buttons: the verdict as small inline choices, small buttons. */
#steps-buttons { align-items: center; flex-wrap: nowrap; }
#steps-buttons button { max-height: 34px; }
#steps-final .wrap { flex-wrap: nowrap !important; gap: 4px !important; }
#steps-final label { padding: 2px 8px !important; min-height: 0 !important; font-size: 0.85em; white-space: nowrap; }
.rl-shortcuts kbd { border: 1px solid var(--border-color-primary); border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
/* The choice buttons stay on screen however far the page scrolls. Sticky positioning needs every
   ancestor up to the page to be non-scrolling: Gradio's container has overflow: hidden (which makes
   it a scroll container); clip cuts off the same overflow without being one. */
.gradio-container:has(#label-choice-bar) { overflow: clip; }
#label-choice-bar { position: sticky; bottom: 0; z-index: 100; background: var(--background-fill-primary);
  border-top: 1px solid var(--border-color-primary); padding: 4px 0; gap: 4px; max-height: 118px; }
#label-choice-bar > .row, #label-choice-bar .form { gap: 6px; }
#label-option-row { align-items: center; }
#label-option-row input[type=text], #rank-order input { padding: 4px 8px; }
/* A refusal or "Change it" stays one line inside the bar: the bar never grows over the answers. */
#label-status-row { align-items: center; min-height: 0; max-height: 30px; overflow: hidden; }
#label-status-row .prose, #label-status-row p { margin: 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  font-size: 0.9em; }
""" + _CODE_COLOURS
