"""Importing files: every format, the real HH-RLHF file, idempotence, and refusal of bad input."""

from __future__ import annotations

import gzip
import gzip as gz
import json
from pathlib import Path

import pytest
from conftest import HH_RLHF_FILE, run_cli, sql

from core.preferences.pairs import build_preference_rows
from core.data.importer import ImportConfig, ImportRejected, import_file
from storage.engine import Store
from storage.queries import store_counts


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def store_fingerprint(store: Store) -> dict[str, tuple[int, str]]:
    """Every row of every table, digested: equal before and after means nothing was written.

    Independent of the code under test: its own engine, the tables the database itself lists, plain
    ``SELECT *`` values as the driver returns them."""
    import hashlib

    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(store.url)
    try:
        with engine.connect() as connection:
            fingerprint = {}
            for table in sorted(inspect(connection).get_table_names()):
                # Sorted here, not by SQL: PostgreSQL cannot order json columns.
                rows = sorted(repr(tuple(row)) for row in connection.execute(text(f'SELECT * FROM "{table}"')))
                fingerprint[table] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
            return fingerprint
    finally:
        engine.dispose()


def test_the_store_fingerprint_sees_an_insert_an_update_and_a_delete(store, tmp_path):
    """The oracle of every "nothing was written" check must itself notice a write of each kind."""
    from sqlalchemy import text

    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", PAIRS)))
    before = store_fingerprint(store)
    assert before == store_fingerprint(store)
    with store.write() as session:
        session.execute(text("UPDATE comparison SET priority = priority + 1 WHERE id = 1"))
    after_update = store_fingerprint(store)
    assert after_update != before and after_update["comparison"][0] == before["comparison"][0]
    with store.write() as session:
        session.execute(text("DELETE FROM label WHERE id = 1"))
    after_delete = store_fingerprint(store)
    assert after_delete["label"][0] == before["label"][0] - 1
    with store.write() as session:
        session.execute(text("INSERT INTO setting (key, value) VALUES ('guidelines', 'x')"))
    assert store_fingerprint(store)["setting"][0] == after_delete["setting"][0] + 1


def counts(store: Store):
    with store.read() as session:
        return store_counts(session)


PAIRS = [{"prompt": f"Question {i}?", "chosen": f" Right {i}.", "rejected": f" Wrong {i}."} for i in range(6)]


def test_hh_rlhf_imports_every_pair_and_reproduces_the_texts(store, tmp_path):
    report = import_file(store, ImportConfig(HH_RLHF_FILE))
    assert report.rows == 2312 and report.kind == "preference"
    assert report.counts.comparisons_added == 2312
    assert counts(store).comparisons == 2312

    originals = [json.loads(line) for line in gzip.open(HH_RLHF_FILE, "rt", encoding="utf-8")]
    rows = build_preference_rows(store).rows
    assert len(rows) == 2312
    assert [(r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]) for r in rows] == [
        (o["chosen"], o["rejected"]) for o in originals
    ]
    assert all(row["prompt"].endswith("\n\nAssistant:") for row in rows)


def test_reimporting_the_same_rows_adds_nothing(store, tmp_path):
    source = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    first = import_file(store, ImportConfig(source))
    before = store_fingerprint(store)
    second = import_file(store, ImportConfig(source))
    assert first.counts.comparisons_added == 6 and first.counts.labels_added == 6
    assert second.counts.comparisons_added == 0 and second.counts.labels_added == 0
    assert second.counts.comparisons_in_batch == 6
    assert store_fingerprint(store) == before


def test_a_pair_repeated_with_chosen_and_rejected_swapped_is_refused(store, tmp_path):
    source = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "Q?", "chosen": " yes", "rejected": " no"}, {"prompt": "Q?", "chosen": " no", "rejected": " yes"}],
    )
    with pytest.raises(ImportRejected, match=r"pairs.jsonl:2: the same pair as .*pairs.jsonl:1 with chosen and rejected swapped"):
        import_file(store, ImportConfig(source))
    assert counts(store).comparisons == 0


def test_exact_duplicate_rows_are_one_comparison(store, tmp_path):
    row = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
    import_file(store, ImportConfig(write_jsonl(tmp_path / "pairs.jsonl", [row, row, row])))
    assert counts(store).comparisons == 1
    assert build_preference_rows(store).rows == [row]


def _formats(tmp_path: Path) -> dict[str, Path]:
    import datasets

    datasets.disable_progress_bars()
    files = {"jsonl": write_jsonl(tmp_path / "p.jsonl", PAIRS)}
    files["json"] = tmp_path / "p.json"
    files["json"].write_text(json.dumps(PAIRS, indent=2))
    files["csv"] = tmp_path / "p.csv"
    lines = ["prompt,chosen,rejected"] + [f'"{r["prompt"]}","{r["chosen"]}","{r["rejected"]}"' for r in PAIRS]
    files["csv"].write_text("\n".join(lines) + "\n")
    files["parquet"] = tmp_path / "p.parquet"
    datasets.Dataset.from_list(PAIRS).to_parquet(str(files["parquet"]))
    files["jsonl.gz"] = tmp_path / "p.jsonl.gz"
    files["jsonl.gz"].write_bytes(gz.compress(files["jsonl"].read_bytes()))
    files["save_to_disk"] = tmp_path / "saved"
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(files["save_to_disk"]))
    files["save_to_disk (splits)"] = tmp_path / "saved_splits"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:4]), "test": datasets.Dataset.from_list(PAIRS[4:])}
    ).save_to_disk(str(files["save_to_disk (splits)"]))
    return files


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "jsonl.gz", "save_to_disk", "save_to_disk (splits)"])
def test_every_file_format_imports_the_same_pairs(store, tmp_path, kind):
    report = import_file(store, ImportConfig(_formats(tmp_path)[kind]))
    assert report.counts.comparisons_added == 6
    assert sorted(build_preference_rows(store).rows, key=lambda r: r["prompt"]) == PAIRS


def test_conversational_rows_with_explicit_and_implicit_prompt(store, tmp_path):
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    explicit = {"prompt": user, "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}]}
    implicit = {"chosen": user + [{"role": "assistant", "content": "Four."}],
                "rejected": user + [{"role": "assistant", "content": "Five."}]}
    report = import_file(store, ImportConfig(write_jsonl(tmp_path / "chat.jsonl", [explicit, implicit])))
    assert report.style == "chat"
    assert report.counts.prompts_added == 1 and report.counts.comparisons_added == 2
    rows = build_preference_rows(store).rows
    assert rows[0] == explicit
    assert rows[1] == {"prompt": user, "chosen": [{"role": "assistant", "content": "Four."}],
                       "rejected": [{"role": "assistant", "content": "Five."}]}


def test_candidates_become_every_pair_to_label(store, tmp_path):
    rows = [
        {"prompt": "Name a color.", "completions": ["Red.", {"text": "Blue.", "model": "m2"}, {"text": "Green.", "model": "m3"}]},
        {"prompt": "Name a fruit.", "completions": ["Apple.", "Pear.", "Apple."]},
    ]
    report = import_file(store, ImportConfig(write_jsonl(tmp_path / "cands.jsonl", rows), priority=5))
    assert report.kind == "candidates"
    # 3 completions -> 3 pairs; a repeated completion counts once -> 1 pair.
    assert report.counts.comparisons_added == 4 and report.counts.labels_added == 0
    c = counts(store)
    assert (c.comparisons, c.labeled_comparisons, c.completions) == (4, 0, 5)


def test_margin_is_kept_and_exported(store, tmp_path):
    source = write_jsonl(tmp_path / "m.jsonl", [dict(PAIRS[0], margin=2.5), PAIRS[1]])
    import_file(store, ImportConfig(source))
    assert [row["margin"] for row in build_preference_rows(store).rows] == [2.5, 0.0]


def test_dry_run_writes_nothing(store, tmp_path):
    before = store_fingerprint(store)
    report = import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", PAIRS), dry_run=True))
    assert report.rows == 6 and report.counts is None
    assert store_fingerprint(store) == before


GOOD = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
MSG = [{"role": "user", "content": "Hi"}]


def _jsonl_bytes(*rows) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


# (file name, content, the message expected for it). Each names the file and the line.
BAD_INPUTS = [
    ("not-json.jsonl", _jsonl_bytes(GOOD, b'{"prompt": "a", "chosen": '), "not-json.jsonl:2: not valid JSON"),
    ("no-chosen.jsonl", _jsonl_bytes({"prompt": "Q", "rejected": "b"}), "no-chosen.jsonl:1: field 'chosen' is missing"),
    ("no-rejected.jsonl", _jsonl_bytes(GOOD, GOOD, {"prompt": "Q", "chosen": "a"}), "no-rejected.jsonl:3: field 'rejected' is missing"),
    ("empty-chosen.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": "", "rejected": "b"}), ":1: field 'chosen' is empty"),
    ("blank-rejected.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": "a", "rejected": "  \n"}), ":1: field 'rejected' is empty"),
    ("int-chosen.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": 5, "rejected": "b"}), ":1: field 'chosen' must be a string, got int"),
    ("null-prompt.jsonl", _jsonl_bytes({"prompt": None, "completions": ["a", "b"]}), ":1: field 'prompt' is null"),
    ("same.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": "a", "rejected": "a"}), ":1: fields 'chosen' and 'rejected' are identical"),
    ("same-implicit.jsonl", _jsonl_bytes({"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant: y"}), ":1: fields 'chosen' and 'rejected' are identical"),
    ("latin1.jsonl", _jsonl_bytes(GOOD, '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}'.encode("latin-1")), "latin1.jsonl:2: not valid UTF-8"),
    ("array-row.jsonl", _jsonl_bytes([1, 2]), ":1: a row must be an object"),
    ("both-formats.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": "a", "rejected": "b", "completions": ["a", "b"]}), ":1: row mixes formats"),
    ("mixed-rows.jsonl", _jsonl_bytes(GOOD, {"prompt": "Q", "completions": ["a", "b"]}), "mixed-rows.jsonl:2: a candidates row"),
    ("mixed-styles.jsonl", _jsonl_bytes(GOOD, {"prompt": MSG, "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}), "mixed-styles.jsonl:2: a preference row (chat)"),
    ("one-candidate.jsonl", _jsonl_bytes({"prompt": "Q", "completions": ["only"]}), ":1: field 'completions' needs at least two"),
    ("dup-candidates.jsonl", _jsonl_bytes({"prompt": "Q", "completions": ["x", "x"]}), ":1: field 'completions' needs at least two"),
    ("completions-str.jsonl", _jsonl_bytes({"prompt": "Q", "completions": "a, b"}), ":1: field 'completions' must be a list"),
    ("completion-int.jsonl", _jsonl_bytes({"prompt": "Q", "completions": ["a", 5]}), ":1: field 'completions[1]' must be a string or an object"),
    ("completion-no-text.jsonl", _jsonl_bytes({"prompt": "Q", "completions": [{"model": "m"}, "b"]}), ":1: field 'completions[0].text' is missing"),
    ("margin-word.jsonl", _jsonl_bytes(dict(GOOD, margin="big")), ":1: field 'margin' must be a number"),
    ("margin-nan.jsonl", b'{"prompt": "Q", "chosen": "a", "rejected": "b", "margin": NaN}\n', ":1: field 'margin' must be a finite number"),
    ("margin-bool.jsonl", _jsonl_bytes(dict(GOOD, margin=True)), ":1: field 'margin' must be a number, got bool"),
    ("bad-role.jsonl", _jsonl_bytes({"prompt": [{"role": "wizard", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}), ":1: field 'prompt[0].role' must be one of"),
    ("no-content.jsonl", _jsonl_bytes({"prompt": MSG, "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]}), ":1: field 'chosen[0].content' is null"),
    ("chat-text-mix.jsonl", _jsonl_bytes({"prompt": MSG, "chosen": "a", "rejected": "b"}), ":1: fields 'prompt', 'chosen' and 'rejected' mix plain text and chat"),
    ("two-replies.jsonl", _jsonl_bytes({"prompt": MSG, "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}], "rejected": [{"role": "assistant", "content": "b"}]}), ":1: field 'chosen' must be exactly one assistant message"),
    ("no-marker.jsonl", _jsonl_bytes({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"}), ":1: no 'prompt' field, and 'chosen' and 'rejected' share no"),
    ("nul-char.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": "a\u0000b", "rejected": "b"}), ":1: field 'chosen' contains a NUL character"),
    ("huge.jsonl", _jsonl_bytes({"prompt": "Q", "chosen": "x" * 1_000_001, "rejected": "b"}), ":1: field 'chosen' is 1,000,001 characters long"),
    ("deep.jsonl", b"[" * 100_000 + b"\n", ":1: JSON nested too deeply"),
    ("cells.csv", b"prompt,chosen,rejected\nQ,a,b\nQ2,a\n", "cells.csv:3: has 2 cells but the header has 3"),
    ("nul.csv", b"prompt,chosen,rejected\nQ,a\x00,b\n", "nul.csv:2: contains a NUL byte"),
    ("object.json", b'{"prompt": "Q", "chosen": "a", "rejected": "b"}', "object.json:1: a .json file must hold an array"),
    ("element.json", b'[\n  {"prompt": "Q", "chosen": "a", "rejected": "b"},\n  {"prompt": "Q",\n   "chosen": "c"}\n]', "element.json:3: field 'rejected' is missing"),
    ("broken.json", b'[\n {"prompt": "Q",\n  "chosen": }\n]', "broken.json:3: not valid JSON"),
    ("empty.jsonl", b"\n\n", "empty.jsonl: no rows to import"),
    ("notes.txt", b"hello", "notes.txt: unknown file type"),
    ("fake.jsonl.gz", b"not gzip at all", "fake.jsonl.gz: cannot read the file"),
    ("bad.parquet", b"PAR1 not really", "bad.parquet: not a readable Parquet file"),
    ("one-bad-among-many.jsonl", _jsonl_bytes(*([GOOD] * 99), {"prompt": "Q"}), "one-bad-among-many.jsonl:100: row has neither"),
]


@pytest.mark.parametrize("name,content,expected", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_refused_naming_the_place_and_nothing_is_written(store, tmp_path, name, content, expected):
    import_file(store, ImportConfig(write_jsonl(tmp_path / "existing.jsonl", PAIRS)))
    before = store_fingerprint(store)
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ImportRejected) as refused:
        import_file(store, ImportConfig(bad))
    assert expected in str(refused.value)
    assert str(bad.name) in str(refused.value)
    assert store_fingerprint(store) == before


def test_all_problems_are_listed_up_to_a_limit(store, tmp_path):
    # 120 different problems (each swapped pair names its own first row), 50 of them listed.
    pairs = [{"prompt": f"Q{i}", "chosen": "a", "rejected": "b"} for i in range(120)]
    bad = write_jsonl(tmp_path / "many.jsonl", pairs + [{**p, "chosen": "b", "rejected": "a"} for p in pairs])
    with pytest.raises(ImportRejected) as refused:
        import_file(store, ImportConfig(bad))
    assert refused.value.total == 120 and len(refused.value.problems) == 50
    assert "... and 70 more problem(s)" in str(refused.value)


def test_cli_import_prints_counts_and_refuses_with_exit_code_2(db_url, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", PAIRS)
    done = run_cli("import", str(good), db_url=db_url)
    assert done.returncode == 0, done.stderr
    assert "6 new comparisons" in done.stdout

    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"prompt": "Q", "chosen": "a"}, {"prompt": "Q", "chosen": 3, "rejected": "b"}])
    refused = run_cli("import", str(bad), db_url=db_url)
    assert refused.returncode == 2
    assert "nothing written" in refused.stderr
    assert f"{bad}:2: field 'rejected' is missing" in refused.stderr
    assert f"{bad}:3: field 'chosen' must be a string, got int" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_export_after_import_round_trips_through_the_cli(db_url, tmp_path):
    run_cli("import", str(write_jsonl(tmp_path / "good.jsonl", PAIRS)), db_url=db_url)
    out = tmp_path / "out.jsonl"
    done = run_cli("export", str(out), db_url=db_url)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == PAIRS


def test_a_problem_repeated_on_many_rows_is_one_line_naming_the_lines(store, tmp_path):
    """A wrong-kind file (rows without 'completions' or 'chosen') printed the same error 300 times; now one
    line says how many rows and which lines, and a different problem keeps its own line. Nothing is written."""
    rows = [{"prompt": f"Q{i}?", "answer": "A"} for i in range(300)] + [{"prompt": "Q?", "chosen": 5, "rejected": "b"}]
    source = tmp_path / "wrong.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ImportRejected) as refused:
        import_file(store, ImportConfig(source))
    lines = refused.value.problems
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{source} lines 1-300 (300 rows): row has neither")
    assert lines[1].startswith(f"{source}:301: ")
    assert "more problem" not in str(refused.value)
    assert sql(store, "SELECT count(*) FROM comparison") == [(0,)]
