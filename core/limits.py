"""Every cap on what a user can send, and every bound on what the app holds, in one place, each with
the reason for its size; ``CAPS`` at the end says what a user sees when one refuses.

A request that passes a cap is refused with a message that names the cap and its value, before
any work starts; nothing a user controls can make the server allocate memory that grows with the
square of a length (see ``scoring`` for the token caps that guard attention). storage/ cannot
import core/, so the bounds of dataset settings are named where they are enforced (storage/) and
listed in ``STORAGE_BOUNDS``; tests/test_limits.py fails on a cap defined anywhere else.
"""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


# --- accounts
MIN_PASSWORD_LENGTH = 8  # NIST SP 800-63B's minimum for a password a user chooses
MAX_PASSWORD_CHARS = 1_024  # Argon2 hashes any length; a megabyte password is a denial of service, not a secret
MAX_SESSION_AGE_SECONDS = 7 * 24 * 3600  # a login lasts a week (across restarts), then asks again
# Password checks (Argon2id: ~100 ms of CPU and 64 MiB each) running at once, whoever asks: a flood of
# logins from many addresses and names waits here instead of taking every core and gigabytes of memory.
MAX_CONCURRENT_PASSWORD_CHECKS = 2
MAX_PASSWORD_CHECK_WAIT_SECONDS = 5  # how long a login waits for a free check before HTTP 503

# --- labeling
MAX_COMMENT_CHARS = 5_000  # a label's comment: a few paragraphs, never a pasted document
# Pygments' lexers are regular expressions, some of which backtrack (super-linear time) on
# pathological input, and highlighted HTML is ~15 times the size of the code; a completion may be
# 1,000,000 characters. 20,000 is a few hundred lines, more than an annotator reads closely.
MAX_HIGHLIGHT_CHARS = 20_000
# Markdown rendering of one text on the Label tab (longer texts are shown as plain text): on this
# project's 2-core machine adversarial Markdown ("[[[[...", a long table) renders at about
# 100,000 characters a second, and every comparison shown renders its texts again. 200,000
# characters is a 50,000-token reasoning trace.
MAX_MARKDOWN_CHARS = 200_000

# --- the web app's HTTP guard (app/http_guard.py)
MAX_EVENT_BODY_BYTES = 8 * 1024 * 1024  # an event's inputs: the Inspect tab's responses at their caps fit
MAX_LOGIN_BODY_BYTES = 16 * 1024  # a login form: a name and a password
MAX_SESSIONS_REMEMBERED = 200_000  # session -> user entries the guard keeps (oldest forgotten first)

# --- record browser (Data tab)
MAX_PAGE_SIZE = 100  # rows per page
MAX_SEARCH_CHARS = 200  # a search string
MAX_BULK_IDS = 10_000  # records one bulk action (send back, archive, priority) touches
MAX_PRIORITY = 1_000_000  # |priority| of a record

# --- import (CLI and upload): one row
MAX_TEXT_CHARS = 1_000_000  # a prompt or a completion
MAX_MODEL_NAME_CHARS = 200  # the model named on a side
MAX_COMPLETIONS_PER_ROW = 64  # completions of a candidates row
MAX_FIELDS_PER_ROW = 1_000  # keys of one JSON row

# --- process supervision (steps datasets): one trace
# PRM800K's longest solutions have ~50 steps and a 32k-token reasoning trace split at blank lines a
# few hundred; 200 steps is more than an annotator marks in one sitting and keeps the per-step views small.
MAX_STEPS_PER_TRACE = 200
MAX_STEP_CHARS = 50_000  # one step: a long paragraph of a proof, never a whole trace in one step
MAX_STEP_RULE_CHARS = 200  # a dataset's step separator (a string or a regular expression)
# Agreement on steps is withheld below these: kappa on fewer than 30 doubly-reviewed steps, or first-error
# agreement on fewer than 10 doubly-marked traces, moves by more than 0.1 with one vote (noise, not a verdict).
MIN_AGREEMENT_STEPS = 30
MIN_AGREEMENT_TRACES = 10

# --- import (CLI and upload): the file
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

MAX_CACHED_MODELS = 4  # reward models the app keeps loaded for Inspect (least recently used dropped)
MAX_NAMES_LISTED = 30  # registered model names listed in an "unknown model" error

# --- diagnostics and the loop
MAX_DIAGNOSED_PAIRS = 2_000  # most recent labeled pairs scored in one diagnosis
MAX_EVALUATED_PAIRS = 2_000  # the newest labeled pairs a loop evaluation scores
MAX_ACQUISITION_ROWS_SHOWN = 50  # the loop page lists why each chosen pair is served: the newest prompts' first
MAX_RETRAIN_EVERY = 1_000_000  # the loop's "retrain every N labels"
MIN_ENSEMBLE_SIZE, MAX_ENSEMBLE_SIZE = 2, 16  # bootstrap heads of the loop's ensemble
# Held-out pairs the loop judges a new version on (both models scoring the same pairs): the dataset's
# setting may be 5 to 100,000 (default 30); fewer than the setting and the current model is kept.
MIN_HELDOUT_PAIRS, MAX_HELDOUT_PAIRS = 5, 100_000
MIN_STEPS_FOR_ETA = 2  # measured training steps (after the first, which carries warm-up) before a job shows an ETA
MIN_VERDICT_PAIRS = 30  # pairs below which the confound baselines are shown but no verdict is drawn
MIN_ENSEMBLE_PAIRS = 8  # labeled prompts below which the heads would fit noise: margin order meanwhile
# Labels an annotator needs (of the kind a flag reads) before the Team tab's competence flags judge them.
MIN_COMPETENCE_LABELS = 20

# --- training
# Responses of one prompt scored together in grouped training (group_by_prompt): InstructGPT ranks
# K = 4-9 completions, so a ranking fits whole; a prompt with more (many pairs over one shared prompt)
# is cut into groups of at most this many, so one prompt never makes a batch of unbounded size.
MAX_GROUP_RESPONSES = 16
# The job forker (core/jobs/forking.py, machines without a GPU): it exits after this long without a job, so its
# ~600 MB of imported modules do not sit beside an app nobody trains in; the loop's rounds come well within it.
MAX_FORKER_IDLE_SECONDS = 600
# How long the scheduler waits in all for the forker's answer (its imports on the first job: ~9 CPU-s, longer on a
# busy machine; a second forker included if the first died) before starting the job fresh; under
# storage.jobs.STARTING_GRACE (60 s), after which a claimed job with no process counts as interrupted.
MAX_FORKER_REPLY_SECONDS = 45

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
# Scoring requests in flight at once (reading their body, formatting, queued): past it, 503 before the body is
# read, so bodies held in memory are at most this many times MAX_SERVE_BODY_BYTES.
MAX_SERVE_IN_FLIGHT = 64
# Requests formatting and tokenizing at once (each holds its texts' encodings): the rest wait their turn.
MAX_SERVE_PREPARING = 2
MAX_SERVE_BODY_SECONDS = 60  # a whole request body must arrive within this (a trickling body holds a slot)
MAX_SERVE_IDLE_SECONDS = 15  # a connection that has not sent a whole request head by then is closed
# Chat messages in one prompt, and nesting of a JSON body: bounded like every other count.
MAX_SERVE_MESSAGES = 256
# A chat prompt nests 3 deep, token ids 2: anything far deeper is not a request this server takes,
# and Python's json module would recurse into it.
MAX_JSON_DEPTH = 16
MAX_SERVED_MODELS = 4  # an ensemble of more is rarely worth its memory; Inspect allows as many
MAX_REFERENCE_SAMPLES = 256  # samples a server fits its normalizers and parity check on

# --- where each cap is enforced lives in storage/ (dataset settings): named there, listed here
STORAGE_BOUNDS = (
    "storage.queue.MAX_CLAIM_LOCK_WAIT_MS",
    "storage.datasets.MAX_GUIDELINES_CHARS",
    "storage.datasets.MIN_OVERLAP",
    "storage.datasets.MAX_OVERLAP",
    "storage.datasets.MIN_LEASE_SECONDS",
    "storage.datasets.MAX_LEASE_SECONDS",
    "storage.datasets.MAX_DEFAULT_PRIORITY",
    "storage.settings.MAX_COMPETENCE_REFIT_EVERY",
    "storage.ranking.MIN_RANKED",
    "storage.ranking.MAX_RANKED",
)

# What a user sees when a cap refuses (the message each check raises, with its value filled in).
CAPS: dict[str, str] = {
    "MIN_PASSWORD_LENGTH": "the password must be at least 8 characters long",
    "MAX_PASSWORD_CHARS": "the password is longer than 1,024 characters",
    "MAX_SESSION_AGE_SECONDS": "(not refused) after 7 days the page asks for a login again",
    "MAX_CONCURRENT_PASSWORD_CHECKS": "(queued) a login waits for one of 2 password checks",
    "MAX_PASSWORD_CHECK_WAIT_SECONDS": "HTTP 503 with Retry-After: too many logins at once: try again in a few seconds",
    "MIN_ENSEMBLE_PAIRS": "(not refused) the rescore job's note: ensemble uncertainty needs labels on 8 prompts within max_length, DATASET has N: ordered by the model's margin until it has",
    "MAX_COMMENT_CHARS": "the comment is N characters; the limit is 5,000. Shorten it",
    "MAX_HIGHLIGHT_CHARS": "(not refused) a longer code block is shown without highlighting",
    "MAX_MARKDOWN_CHARS": "(not refused) a longer text is shown as plain text, with a note",
    "MAX_EVENT_BODY_BYTES": "HTTP 413: the request is larger than 8 MiB",
    "MAX_LOGIN_BODY_BYTES": "HTTP 413: the login form is too large",
    "MAX_SESSIONS_REMEMBERED": "(not refused) the oldest session owners are forgotten; those sessions log in again",
    "MAX_PAGE_SIZE": "page size must be between 1 and 100, got N",
    "MAX_SEARCH_CHARS": "the search filter is N characters; the limit is 200",
    "MAX_BULK_IDS": "N comparisons selected; the limit is 10,000 per action",
    "MAX_PRIORITY": "priority must be between -1000000 and 1000000, got N",
    "MAX_TEXT_CHARS": "line N: field 'chosen' is N characters long; the limit is 1,000,000",
    "MAX_MODEL_NAME_CHARS": "line N: field 'completions[i].model' must be a string of at most 200 characters",
    "MAX_COMPLETIONS_PER_ROW": "line N: field 'completions' has N items; the limit is 64",
    "MAX_FIELDS_PER_ROW": "line N: row has N fields; a preference row has a handful (at most 1,000)",
    "MAX_STEPS_PER_TRACE": "line N: the trace has N steps; the limit is 200 (split it into fewer, longer steps)",
    "MAX_STEP_CHARS": "line N: field 'steps[i]' is N characters long; the limit is 50,000",
    "MIN_AGREEMENT_STEPS": "(withheld) Team tab: 'per-step kappa: withheld, N steps reviewed by 2+ people, fewer than 30'",
    "MIN_AGREEMENT_TRACES": "(withheld) Team tab: 'first-error agreement: withheld, N traces marked by 2+ people, fewer than 10'",
    "MAX_STEP_RULE_CHARS": "the step separator is N characters long; the limit is 200",
    "MAX_IMPORT_BYTES": "FILE: decompresses to more than 512 MiB, the import limit ($REWARDLAB_MAX_IMPORT_MB)",
    "MAX_IMPORT_LINE_BYTES": "line N: the line is longer than 16 MiB",
    "DEFAULT_MAX_UPLOAD_MB": "Gradio refuses the upload: file exceeds the maximum size (serve --max-upload-mb)",
    "MAX_INSPECT_RESPONSES": "give at most 9 responses at once",
    "MAX_INSPECT_CHARS": "response N is N characters; Inspect takes at most 200,000",
    "MAX_INSPECT_TOKENS": "response N is N tokens with its prompt under MODEL; Inspect scores at most 32,768 tokens per response ($REWARDLAB_MAX_INSPECT_TOKENS)",
    "MAX_CACHED_MODELS": "(not refused) the least recently used model is unloaded",
    "MAX_NAMES_LISTED": "(not refused) the unknown-model error lists the first 30 names",
    "MAX_DIAGNOSED_PAIRS": "(not refused) the diagnosis scores the newest 2,000 pairs and says so",
    "MAX_EVALUATED_PAIRS": "(not refused) a loop evaluation scores the newest 2,000 pairs",
    "MAX_ACQUISITION_ROWS_SHOWN": "(not refused) the loop page lists 50 chosen pairs and says how many more there are",
    "MAX_RETRAIN_EVERY": "retrain every N labels needs N from 1 to 1000000 (0 turns it off)",
    "MIN_COMPETENCE_LABELS": "(withheld) a competence flag on fewer labels shows as 'near-random (n=N < 20)' under withheld",
    "storage.settings.MAX_COMPETENCE_REFIT_EVERY": "refit every N labels needs N from 1 to 1,000,000 (0 turns it off), got N",
    "MIN_STEPS_FOR_ETA": "(withheld) 'time left: measuring the first steps' until 2 steps are measured",
    "MIN_VERDICT_PAIRS": "(withheld) 'no verdict on confounds: N pair(s), fewer than 30'",
    "MIN_HELDOUT_PAIRS": "the minimum of held-out pairs is 5 to 100000 (a verdict on fewer is noise)",
    "MAX_HELDOUT_PAIRS": "the minimum of held-out pairs is 5 to 100000 (a verdict on fewer is noise)",
    "MIN_ENSEMBLE_SIZE": "an ensemble has 2 to 16 heads",
    "MAX_ENSEMBLE_SIZE": "an ensemble has 2 to 16 heads",
    "MAX_FORKER_IDLE_SECONDS": "(not refused) an idle job forker exits after 10 minutes; the next job starts a new one",
    "MAX_FORKER_REPLY_SECONDS": "(not refused) a forker (and its one replacement) silent for 45 s in all is stopped; the job starts fresh",
    "MAX_GROUP_RESPONSES": "(not refused) a prompt with more responses is cut into groups of 16",
    "MAX_SERVE_TEXTS": "HTTP 413: completions: N items; a request holds at most 256 ($REWARDLAB_MAX_SERVE_TEXTS): split it",
    "MAX_SERVE_CHARS": "HTTP 413: completions[i]: N characters; at most 200,000 per text",
    "MAX_SERVE_BODY_BYTES": "HTTP 413: the request body is larger than 16 MiB",
    "MAX_SERVE_TRAJECTORY_TEXTS": "HTTP 400: trajectory: a request asking for trajectories may hold at most 8 completions, got N; split it",
    "MAX_SERVE_QUEUE": "HTTP 503 with Retry-After: the server is busy",
    "MAX_SERVE_IN_FLIGHT": "HTTP 503 with Retry-After: the server is busy: 64 requests are in flight; retry shortly",
    "MAX_SERVE_PREPARING": "(queued) a request waits for one of 2 formatting slots",
    "MAX_SERVE_BODY_SECONDS": "HTTP 408: the body took longer than 60 s to arrive",
    "MAX_SERVE_IDLE_SECONDS": "(connection closed) a connection silent for 15 s before its request head",
    "MAX_SERVE_MESSAGES": "HTTP 413: prompts[i]: N messages; at most 256",
    "MAX_JSON_DEPTH": "HTTP 400: the body nests JSON deeper than 16 levels; no request of this server does",
    "MAX_SERVED_MODELS": "N models given; an ensemble holds at most 4",
    "MAX_REFERENCE_SAMPLES": "(not refused) normalizers and the parity check use the first 256 samples",
    "storage.datasets.MAX_GUIDELINES_CHARS": "the guidelines are N characters; the limit is 100,000",
    "storage.datasets.MIN_OVERLAP": "overlap must be between 1 and 10 annotators per comparison",
    "storage.datasets.MAX_OVERLAP": "overlap must be between 1 and 10 annotators per comparison",
    "storage.queue.MAX_CLAIM_LOCK_WAIT_MS": "(not refused) on PostgreSQL a claim waits at most 500 ms for a comparison "
                                            "another annotator holds this instant, then says nothing is left",
    "storage.datasets.MIN_LEASE_SECONDS": "the lease must be between 10 and 86400 seconds",
    "storage.datasets.MAX_LEASE_SECONDS": "the lease must be between 10 and 86400 seconds",
    "storage.datasets.MAX_DEFAULT_PRIORITY": "the default priority must be between -1000000 and 1000000",
    "storage.ranking.MIN_RANKED": "line N: a candidates row needs 3 to 9 completions to be ranked",
    "storage.ranking.MAX_RANKED": "groups has N lists; an item has at most 9 completions",
}
