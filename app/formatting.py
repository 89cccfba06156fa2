"""Turning results into Markdown that is safe to render.

Text that came from a file or a model is untrusted: it goes into fenced code blocks (rendered as
text, never as HTML) with a fence longer than any run of backticks inside it.
"""

from __future__ import annotations

import re

from core.data.summary import StoreCounts


def code_block(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def counts_markdown(counts: StoreCounts) -> str:
    waiting = counts.comparisons - counts.labeled_comparisons
    return (
        "| prompts | completions | comparisons | labeled | waiting for a label | labels | annotators |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {counts.prompts} | {counts.completions} | {counts.comparisons} | {counts.labeled_comparisons} "
        f"| {waiting} | {counts.labels} | {counts.annotators} |"
    )
