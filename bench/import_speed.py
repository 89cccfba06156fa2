"""Import speed: RewardLab's importer against plain sqlite3 ``executemany`` in the same process.

    python bench/import_speed.py [--rows 50000] [--repeats 3] [--smoke]

Both sides end with the same rows in the same schema (prompts, completions, comparisons, a source
user and its labels) in a fresh SQLite file with the store's settings (WAL, synchronous=FULL):

* ``executemany``: tuples prepared in advance (ids assigned, nothing validated), inserted with
  five ``executemany`` calls in one transaction: the floor for writing these rows from Python;
* ``rewardlab import``: the whole ``import_file`` path from a ``.jsonl`` file: read, decode,
  validate every field, hash contents, deduplicate, write idempotently in one transaction.

It prints rows per second (preference rows of the input file) and the ratio, best of N repeats.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_with_smoke  # noqa: E402

from core.data.formats import completion_content_hash, prompt_content_hash  # noqa: E402
from core.data.importer import ImportConfig, import_file  # noqa: E402
from storage.engine import SQLITE_CACHE_KIB, Store  # noqa: E402

WORDS = "the model answer reward think step because therefore result value check first then so we".split()


def make_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Preference rows whose lengths follow a long-tailed mix, like real chat data."""
    rng = random.Random(seed)

    def text(mean_words: int) -> str:
        n = max(3, int(rng.lognormvariate(0, 0.8) * mean_words))
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [
        {"prompt": f"[{i}] {text(20)}", "chosen": f" {text(60)} (c{i})", "rejected": f" {text(60)} (r{i})"}
        for i in range(count)
    ]


def time_executemany(db_path: Path, rows: list[dict[str, str]]) -> float:
    Store(f"sqlite:///{db_path}").dispose()  # same schema
    now = datetime.now(timezone.utc).isoformat(sep=" ")
    prompts, completions, comparisons, labels = [], [], [], []
    for i, row in enumerate(rows, start=1):
        prompts.append((i, prompt_content_hash(row["prompt"], None), row["prompt"], now))
        completions.append((2 * i - 1, i, completion_content_hash(row["chosen"]), row["chosen"], now))
        completions.append((2 * i, i, completion_content_hash(row["rejected"]), row["rejected"], now))
        comparisons.append((i, 1, i, 2 * i - 1, 2 * i, 0, "bench", 1, 0, 1, 0, now))  # labeled by its source: done
        labels.append((i, i, 1, "a", now, now))
    connection = sqlite3.connect(db_path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    start = time.perf_counter()
    connection.execute("BEGIN IMMEDIATE")
    connection.execute(
        "INSERT INTO dataset (id, name, prompt_kind, question, guidelines, overlap, lease_seconds, default_priority, "
        "open_to_all, archived, queue_order, random_fraction, labels_at_retrain, promotion_tolerance, uncertainty, "
        "ensemble_size, min_heldout_pairs, created_at) "
        "VALUES (1, 'default', 'text', 'pairwise', '', 1, 900, 0, 1, 0, 'priority', 0.1, 0, 0.02, 'margin', 5, 30, ?)",
        (now,)
    )
    connection.executemany("INSERT INTO prompt (id, content_hash, text, created_at) VALUES (?, ?, ?, ?)", prompts)
    connection.executemany(
        "INSERT INTO completion (id, prompt_id, content_hash, text, created_at) VALUES (?, ?, ?, ?, ?)", completions
    )
    connection.executemany(
        "INSERT INTO comparison (id, dataset_id, prompt_id, completion_a_id, completion_b_id, priority, source, "
        "label_count, extra_labels, done, archived, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        comparisons,
    )
    connection.execute("INSERT INTO user (id, name, role, created_at) VALUES (1, 'bench', 'source', ?)", (now,))
    connection.executemany(
        "INSERT INTO label (id, comparison_id, annotator_id, choice, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        labels,
    )
    connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def time_import(db_path: Path, source: Path) -> float:
    store = Store(f"sqlite:///{db_path}")
    start = time.perf_counter()
    report = import_file(store, ImportConfig(source))
    elapsed = time.perf_counter() - start
    assert report.counts.comparisons_added == report.rows, report.summary()
    store.dispose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_with_smoke(parser, rows=300, repeats=1)
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        source = work / "pairs.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        baseline, ours = [], []
        for repeat in range(args.repeats):
            baseline.append(time_executemany(work / f"baseline{repeat}.db", rows))
            ours.append(time_import(work / f"import{repeat}.db", source))
    best_baseline, best_ours = min(baseline), min(ours)
    stored = 5 * args.rows  # prompt, two completions, comparison, label
    print(f"{args.rows:,} preference pairs ({stored:,} stored rows), best of {args.repeats}")
    print("| path | seconds | pairs/s | stored rows/s | throughput vs baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in (
        ("plain sqlite3 executemany (baseline: prepared tuples, no validation)", best_baseline),
        ("rewardlab import (read + validate + hash + idempotent write)", best_ours),
    ):
        print(f"| {name} | {seconds:.2f} | {args.rows / seconds:,.0f} | {stored / seconds:,.0f} | {best_baseline / seconds:.2f} |")

if __name__ == "__main__":
    main()
