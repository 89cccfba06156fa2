"""Exporting labels as a TRL-ready preference dataset.

One row per comparison: ``prompt``, ``chosen``, ``rejected`` (conversational when the prompt was
chat messages) and ``margin`` when any label carries a strength or a source margin. Several
annotators are folded by majority vote; ties, both-bad, skip-only and split votes are left out and
counted. The output is deterministic: the same store and config give the same bytes.

Training takes its data snapshot through ``build_preference_rows``, so what trains is exactly what
an export would write.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from core.accounts import Actor, Permission
from core.config_fields import ConfigError, config_field
from core.data.datasets import DatasetError, resolve_datasets
from core.data.ranking_export import RANKING_PAIRS, ranked_format_rows, ranking_rows
from storage.engine import Store
from storage.queries import ComparisonContent, Vote, comparison_contents, count_comparisons, votes_by_comparison
from storage.ranking import items_of, rankings_by_item

EXPORT_FORMATS = ("jsonl", "parquet", "hf", "csv", "ranked")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PROMPT_FORMATS = ("auto", "text", "chat")
# Label strength -> TRL margin. The values are Llama 2's "small" margins (Touvron et al. 2023,
# Table 28): "slightly better" 1/3, "significantly better" 1, so a margin never dominates the
# Bradley-Terry logit early in training.
STRENGTH_MARGIN = {1: 1 / 3, 2: 1.0}


@dataclass
class ExportConfig:
    """What to export and where."""

    out: Path = config_field(help="output file (jsonl, parquet) or folder (hf, or any format with --test-size)")
    format: str = config_field(
        "jsonl", help="jsonl, parquet, hf (datasets.save_to_disk folder), csv (for spreadsheets: cells that would "
        "run as formulas get a leading apostrophe, so use jsonl/parquet/hf to train), or ranked (JSON Lines, one row "
        "per ranked item of ranking datasets: prompt, completions, consensus groups, each annotator's ranking)",
        choices=EXPORT_FORMATS)
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
        if self.format == "ranked" and self.test_size:
            raise ConfigError("the ranked format writes one file; leave test_size at 0")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if not 0.0 <= self.test_size <= 0.5:
            raise ConfigError(f"test_size must be between 0 and 0.5 (a fraction of the rows), got {self.test_size}")


class NothingToExport(ValueError):
    pass


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "a" | "b" | "tie" | "both_bad" | "skipped" | "no_majority"
    margin: float | None = None


def _vote_margin(vote: Vote) -> float | None:
    if vote.margin is not None:
        return vote.margin
    return STRENGTH_MARGIN.get(vote.strength) if vote.strength is not None else None


def fold_votes(votes: list[Vote]) -> Verdict:
    """Majority vote over non-skip labels; a shared top count is ``no_majority``.

    The margin is the mean of the winning votes' margins (None when none has one).
    """
    counted = [vote for vote in votes if vote.choice != "skip"]
    if not counted:
        return Verdict("skipped")
    tally = Counter(vote.choice for vote in counted).most_common()
    if len(tally) > 1 and tally[0][1] == tally[1][1]:
        return Verdict("no_majority")
    winner = tally[0][0]
    margins = [m for m in (_vote_margin(v) for v in counted if v.choice == winner) if m is not None]
    return Verdict(winner, sum(margins) / len(margins) if margins else None)


@dataclass
class PreferenceRows:
    """The rows an export writes, and what was left out (by reason)."""

    rows: list[dict[str, Any]]
    left_out: Counter = field(default_factory=Counter)
    comparison_ids: list[int] = field(default_factory=list)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()


def _vote_as_row_side(choice: str, chosen_side: str) -> str:
    if choice in ("a", "b"):
        return "chosen" if choice == chosen_side else "rejected"
    return choice


def _metadata(comparison_id: int, content: ComparisonContent, chosen_side: str, votes: list[Vote]) -> dict[str, Any]:
    """The evidence behind one exported row; votes name the row's sides (chosen/rejected)."""
    rejected_side = "b" if chosen_side == "a" else "a"
    models = {"a": content.a_model, "b": content.b_model}
    return {
        "comparison_id": comparison_id,
        "dataset": content.dataset,
        "source": content.source,
        "chosen_model": models[chosen_side],
        "rejected_model": models[rejected_side],
        "labels": [
            {
                "annotator": vote.annotator,
                "vote": _vote_as_row_side(vote.choice, chosen_side),
                "strength": {1: "slightly", 2: "clearly"}.get(vote.strength),
                "comment": vote.comment,
                "seconds": vote.seconds_spent,
                "time": vote.updated_at.isoformat() if vote.updated_at is not None else None,
            }
            for vote in votes
        ],
    }


def build_preference_rows(
    store: Store, *, prompt_format: str = "auto", since: datetime | None = None, annotators: list[str] | None = None,
    datasets: list[str] | None = None, with_metadata: bool = False, ranking_pairs: str = "all",
    ranking_margin: bool = False,
) -> PreferenceRows:
    """Fold the labels of ``datasets`` (every dataset not archived when None) into TRL preference rows, ordered by
    comparison id; ``with_metadata`` adds the evidence columns. Ranking items give the pairs
    ``ranking_pairs`` selects, with a ``weight`` column (``core.data.ranking_export``); pairwise rows
    then weigh 1.

    Raises ``NothingToExport`` for an unknown dataset, datasets of different prompt kinds, or labels
    that mix text and chat prompts under ``prompt_format='auto'``.
    """
    try:
        dataset_ids, _ = resolve_datasets(store, datasets)
    except DatasetError as error:
        raise NothingToExport(str(error)) from None
    with store.read() as session:
        votes = votes_by_comparison(session, since=since, annotators=annotators, dataset_ids=dataset_ids)
        ranking_items = {item_id for item_id, _, _ in items_of(session, dataset_ids)} & set(votes)
        rankings = rankings_by_item(session, dataset_ids, since=since, annotators=annotators) if ranking_items else {}
        contents = comparison_contents(session, list(votes))
        ranked = ranking_rows(session, contents, rankings, sorted(ranking_items), mode=ranking_pairs,
                              with_margin=ranking_margin, with_metadata=with_metadata)
        total = count_comparisons(session, dataset_ids)
        archived = count_comparisons(session, dataset_ids, archived=True)
        # With no dataset named, archived datasets are left out: say how much that was.
        in_archived_datasets = 0 if datasets else count_comparisons(session) + count_comparisons(
            session, archived=True) - total - archived
    result = PreferenceRows(rows=[])
    if archived:
        result.left_out["archived"] = archived
    if in_archived_datasets:
        result.left_out["in archived datasets"] = in_archived_datasets
    if total > len(votes):
        result.left_out["without labels"] = total - len(votes)
    result.left_out.update(ranked.left_out)
    decided: list[tuple[int, Verdict]] = []
    for comparison_id in sorted(set(votes) - ranking_items):
        verdict = fold_votes(votes[comparison_id])
        if verdict.outcome in ("a", "b"):
            decided.append((comparison_id, verdict))
        else:
            result.left_out[verdict.outcome] += 1
    decided_ids = [cid for cid, _ in decided] + [cid for cid, _ in ranked.rows]
    styles = Counter("chat" if contents[cid].prompt_messages is not None else "text" for cid in set(decided_ids))
    if prompt_format == "auto" and len(styles) > 1:
        by_kind: dict[str, set[str]] = {}
        for comparison_id in decided_ids:
            content = contents[comparison_id]
            by_kind.setdefault("chat" if content.prompt_messages is not None else "text", set()).add(content.dataset)
        listed = "; ".join(f"{kind}: {', '.join(sorted(names))}" for kind, names in sorted(by_kind.items()))
        raise NothingToExport(
            f"the labels cover {styles['text']} plain-text and {styles['chat']} chat prompts ({listed}), and a "
            "preference dataset holds one kind; choose datasets of one kind (--dataset NAME, or the Dataset choice)"
        )
    with_margin = any(verdict.margin is not None for _, verdict in decided) or (ranking_margin and bool(ranked.rows))
    with_weight = bool(ranked.rows)
    built: list[tuple[int, dict[str, Any]]] = []
    for comparison_id, verdict in decided:
        content = contents[comparison_id]
        chat = content.prompt_messages is not None
        if prompt_format != "auto" and prompt_format != ("chat" if chat else "text"):
            result.left_out[f"not {prompt_format}"] += 1
            continue
        chosen, rejected = (content.a_text, content.b_text) if verdict.outcome == "a" else (content.b_text, content.a_text)
        if chat:
            row: dict[str, Any] = {
                "prompt": content.prompt_messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        else:
            row = {"prompt": content.prompt_text, "chosen": chosen, "rejected": rejected}
        if with_weight:
            row["weight"] = 1.0
        if with_margin:
            # TRL applies a margin column to every row; a row without one gets 0 (plain Bradley-Terry).
            row["margin"] = verdict.margin if verdict.margin is not None else 0.0
        if with_metadata:
            row.update(_metadata(comparison_id, content, verdict.outcome, votes[comparison_id]))
        built.append((comparison_id, row))
    for comparison_id, row in ranked.rows:
        content = contents[comparison_id]
        if prompt_format != "auto" and prompt_format != ("chat" if content.prompt_messages is not None else "text"):
            result.left_out[f"not {prompt_format}"] += 1
            continue
        if with_margin:
            row.setdefault("margin", 0.0)
        built.append((comparison_id, row))
    # One order for both kinds of rows: by comparison (item) id, pairs of an item in their built order.
    built.sort(key=lambda pair: pair[0])
    result.rows = [row for _, row in built]
    result.comparison_ids = [comparison_id for comparison_id, _ in built]
    return result


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


def response_text(side: Any) -> str:
    """The response of an exported row's ``chosen`` or ``rejected``: the text itself, or the content
    of the single assistant message of a conversational row."""
    return side[0]["content"] if isinstance(side, list) else side


def split_rows(rows: list[dict[str, Any]], test_size: float, seed: int) -> tuple[list, list]:
    """Deterministic train/test split: shuffle indices with ``seed``, hold out ``test_size`` of them."""
    if test_size <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = min(len(rows) - 1, max(1, round(len(rows) * test_size)))
    test_ids = set(order[:n_test])
    train = [row for i, row in enumerate(rows) if i not in test_ids]
    test = [row for i, row in enumerate(rows) if i in test_ids]
    return train, test


@dataclass(frozen=True)
class ExportReport:
    out: Path
    train_rows: int
    test_rows: int
    left_out: dict[str, int]
    content_hash: str

    def summary(self) -> str:
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items())) or "none"
        split = f" + {self.test_rows} test" if self.test_rows else ""
        return f"wrote {self.train_rows} train{split} rows to {self.out}; left out: {left}"


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
    prepared = build_preference_rows(
        store, prompt_format=config.prompt_format, since=config.since, annotators=config.annotators,
        datasets=config.dataset, with_metadata=config.with_metadata, ranking_pairs=config.ranking_pairs,
        ranking_margin=config.ranking_margin,
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
    return ExportReport(config.out, len(train), len(test), dict(prepared.left_out), prepared.content_hash)


def _export_ranked(store: Store, config: ExportConfig) -> ExportReport:
    rows = build_ranked_rows(store, since=config.since, annotators=config.annotators, datasets=config.dataset)
    if not rows:
        raise NothingToExport("nothing to export: no ranking item has a ranking yet")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(config.out.parent)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=config.out.parent) as staging:
        written = Path(staging) / "export"
        _write_jsonl(rows, written)
        os.replace(written, config.out)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return ExportReport(config.out, len(rows), 0, {}, digest)


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
                        ranking_pairs: str = "all", ranking_margin: bool = False) -> tuple[Path, ExportReport]:
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
    if format == "ranked":
        stem = stem.replace("preferences-", "rankings-", 1)
    name = stem if format == "hf" or test_size > 0 else f"{stem}.{'jsonl' if format == 'ranked' else format}"
    config = ExportConfig(folder / name, format=format, prompt_format=prompt_format, test_size=test_size,
                          dataset=datasets, with_metadata=with_metadata, ranking_pairs=ranking_pairs,
                          ranking_margin=ranking_margin)
    report = export_dataset(store, config)
    if not config.out.is_dir():
        return config.out, report
    archive = shutil.make_archive(str(config.out), "zip", root_dir=config.out)
    shutil.rmtree(config.out)
    return Path(archive), report
