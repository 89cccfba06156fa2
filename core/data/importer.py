"""Importing preference data into a store: all rows or none.

Every row is read and validated before anything is written; a single bad row rejects the whole
file with one line per problem (``file:line: field 'chosen' is missing``). The write is one
transaction, and every insert is idempotent, so importing the same rows again adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable

from core.accounts import Actor, Permission
from core.config_fields import ConfigError, config_field
from core.data.formats import ParsedRow, RowError, completion_content_hash, parse_row, parse_steps_row
from core.steps import StepError, StepRule
from core.data.readers import RawRow, UnreadableFile, read_rows
from storage.engine import Store
from storage.datasets import (
    DEFAULT_DATASET,
    DatasetError,
    check_dataset_name,
    dataset_by_name,
    fix_prompt_kind,
    fix_question,
    get_or_create_dataset,
)
from storage.ingest import CompletionRecord, IngestBatch, IngestCounts, PairRecord, PromptRecord, write_batch
from storage.models import Question
from storage.ranking import MAX_RANKED, MIN_RANKED, RankingConflict, RankingRecord
from storage.steps import StepItemRecord

QUESTIONS = tuple(question.value for question in Question)
ITEM_NAMES = {Question.PAIRWISE.value: "comparisons", Question.RANKING.value: "ranking items",
              Question.STEPS.value: "traces"}


@dataclass
class ImportConfig:
    """How to import one file or folder."""

    path: Path = config_field(
        help="file (.jsonl, .json, .csv, .parquet, optionally .gz) or a folder written by datasets.save_to_disk"
    )
    source: str = config_field(
        "", help="name recorded on new comparisons and as the annotator of imported labels; empty = import:<file name>"
    )
    dataset: str = config_field(
        DEFAULT_DATASET, help="dataset to import into (made on first use; its prompt kind is fixed by its first import)"
    )
    priority: int | None = config_field(
        None, help="queue priority of the new comparisons (higher is labeled first); empty = the dataset's default"
    )
    question: str | None = config_field(
        None, help="what the dataset asks: pairwise (which of two is better) or ranking (order 3 to 9 completions of "
        "a candidates row best to worst) or steps (mark each step of a reasoning trace: process supervision); empty = "
        "the dataset's question (pairwise for a new dataset)",
        choices=QUESTIONS,
    )
    step_separator: str = config_field(
        "", help="a new steps dataset's split rule: empty = blank-line paragraphs of the thinking, then the answer; "
        "'text:SEP' = at each SEP (e.g. 'text:Step'); 'regex:PATTERN' = at each match. Fixed when the dataset is made",
    )
    dry_run: bool = config_field(False, help="validate and count, but write nothing")
    ask_question: bool = config_field(
        False, help="for a new dataset and no --question, refuse candidates rows of 3 to 9 completions until the "
        "question is chosen (pairs of them, or a ranking?) instead of making it pairwise (the Data tab asks)")
    max_problems_shown: int = config_field(50, help="how many problems to list before summarising the rest")

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.source:
            self.source = f"import:{self.path.name}"
        if len(self.source) > 200:
            raise ConfigError(f"source name is {len(self.source)} characters long; use at most 200")
        if self.max_problems_shown < 1:
            raise ConfigError("max_problems_shown must be at least 1")
        if self.question is not None and self.question not in QUESTIONS:
            raise ConfigError(f"question must be one of {', '.join(QUESTIONS)}, got {self.question!r}")
        try:
            check_dataset_name(self.dataset)
        except DatasetError as error:
            raise ConfigError(str(error)) from None
        if self.step_separator:
            if self.question not in (None, Question.STEPS.value):
                raise ConfigError("step_separator is the split rule of a steps dataset; import with --question steps")
            try:
                StepRule.parse(self.step_separator)
            except StepError as error:
                raise ConfigError(str(error)) from None


class ImportRejected(Exception):
    """The file was refused; nothing was written. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], total: int | None = None, covered: int | None = None) -> None:
        self.problems = problems
        self.total = total if total is not None else len(problems)
        hidden = self.total - (covered if covered is not None else len(problems))
        lines = problems + ([f"... and {hidden} more problem(s)"] if hidden > 0 else [])
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ImportReport:
    source: str
    dataset: str
    rows: int
    kind: str  # "preference" | "candidates" | "empty"
    style: str  # "text" | "chat" | ""
    counts: IngestCounts | None  # None on a dry run
    dry_run: bool = False
    question: str = Question.PAIRWISE.value

    def summary(self) -> str:
        what = (f"{self.rows} {self.kind} rows" + (f" ({self.style})" if self.style else "")
                + f" for {'' if self.question == Question.PAIRWISE.value else self.question + ' '}dataset {self.dataset!r}")
        if self.counts is None:
            return f"{what} valid; dry run, nothing written"
        c = self.counts
        return (
            f"{what}: {c.comparisons_added} new {ITEM_NAMES[self.question]} "
            f"({c.comparisons_in_batch - c.comparisons_added} already "
            f"present), {c.prompts_added} new prompts, {c.completions_added} new completions, "
            f"{c.labels_added} new labels"
        )


@dataclass
class _Collected:
    rows: list[ParsedRow] = field(default_factory=list)
    # message -> the locations (file:line) it was found at, in order: a problem repeated on 300 rows is one line
    groups: dict[str, list[str | None]] = field(default_factory=dict)
    problem_count: int = 0
    first_kind: tuple[str, str, str] | None = None  # (kind, style, location)
    # (prompt hash, {chosen, rejected}) -> (location, chosen text) of the first occurrence
    pairs_seen: dict = field(default_factory=dict)


def _collect(raw_rows: Iterable[RawRow], max_problems_shown: int, question: str,
             step_rule: StepRule | None = None) -> _Collected:
    collected = _Collected()

    def problem(message: str, location: str | None = None) -> None:
        collected.problem_count += 1
        if message in collected.groups or len(collected.groups) < max_problems_shown:
            collected.groups.setdefault(message, []).append(location)

    try:
        for raw in raw_rows:
            if raw.error:
                problem(raw.error, raw.location)
                continue
            try:
                parsed = parse_steps_row(raw.value, step_rule) if question == Question.STEPS.value else parse_row(raw.value)
            except RowError as error:
                problem(str(error), raw.location)
                continue
            listed = raw.value.get("completions") if isinstance(raw.value, dict) else None
            if question == Question.RANKING.value and isinstance(listed, list) and len(listed) != len(parsed.completions):
                problem(f"the row lists {len(listed)} completions of which {len(parsed.completions)} "
                        "differ: a completion takes one place in a ranking, so remove the repeated one", raw.location)
                continue
            if question == Question.RANKING.value and not (
                    parsed.kind == "candidates" and MIN_RANKED <= len(parsed.completions) <= MAX_RANKED):
                problem(f"a ranking dataset takes candidates rows with {MIN_RANKED} to {MAX_RANKED} "
                        "different completions (prompt + completions); this row has "
                        + (f"{len(parsed.completions)}" if parsed.kind == "candidates" else "a chosen/rejected pair"),
                        raw.location)
                continue
            if collected.first_kind is None:
                collected.first_kind = (parsed.kind, parsed.style, raw.location)
            elif collected.first_kind[:2] != (parsed.kind, parsed.style):
                kind, style, where = collected.first_kind
                problem(
                    f"a {parsed.kind} row ({parsed.style}) in a file whose first row "
                    f"({where}) is a {kind} row ({style}); import one format per file", raw.location
                )
                continue
            if parsed.kind == "preference":
                chosen, rejected = (c.text for c in parsed.completions)
                key = (parsed.prompt_hash, frozenset((chosen, rejected)))
                first = collected.pairs_seen.setdefault(key, (raw.location, chosen))
                if first[1] != chosen:
                    problem(f"the same pair as {first[0]} with chosen and rejected swapped; "
                            "keep one of the two rows", raw.location)
                    continue
            collected.rows.append(parsed)
    except UnreadableFile as error:
        problem(str(error))
    return collected


def _grouped(message: str, locations: list[str | None]) -> str:
    """One line per kind of problem: ``FILE:3: message``, or ``FILE lines 1-300 (300 rows): message``."""
    if len(locations) == 1:
        return f"{locations[0]}: {message}" if locations[0] else message
    by_file: dict[str, list[int]] = {}
    others: list[str] = []
    for location in locations:
        path, _, number = (location or "").rpartition(":")
        digits = number.split()[-1] if number.split() else ""
        if path and digits.isdigit():
            by_file.setdefault(path, []).append(int(digits))
        elif location:
            others.append(location)
    if len(by_file) == 1 and not others:  # the usual case: one file, named first like every other problem
        (path, numbers), = by_file.items()
        return f"{path} lines {_ranges(numbers)} ({len(locations)} rows): {message}"
    where = [f"{path} {'lines' if len(numbers) > 1 else 'line'} {_ranges(numbers)}" for path, numbers in by_file.items()]
    return f"{len(locations)} rows: {message} ({'; '.join(where + others)})"


def _ranges(numbers: list[int]) -> str:
    """``1-3, 7, 9-10`` for [1, 2, 3, 7, 9, 10]."""
    spans: list[list[int]] = []
    for number in sorted(set(numbers)):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def _batch(source: str, rows: list[ParsedRow], question: str) -> IngestBatch:
    batch = IngestBatch(source=source)
    for row in rows:
        prompt_hash = row.prompt_hash
        batch.prompts.setdefault(prompt_hash, PromptRecord(prompt_hash, row.prompt_text, row.prompt_messages))
        hashes = []
        for candidate in row.completions:
            content_hash = completion_content_hash(candidate.text)
            hashes.append(content_hash)
            batch.completions.setdefault(
                (prompt_hash, content_hash),
                CompletionRecord(prompt_hash, content_hash, candidate.text, candidate.model),
            )
        if question == Question.STEPS.value:
            batch.steps.append(StepItemRecord(prompt_hash, hashes[0], tuple(tuple(span) for span in row.steps),
                                              tuple(row.step_marks) if row.step_marks is not None else None))
        elif question == Question.RANKING.value:
            batch.rankings.append(RankingRecord(prompt_hash, tuple(hashes)))
        elif row.kind == "preference":
            chosen, rejected = hashes
            batch.pairs.append(PairRecord(prompt_hash, chosen, rejected, first_wins=True, margin=row.margin))
        else:
            batch.pairs.extend(PairRecord(prompt_hash, first, second) for first, second in combinations(hashes, 2))
    return batch


def _is_new_dataset(store: Store, dataset: str) -> bool:
    with store.read() as session:
        return dataset_by_name(session, dataset) is None


def question_for_file(path: Path, *, rows_read: int = 200) -> str | None:
    """The question a file's rows suggest, from its first ``rows_read`` rows: "pairwise" for chosen/rejected
    pairs (or candidates of two), None when it holds candidates of 3 to 9 completions (pairs of them, or a
    ranking: the user must say) or cannot be read (the import will say why)."""
    kinds = set()
    try:
        for number, raw in enumerate(read_rows(path)):
            if number >= rows_read:
                break
            if raw.error:
                continue
            try:
                parsed = parse_row(raw.value)
            except RowError:
                continue
            many = parsed.kind == "candidates" and MIN_RANKED <= len(parsed.completions) <= MAX_RANKED
            kinds.add("several" if many else "pairs")
    except UnreadableFile:
        return None
    return Question.PAIRWISE.value if kinds == {"pairs"} else None


def _step_rule(store: Store, dataset: str, asked: str) -> StepRule:
    """The split rule of a steps import: the existing dataset's (refusing another one asked for), else the one
    asked for (paragraphs when none)."""
    with store.read() as session:
        existing = dataset_by_name(session, dataset)
        stored = existing.step_separator if existing is not None else None
        has_items = existing is not None and existing.prompt_kind is not None
    rule = StepRule.parse(asked or stored)
    if has_items and asked and StepRule.parse(asked) != StepRule.parse(stored):
        raise ImportRejected([f"dataset {dataset!r} splits traces {StepRule.parse(stored).describe()}, fixed when it was "
                              f"made; --step-separator {asked!r} asks another rule: import into a new dataset, or "
                              "leave --step-separator out; nothing was written"])
    return rule


def _question(store: Store, dataset: str, question: str | None) -> str:
    """The question rows are read for: the one asked for, else the dataset's (pairwise for a new one)."""
    if question:
        return question
    with store.read() as session:
        existing = dataset_by_name(session, dataset)
        return existing.question if existing is not None else Question.PAIRWISE.value


def _import(store: Store, raw_rows: Iterable[RawRow], *, source: str, dataset: str, priority: int | None,
            question: str | None, dry_run: bool, max_problems_shown: int, empty_message: str,
            shown_name: str, ask_question: bool = False, step_separator: str = "") -> ImportReport:
    asked = question
    question = _question(store, dataset, question)
    if step_separator and question != Question.STEPS.value:
        raise ImportRejected([f"--step-separator is the split rule of a steps dataset, and {dataset!r} asks the "
                              f"{question} question; nothing was written"])
    step_rule = _step_rule(store, dataset, step_separator) if question == Question.STEPS.value else None
    collected = _collect(raw_rows, max_problems_shown, question, step_rule)
    if collected.problem_count:
        raise ImportRejected([_grouped(message, where) for message, where in collected.groups.items()],
                             collected.problem_count, covered=sum(map(len, collected.groups.values())))
    if not collected.rows:
        raise ImportRejected([empty_message])
    if ask_question and asked is None and _is_new_dataset(store, dataset) and any(
            row.kind == "candidates" and MIN_RANKED <= len(row.completions) <= MAX_RANKED for row in collected.rows):
        raise ImportRejected([f"{shown_name}: its rows are candidates with {MIN_RANKED} to {MAX_RANKED} completions, which "
                              f"the new dataset {dataset!r} can ask about as pairs (pairwise: each pair of them) or as "
                              "one order (ranking): choose the Question and import again; nothing was written"])
    kind, style, _ = collected.first_kind
    what = f"{shown_name} ({len(collected.rows)} rows)"
    if dry_run:
        with store.read() as session:
            existing = dataset_by_name(session, dataset)
            try:
                if existing is not None and existing.prompt_kind not in (None, style):
                    fix_prompt_kind(session, existing, style, what=what)
                if existing is not None and existing.question != question and existing.prompt_kind is not None:
                    fix_question(session, existing, question, what=what)
            except DatasetError as error:
                raise ImportRejected([str(error)]) from None
        return ImportReport(source, dataset, len(collected.rows), kind, style, None, dry_run=True, question=question)
    batch = _batch(source, collected.rows, question)
    try:
        with store.write() as session:
            target = get_or_create_dataset(session, dataset, question)
            fix_question(session, target, question, what=what)
            if step_rule is not None and target.prompt_kind is None:
                target.step_separator = step_rule.stored  # fixed by the first import, as the prompt kind is
                session.add(target)
            fix_prompt_kind(session, target, style, what=what)
            counts = write_batch(session, batch, dataset_id=target.id,
                                 priority=target.default_priority if priority is None else priority)
    except (DatasetError, RankingConflict) as error:
        raise ImportRejected([str(error)]) from None
    return ImportReport(source, dataset, len(collected.rows), kind, style, counts, question=question)


def import_file(store: Store, config: ImportConfig) -> ImportReport:
    """Validate every row of ``config.path``, then write them in one transaction.

    Raises ``ImportRejected`` (nothing written) when any row or the file itself is bad.
    """
    return _import(
        store,
        read_rows(config.path),
        source=config.source,
        dataset=config.dataset,
        priority=config.priority,
        question=config.question,
        dry_run=config.dry_run,
        max_problems_shown=config.max_problems_shown,
        empty_message=f"{config.path}: no rows to import (the file is empty)",
        shown_name=config.path.name,
        ask_question=config.ask_question,
        step_separator=config.step_separator,
    )


def import_rows(store: Store, rows: Iterable[Any], *, source: str, dataset: str = DEFAULT_DATASET,
                priority: int | None = None, question: str | None = None, step_separator: str = "") -> ImportReport:
    """Import rows already in memory (demo data, API callers) with the same checks as a file."""
    raw_rows = (RawRow(f"{source}:{number}", value=row) for number, row in enumerate(rows, start=1))
    return _import(store, raw_rows, source=source, dataset=dataset, priority=priority, question=question, dry_run=False,
                   max_problems_shown=50, empty_message=f"{source}: no rows to import", shown_name=source,
                   step_separator=step_separator)


def question_for_upload(store: Store, actor: Actor, path: Path) -> str | None:
    """``question_for_file`` for a user of the web app who may import (it reads the file)."""
    actor.require(Permission.IMPORT)
    return question_for_file(path)


def import_upload(store: Store, actor: Actor, config: ImportConfig) -> ImportReport:
    """``import_file`` for a user of the web app, who needs the import permission."""
    actor.require(Permission.IMPORT)
    return import_file(store, config)
