"""Turning results into Markdown that is safe to render.

Text that came from a file or a model is untrusted: it goes into fenced code blocks (rendered as
text, never as HTML) with a fence longer than any run of backticks inside it.
"""

from __future__ import annotations

import html
import re

from core.data.summary import StoreCounts

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def inline_text(text: str) -> str:
    """A user-supplied string (a model name, an error that quotes input) inside Markdown: HTML
    escaped and Markdown's specials backslashed, so it shows as typed: no tag, link or image."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(str(text), quote=False))


def plot_text(text: str) -> str:
    """A user-supplied string in a plotly figure (legend, hover, annotation), which renders a subset
    of HTML (<b>, <a href>, <span style>): escaped, so it shows as text."""
    return html.escape(str(text))


def code_block(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def counts_markdown(counts: StoreCounts) -> str:
    waiting = counts.comparisons - counts.labeled_comparisons
    return (
        "| prompts | completions | comparisons | labeled | waiting for a label | labels | active logins |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {counts.prompts} | {counts.completions} | {counts.comparisons} | {counts.labeled_comparisons} "
        f"| {waiting} | {counts.labels} | {counts.annotators} |"
    )
