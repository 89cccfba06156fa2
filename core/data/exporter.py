"""Exporting labels as a TRL-ready preference dataset.

One row per comparison: ``prompt``, ``chosen``, ``rejected`` (conversational when the prompt was
chat messages) and ``margin`` when any label carries a strength or a source margin. Several
annotators are folded by majority vote; ties, both-bad, skip-only and split votes are left out and
counted. The output is deterministic: the same store and config give the same bytes.

The rows come from ``core.preferences`` (the votes-to-pairs rules), the same function training takes
its data snapshot through, so what trains is exactly what an export would write; this module writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from core.accounts import Actor, Permission
from core.config_fields import ConfigError, config_field
from core.preferences.competence import AGGREGATES
from core.preferences.pairs import NothingToExport, build_preference_rows, resolve_datasets, split_rows
from core.preferences.rankings import RANKING_PAIRS, ranked_format_rows
from core.preferences.stepwise import NEUTRAL_RULES, build_stepwise_rows
from storage.datasets import DatasetError
from storage.engine import Store
from storage.queries import comparison_contents
from storage.ranking import items_of, rankings_by_item

EXPORT_FORMATS = ("jsonl", "parquet", "hf", "csv", "ranked", "stepwise")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PROMPT_FORMATS = ("auto", "text", "chat")


@dataclass
class ExportConfig:
    """What to export and where."""

    out: Path = config_field(help="output file (jsonl, parquet) or folder (hf, or any format with --test-size)")
    format: str = config_field(
        "jsonl", help="jsonl, parquet, hf (datasets.save_to_disk folder), csv (for spreadsheets: cells that would "
        "run as formulas get a leading apostrophe, so use jsonl/parquet/hf to train), or ranked (JSON Lines, one row "
        "per ranked item of ranking datasets: prompt, completions, consensus groups, each annotator's ranking), or "
        "stepwise (JSON Lines in TRL's stepwise supervision format, one row per marked trace of steps datasets: prompt, "
        "completions = the steps, labels = a bool per step folded by majority)",
        choices=EXPORT_FORMATS)
    neutral: str = config_field(
        "correct", help="stepwise: a step folded to neutral counts as correct, wrong, or drop (its trace is left out)",
        choices=NEUTRAL_RULES)
    test_size: float = config_field(0.0, help="fraction of rows held out as a 'test' split, 0 to 0.5")
    seed: int = config_field(0, help="seed of the train/test split")
    prompt_format: str = config_field(
        "auto", help="auto (refuse a mix of text and chat prompts), text or chat (only those)", choices=PROMPT_FORMATS
    )
    since: datetime | None = config_field(None, help="only labels created or changed at or after this time (ISO date)")
    annotators: list[str] | None = config_field(
        None, help="only labels by these user names (import sources like import:file.jsonl included)"
    )
    dataset: list[str] | None = config_field(
        None, help="only these datasets (several of one prompt kind may be combined); empty = all datasets"
    )
    ranking_pairs: str = config_field(
        "all", help="pairs from ranking datasets: all (every pair, C(K,2) per ranking), adjacent (neighbouring places) "
        "or best_vs_rest (the best place against each other completion); each pair weighs 1/(pairs of its item)",
        choices=RANKING_PAIRS)
    ranking_margin: bool = config_field(
        False, help="give pairs from rankings a margin: their place gap / (completions - 1)")
    aggregate: str = config_field(
        "majority", help="how several annotators' labels decide a pair: majority (vote count), dawid-skene or mace "
        "(an annotator model fitted per dataset weighs each label by its author's estimated competence)",
        choices=AGGREGATES)
    soft_labels: bool = config_field(
        False, help="with --aggregate dawid-skene or mace: a weight column holding each pair's net posterior "
        "preference P(chosen) - P(rejected) (times a ranking pair's 1/pairs of its item)")
    with_metadata: bool = config_field(
        False, help="add the evidence behind each row: comparison id, dataset, source, the models of each side, and "
        "every label (annotator, vote, strength, comment, seconds, time); TRL ignores the extra columns"
    )

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if self.ranking_pairs not in RANKING_PAIRS:
            raise ConfigError(f"ranking_pairs must be one of {', '.join(RANKING_PAIRS)}, got {self.ranking_pairs!r}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if self.soft_labels and self.aggregate == "majority":
            raise ConfigError("soft labels are an annotator model's posterior: add --aggregate dawid-skene or mace")
        if self.format in ("ranked", "stepwise") and self.test_size:
            raise ConfigError(f"the {self.format} format writes one file; leave test_size at 0")
        if self.neutral not in NEUTRAL_RULES:
            raise ConfigError(f"neutral must be one of {', '.join(NEUTRAL_RULES)}, got {self.neutral!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if not 0.0 <= self.test_size <= 0.5:
            raise ConfigError(f"test_size must be between 0 and 0.5 (a fraction of the rows), got {self.test_size}")


def build_ranked_rows(store: Store, *, since: datetime | None = None, annotators: list[str] | None = None,
                      datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of ``--format ranked``: one per ranked item of the ranking datasets among ``datasets``."""
    try:
        dataset_ids, _ = resolve_datasets(store, datasets)
    except DatasetError as error:
        raise NothingToExport(str(error)) from None
    with store.read() as session:
        item_ids = [item_id for item_id, _, _ in items_of(session, dataset_ids)]
        if not item_ids:
            raise NothingToExport("the ranked format is for ranking datasets, and none is among those exported; "
                                  "choose a ranking dataset (--dataset NAME) or another format")
        rankings = rankings_by_item(session, dataset_ids, since=since, annotators=annotators)
        contents = comparison_contents(session, sorted(rankings))
        return ranked_format_rows(session, contents, rankings, sorted(rankings))


@dataclass(frozen=True)
class ExportReport:
    out: Path
    train_rows: int
    test_rows: int
    left_out: dict[str, int]
    content_hash: str
    decided_by: str | None = None  # the annotator model's fit, in words (None: majority vote)

    def summary(self) -> str:
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items())) or "none"
        split = f" + {self.test_rows} test" if self.test_rows else ""
        decided = f"; pairs decided by {self.decided_by}" if self.decided_by else ""
        return f"wrote {self.train_rows} train{split} rows to {self.out}; left out: {left}{decided}"


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def spreadsheet_safe(value: Any) -> str:
    """A CSV cell that a spreadsheet shows as text: chat messages as JSON, and a leading apostrophe
    on anything that starts like a formula (``=cmd|' /C calc'!A0`` would otherwise run)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    columns = list(rows[0]) if rows else ["prompt", "chosen", "rejected"]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([spreadsheet_safe(row[c]) if not isinstance(row[c], float) else row[c] for c in columns])


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def _write_outputs(config: ExportConfig, train: list, test: list, staging: Path) -> Path:
    """Write into ``staging`` and return the file or folder to move into place."""
    if config.format == "hf":
        import datasets

        datasets.disable_progress_bars()
        splits = {"train": datasets.Dataset.from_list(train)}
        if test:
            splits["test"] = datasets.Dataset.from_list(test)
        target = staging / "dataset"
        datasets.DatasetDict(splits).save_to_disk(str(target))
        return target
    writer = {"jsonl": _write_jsonl, "parquet": _write_parquet, "csv": _write_csv}[config.format]
    if config.test_size == 0:
        target = staging / "export"
        writer(train, target)
        return target
    target = staging / "dataset"
    target.mkdir()
    writer(train, target / f"train.{config.format}")
    writer(test, target / f"test.{config.format}")
    return target


STAGING_PREFIX = ".rewardlab-export-"


def _remove_abandoned_staging(folder: Path) -> None:
    """Remove staging folders left by an export that was killed: their name carries the exporting
    process's id, and that process is gone."""
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        pid = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def export_dataset(store: Store, config: ExportConfig) -> ExportReport:
    """Write the preference dataset described by ``config``; the output appears whole or not at all.

    Raises ``NothingToExport`` when no comparison has a majority preference.
    """
    if config.format == "ranked":
        return _export_ranked(store, config)
    if config.format == "stepwise":
        return _export_stepwise(store, config)
    prepared = build_preference_rows(
        store, prompt_format=config.prompt_format, since=config.since, annotators=config.annotators,
        datasets=config.dataset, with_metadata=config.with_metadata, ranking_pairs=config.ranking_pairs,
        ranking_margin=config.ranking_margin, aggregate=config.aggregate, soft_labels=config.soft_labels,
    )
    if not prepared.rows:
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(prepared.left_out.items())) or "no labels at all"
        raise NothingToExport(f"nothing to export: no comparison has a majority preference ({left})")
    train, test = split_rows(prepared.rows, config.test_size, config.seed)
    if config.test_size > 0 and not test:
        raise NothingToExport("only one row to export: a test split needs at least two (use --test-size 0)")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(config.out.parent)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=config.out.parent) as staging:
        written = _write_outputs(config, train, test, Path(staging))
        if config.out.is_dir() and not config.out.is_symlink():
            shutil.rmtree(config.out)
        os.replace(written, config.out)
    return ExportReport(config.out, len(train), len(test), dict(prepared.left_out), prepared.content_hash,
                        prepared.fit.description() if prepared.fit is not None else None)


def build_stepwise_export(store: Store, config: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of ``--format stepwise`` and what was left out, from the steps datasets among those exported."""
    try:
        dataset_ids, _ = resolve_datasets(store, config.dataset)
    except DatasetError as error:
        raise NothingToExport(str(error)) from None
    prepared = build_stepwise_rows(store, dataset_ids, neutral=config.neutral, since=config.since,
                                   annotators=config.annotators)
    if not prepared.traces and not prepared.left_out:
        raise NothingToExport("the stepwise format is for steps datasets, and none is among those exported; choose a "
                              "steps dataset (--dataset NAME) or another format")
    rows = []
    for trace in prepared.traces:
        row = trace.row()
        if config.with_metadata:
            votes = prepared.votes[trace.item_id]
            row.update({"item_id": trace.item_id, "dataset": trace.dataset,
                        "step_votes": {name: vote["marks"] for name, vote in sorted(votes.items())},
                        "final_votes": {name: vote.get("final") for name, vote in sorted(votes.items())}})
        rows.append(row)
    return rows, dict(prepared.left_out)


def _export_stepwise(store: Store, config: ExportConfig) -> ExportReport:
    rows, left_out = build_stepwise_export(store, config)
    if not rows:
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items()))
        raise NothingToExport(f"nothing to export: no trace has a majority mark on its first step ({left})")
    return _write_one_jsonl(config, rows, left_out)


def _export_ranked(store: Store, config: ExportConfig) -> ExportReport:
    rows = build_ranked_rows(store, since=config.since, annotators=config.annotators, datasets=config.dataset)
    if not rows:
        raise NothingToExport("nothing to export: no ranking item has a ranking yet")
    return _write_one_jsonl(config, rows, {})


def _write_one_jsonl(config: ExportConfig, rows: list[dict[str, Any]], left_out: dict[str, int]) -> ExportReport:
    config.out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(config.out.parent)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=config.out.parent) as staging:
        written = Path(staging) / "export"
        _write_jsonl(rows, written)
        os.replace(written, config.out)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return ExportReport(config.out, len(rows), 0, left_out, digest)


DOWNLOAD_KEEP_SECONDS = 15 * 60  # a download stays long enough to be fetched; Gradio serves its own copy


def _prune_downloads(folder: Path, *, keep_seconds: float) -> None:
    """Remove earlier exports made for the web app: Gradio copies a returned file into its own
    cache (pruned by the app's ``delete_cache``), so ours is only needed for the moment it is sent."""
    now = time.time()
    for entry in folder.iterdir() if folder.is_dir() else ():
        try:
            if now - entry.stat().st_mtime > keep_seconds:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except FileNotFoundError:
            pass


def export_for_download(store: Store, actor: Actor, *, format: str, prompt_format: str,  # noqa: A002
                        test_size: float, datasets: list[str] | None = None, with_metadata: bool = False,
                        ranking_pairs: str = "all", ranking_margin: bool = False, aggregate: str = "majority",
                        soft_labels: bool = False) -> tuple[Path, ExportReport]:
    """Export for a user of the web app (who needs the export permission) into the store's
    ``downloads/`` folder, then give one file a browser can download: the file itself, or a .zip of
    a folder. Earlier downloads are removed once they are ``DOWNLOAD_KEEP_SECONDS`` old."""
    actor.require(Permission.EXPORT)
    downloads = store.data_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    _prune_downloads(downloads, keep_seconds=DOWNLOAD_KEEP_SECONDS)
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=downloads))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    # Dataset names are restricted to letters, digits, '.', '_' and '-', so they are safe in a file name.
    what = "+".join(datasets) if datasets else "all"
    stem = f"preferences-{what}{'-metadata' if with_metadata else ''}-{stamp}"
    if format in ("ranked", "stepwise"):
        stem = stem.replace("preferences-", "rankings-" if format == "ranked" else "steps-", 1)
    name = stem if format == "hf" or test_size > 0 else f"{stem}.{'jsonl' if format in ('ranked', 'stepwise') else format}"
    config = ExportConfig(folder / name, format=format, prompt_format=prompt_format, test_size=test_size,
                          dataset=datasets, with_metadata=with_metadata, ranking_pairs=ranking_pairs,
                          ranking_margin=ranking_margin, aggregate=aggregate, soft_labels=soft_labels)
    report = export_dataset(store, config)
    if not config.out.is_dir():
        return config.out, report
    archive = shutil.make_archive(str(config.out), "zip", root_dir=config.out)
    shutil.rmtree(config.out)
    return Path(archive), report
