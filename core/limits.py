"""Every cap on what a user can send, in one place, each with the reason for its size.

A request that passes a cap is refused with a message that names the cap and its value, before
any work starts; nothing a user controls can make the server allocate memory that grows with the
square of a length (see ``scoring`` for the token caps that guard attention).
"""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


# --- labeling
MAX_COMMENT_CHARS = 5_000  # a label's comment: a few paragraphs, never a pasted document

# --- import (CLI and upload)
# Bytes a file may hold once decompressed. A compressed file is measured as a stream before it is
# parsed, so a small file that inflates to gigabytes is refused holding one chunk in memory.
MAX_IMPORT_BYTES = _env_int("REWARDLAB_MAX_IMPORT_MB", 512) * 1024 * 1024
# One JSON Lines line (a row): three fields at the 1,000,000-character field cap, UTF-8, with room.
MAX_IMPORT_LINE_BYTES = 16 * 1024 * 1024
# A file uploaded through the page (Gradio's max_file_size): `python app.py serve --max-upload-mb`.
DEFAULT_MAX_UPLOAD_MB = 200

# --- inspection (Inspect tab)
MAX_INSPECT_RESPONSES = 9  # responses side by side in one request: every completion of a ranking item
MAX_INSPECT_CHARS = 200_000  # characters per response, checked before tokenizing
# Tokens per scored example (prompt + response): a reasoning trace runs to tens of thousands. The
# trajectory's memory is linear in the length (one cached forward, then probes in chunks), so the
# cap bounds the time a request takes, not its memory.
MAX_INSPECT_TOKENS = _env_int("REWARDLAB_MAX_INSPECT_TOKENS", 32_768)

# --- diagnostics
MAX_DIAGNOSED_PAIRS = 2_000  # most recent labeled pairs scored in one diagnosis

# --- training
# Responses of one prompt scored together in grouped training (group_by_prompt): InstructGPT ranks
# K = 4-9 completions, so a ranking fits whole; a prompt with more (many pairs over one shared prompt)
# is cut into groups of at most this many, so one prompt never makes a batch of unbounded size.
MAX_GROUP_RESPONSES = 16

# --- reward server (python app.py serve-rm): what one HTTP request may carry
# Completions per request: a GRPO step sends its group (8-64 completions); 256 leaves room for a
# whole rollout batch while one request's tensors stay small.
MAX_SERVE_TEXTS = _env_int("REWARDLAB_MAX_SERVE_TEXTS", 256)
# Characters per prompt or completion, checked before tokenizing (the Inspect cap: a long reasoning trace).
MAX_SERVE_CHARS = 200_000
# Bytes of one request body, counted while it streams in (a lying Content-Length cannot get past it).
MAX_SERVE_BODY_BYTES = _env_int("REWARDLAB_MAX_SERVE_BODY_MB", 16) * 1024 * 1024
# Completions per request that may ask for per-token trajectories (each costs a pass over its tokens).
MAX_SERVE_TRAJECTORY_TEXTS = 8
# Requests waiting to be scored: past this the server answers 503 with Retry-After instead of
# holding ever more bodies in memory (at most this many times MAX_SERVE_BODY_BYTES).
MAX_SERVE_QUEUE = 256
# Chat messages in one prompt, and nesting of a JSON body: bounded like every other count.
MAX_SERVE_MESSAGES = 256
