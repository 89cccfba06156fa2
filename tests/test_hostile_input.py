"""Hostile input: a generated corpus of bad import files, and property-based tests over the importer.

Every bad file must be refused with a message that names the file (and the line or row), never a
traceback, and the store must be byte-for-byte the same afterwards.
"""

from __future__ import annotations

import gzip
import json
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_import import PAIRS, store_fingerprint, write_jsonl

from core.data.importer import ImportConfig, ImportRejected, import_file

GOOD = {"prompt": "Which is better?", "chosen": " This one.", "rejected": " That one."}
CHAT = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Go away"}]}
CANDIDATES = {"prompt": "Name a color.", "completions": ["Red.", "Blue."]}


def _line(value) -> bytes:  # noqa: ANN001
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _jsonl(*rows) -> bytes:  # noqa: ANN002
    return b"\n".join(_line(r) for r in rows) + b"\n"


def hostile_corpus() -> list[tuple[str, bytes]]:
    """Bad files, each with one defect (a good row or two first, so the defect is not on line 1)."""
    files: list[tuple[str, bytes]] = []
    for label, row in (("pair", GOOD), ("chat", CHAT), ("candidates", CANDIDATES)):  # truncated JSON
        encoded = json.dumps(row).encode()
        for cut in range(1, len(encoded), max(1, len(encoded) // 24)):
            files.append((f"truncated-{label}-{cut}.jsonl", _jsonl(row, encoded[:cut])))
    wrong_values = [5, 2.5, True, None, [], {}, [1, 2], {"text": "x"}]
    for field in ("prompt", "chosen", "rejected"):  # wrong types, as JSON Lines and as a JSON array
        for index, value in enumerate(wrong_values):
            files.append((f"type-{field}-{index}.jsonl", _jsonl(GOOD, {**GOOD, field: value})))
            files.append((f"type-{field}-{index}.json", json.dumps([GOOD, {**GOOD, field: value}], indent=1).encode()))
    for index, value in enumerate(["big", [1.0], {"m": 1}, "NaN-ish", True]):
        files.append((f"type-margin-{index}.jsonl", _jsonl(GOOD, {**GOOD, "margin": value})))
    for index, value in enumerate(["a, b", 5, [5, "b"], [{"model": "m"}, "b"], ["only"], ["same", "same"], []]):
        files.append((f"type-completions-{index}.jsonl", _jsonl(CANDIDATES, {**CANDIDATES, "completions": value})))
    for field in ("prompt", "chosen", "rejected"):  # missing and empty fields
        files.append((f"missing-{field}.jsonl", _jsonl(GOOD, {k: v for k, v in GOOD.items() if k != field})
                      if field != "prompt" else _jsonl(CANDIDATES, {"completions": ["a", "b"]})))
        for blank in ("", " ", "\n\t "):
            files.append((f"empty-{field}-{len(blank)}.jsonl", _jsonl(GOOD, {**GOOD, field: blank})))
    for field in ("prompt", "chosen", "rejected"):  # huge fields
        files.append((f"huge-{field}.jsonl", _jsonl(GOOD, {**GOOD, field: "x" * 1_000_001})))
    for field in ("prompt", "chosen", "rejected"):  # NUL characters, escaped and raw
        files.append((f"nul-escaped-{field}.jsonl", _jsonl(GOOD, {**GOOD, field: "a\u0000b"})))
        files.append((f"nul-raw-{field}.jsonl", _jsonl(GOOD, json.dumps({**GOOD, field: "a_b"}).encode().replace(b"_", b"\x00"))))
    for index, junk in enumerate([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]):
        for field in ("prompt", "chosen"):  # invalid UTF-8
            row = json.dumps({**GOOD, field: "a_b"}).encode().replace(b"_", junk)
            files.append((f"utf8-{index}-{field}.jsonl", _jsonl(GOOD, row)))
    mixed = [(GOOD, CANDIDATES), (CANDIDATES, GOOD), (GOOD, CHAT), (CHAT, GOOD), ({**GOOD, "completions": ["a", "b"]},)]
    for index, rows in enumerate(mixed):  # mixed formats
        files.append((f"mixed-{index}.jsonl", _jsonl(*rows)))
    files.append(("swapped-duplicate.jsonl", _jsonl(GOOD, {**GOOD, "chosen": GOOD["rejected"], "rejected": GOOD["chosen"]})))
    files.append(("identical.jsonl", _jsonl(GOOD, {**GOOD, "chosen": GOOD["rejected"]})))
    wide = {**GOOD, **{f"extra{i}": i for i in range(100_000)}}  # 10^5 columns
    files.append(("wide.jsonl", _jsonl(GOOD, wide)))
    files.append(("wide.csv", (",".join(["prompt", "chosen", "rejected"] + [f"c{i}" for i in range(100_000)]) + "\nQ,a,b\n").encode()))
    for depth in (1_000, 100_000):  # deeply nested JSON
        files.append((f"nested-{depth}.jsonl", _jsonl(GOOD, b"[" * depth + b"]" * depth)))
        files.append((f"nested-field-{depth}.jsonl", _jsonl(GOOD, b'{"prompt": ' + b"[" * depth + b"]" * depth
                                                                + b', "chosen": "a", "rejected": "b"}')))
    for role in ("wizard", "", None, 5):  # bad chat messages
        files.append((f"role-{role}.jsonl", _jsonl(CHAT, {**CHAT, "prompt": [{"role": role, "content": "x"}]})))
    files.append(("chat-no-content.jsonl", _jsonl(CHAT, {**CHAT, "chosen": [{"role": "assistant"}]})))
    files.append(("chat-two-replies.jsonl", _jsonl(CHAT, {**CHAT, "chosen": CHAT["chosen"] * 2})))
    files.append(("chat-not-dict.jsonl", _jsonl(CHAT, {**CHAT, "prompt": ["hello"]})))
    for index, row in enumerate([[1, 2], "a string", 42, None, True]):  # rows that are not objects
        files.append((f"not-object-{index}.jsonl", _jsonl(GOOD, row)))
    csv_header = b"prompt,chosen,rejected\n"
    for index, body in enumerate([b'Q,a\n', b'"Q,a,b\n', b'Q,a,b,c\n', b"Q,,b\n", b"Q,a,a\n", b"Q,a\x00,b\n"]):
        files.append((f"bad-{index}.csv", csv_header + b"Q0,x,y\n" + body))
    files.append(("object.json", json.dumps(GOOD).encode()))
    files.append(("broken.json", b'[\n' + json.dumps(GOOD).encode() + b',\n {"prompt": \n]'))
    files.append(("element.json", json.dumps([GOOD, {"prompt": "Q"}], indent=1).encode()))
    for name, content in (("empty.jsonl", b""), ("blank.jsonl", b"\n\n  \n"), ("bom-only.jsonl", b"\xef\xbb\xbf"),
                          ("notes.txt", b"hello"), ("fake.jsonl.gz", b"not gzip"), ("fake.parquet", b"PAR1 nope"),
                          ("random.jsonl", bytes(range(256)) * 4), ("truncated.jsonl.gz", gzip.compress(_jsonl(GOOD))[:20]),
                          ("gz-bad-row.jsonl.gz", gzip.compress(_jsonl(GOOD, {"prompt": "Q"})))):
        files.append((name, content))
    return files


CORPUS = hostile_corpus()


def test_the_corpus_has_at_least_200_files():
    assert len(CORPUS) >= 200
    assert len({name for name, _ in CORPUS}) == len(CORPUS)


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory, module_db_url):
    from storage.engine import Store

    folder = tmp_path_factory.mktemp("hostile")
    store = Store(module_db_url)
    import_file(store, ImportConfig(write_jsonl(folder / "seed.jsonl", PAIRS)))
    return store, folder


@pytest.mark.parametrize("name,content", CORPUS, ids=[name for name, _ in CORPUS])
def test_every_hostile_file_is_refused_by_name_and_changes_nothing(seeded_store, name, content):
    store, folder = seeded_store
    before = store_fingerprint(store)
    path = folder / name
    path.write_bytes(content)
    with pytest.raises(ImportRejected) as refused:
        import_file(store, ImportConfig(path))
    message = str(refused.value)
    assert message.startswith(str(path)), message[:300]
    assert "Traceback" not in message
    assert store_fingerprint(store) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
row_like = st.fixed_dictionaries(
    {}, optional={"prompt": json_values, "chosen": json_values, "rejected": json_values, "completions": json_values,
                  "margin": json_values},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_like | json_values, min_size=1, max_size=5))
def test_any_json_rows_are_imported_or_refused_cleanly(seeded_store, rows):
    store, folder = seeded_store
    before = store_fingerprint(store)
    path = folder / "fuzz.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    try:
        import_file(store, ImportConfig(path, dry_run=True))
    except ImportRejected as refused:
        assert str(refused).startswith(str(path))
    assert store_fingerprint(store) == before  # a dry run never writes; a refusal never does


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_any_bytes_are_refused_or_imported_without_a_traceback(seeded_store, data, suffix):
    store, folder = seeded_store
    before = store_fingerprint(store)
    path = folder / f"bytes{suffix}"
    path.write_bytes(data)
    try:
        import_file(store, ImportConfig(path, dry_run=True))
    except ImportRejected as refused:
        assert str(refused).startswith(str(path))
    assert store_fingerprint(store) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=string.printable + "éü中😀<>&\"'", min_size=1, max_size=50))
def test_valid_text_round_trips_exactly(seeded_store, text):
    store, folder = seeded_store
    assume(text.strip() and "\x00" not in text)  # a skipped example counts as skipped, never as passed
    path = folder / "roundtrip.jsonl"
    path.write_text(json.dumps({"prompt": "P " + text, "chosen": text + " A", "rejected": text + " B"}) + "\n")
    import_file(store, ImportConfig(path))
    from core.preferences.pairs import build_preference_rows

    assert {"prompt": "P " + text, "chosen": text + " A", "rejected": text + " B"} in build_preference_rows(store).rows
