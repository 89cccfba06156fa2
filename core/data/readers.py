"""Reading rows from the files people import, each with the place it came from.

JSON Lines, JSON and CSV are read here with the standard library, because a bad row must be
reported by *line*, and ``datasets``' JSON/CSV builders report neither the line nor the field
(and cast a column to one Arrow type before any row can be checked). Parquet files and folders
written by ``datasets.save_to_disk`` are typed columnar data with no lines: they are read through
``datasets`` and reported by row number.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from core.limits import MAX_IMPORT_BYTES, MAX_IMPORT_LINE_BYTES

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


class UnreadableFile(ValueError):
    """The file as a whole cannot be read (unknown format, not found, not gzip...)."""


@dataclass(frozen=True)
class RawRow:
    location: str  # "file:line" or "file:row N"
    value: Any = None
    error: str | None = None  # set when the row could not even be decoded


def _format_of(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[: -len(".gz")]
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix, compressed
    raise UnreadableFile(
        f"{path}: unknown file type; use .jsonl, .json, .csv or .parquet (optionally .gz), "
        "or a folder written by datasets.save_to_disk"
    )


_CHUNK_BYTES = 1024 * 1024
_GZIP_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)


def _open_stream(path: Path, compressed: bool) -> BinaryIO:
    return gzip.open(path, "rb") if compressed else open(path, "rb")  # noqa: SIM115 (the caller closes it)


def _check_size(path: Path, compressed: bool) -> None:
    """Refuse a file whose (decompressed) content passes ``MAX_IMPORT_BYTES``. A compressed file is
    inflated as a stream and dropped chunk by chunk, so a gzip bomb costs one chunk of memory."""
    cap = MAX_IMPORT_BYTES
    try:
        if not compressed:
            size = path.stat().st_size
        else:
            size = 0
            with _open_stream(path, compressed) as stream:
                while size <= cap and (chunk := stream.read(_CHUNK_BYTES)):
                    size += len(chunk)
    except _GZIP_ERRORS as error:
        raise UnreadableFile(f"{path}: cannot read the file ({error})") from None
    if size > cap:
        what = "inflates to" if compressed else "holds"
        raise UnreadableFile(
            f"{path}: {what} more than {cap // 2**20:,} MiB, the import limit ($REWARDLAB_MAX_IMPORT_MB); "
            "split it into smaller files"
        )


def _open_bytes(path: Path, compressed: bool) -> bytes:
    _check_size(path, compressed)
    try:
        with _open_stream(path, compressed) as stream:
            return stream.read()
    except _GZIP_ERRORS as error:
        raise UnreadableFile(f"{path}: cannot read the file ({error})") from None


def _utf8_problem(raw: bytes) -> tuple[str | None, int]:
    """(decoded text or None, byte offset of the first invalid byte)."""
    try:
        return raw.decode("utf-8"), -1
    except UnicodeDecodeError as error:
        return None, error.start


def _not_utf8(raw: bytes, offset: int) -> str:
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return f"not valid UTF-8 (byte 0x{raw[offset]:02x} at column {offset - line_start + 1}); save the file as UTF-8"


def _decode_whole_file(path: Path, data: bytes) -> tuple[str | None, RawRow | None]:
    text, offset = _utf8_problem(data)
    if text is None:
        line = data[:offset].count(b"\n") + 1
        return None, RawRow(f"{path}:{line}", error=_not_utf8(data, offset))
    return text.removeprefix("\ufeff"), None


def _lines(path: Path, compressed: bool) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) for each line, read as a stream; None for a line over the line cap."""
    _check_size(path, compressed)
    try:
        with _open_stream(path, compressed) as stream:
            number = 0
            while line := stream.readline(MAX_IMPORT_LINE_BYTES + 1):
                number += 1
                if len(line) > MAX_IMPORT_LINE_BYTES and not line.endswith(b"\n"):
                    while (rest := stream.readline(_CHUNK_BYTES)) and not rest.endswith(b"\n"):
                        pass  # skip the rest of the over-long line without holding it
                    yield number, None
                    continue
                yield number, line.rstrip(b"\n")
    except _GZIP_ERRORS as error:
        raise UnreadableFile(f"{path}: cannot read the file ({error})") from None


def _read_jsonl(path: Path, compressed: bool) -> Iterator[RawRow]:
    for number, raw_line in _lines(path, compressed):
        location = f"{path}:{number}"
        if raw_line is None:
            yield RawRow(location, error=f"the line is longer than {MAX_IMPORT_LINE_BYTES // 2**20} MiB, "
                                         "the limit for one row")
            continue
        if not raw_line.strip():
            continue
        text, offset = _utf8_problem(raw_line)
        if text is None:
            yield RawRow(location, error=_not_utf8(raw_line, offset))
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        try:
            yield RawRow(location, value=json.loads(text))
        except RecursionError:
            yield RawRow(location, error="JSON nested too deeply")
        except json.JSONDecodeError as error:
            yield RawRow(location, error=f"not valid JSON ({error.msg} at column {error.colno})")


def _read_json(path: Path, data: bytes) -> Iterator[RawRow]:
    text, problem = _decode_whole_file(path, data)
    if problem:
        yield problem
        return
    decoder = json.JSONDecoder()
    try:
        document = json.loads(text)
    except RecursionError:
        yield RawRow(f"{path}:1", error="JSON nested too deeply")
        return
    except json.JSONDecodeError as error:
        yield RawRow(f"{path}:{error.lineno}", error=f"not valid JSON ({error.msg} at column {error.colno})")
        return
    if not isinstance(document, list):
        yield RawRow(f"{path}:1", error="a .json file must hold an array of rows; use .jsonl for one row per line")
        return
    # Walk the array again to learn the line on which each element starts.
    position = text.index("[") + 1
    for element in document:
        while text[position] in " \t\r\n,":
            position += 1
        _, end = decoder.raw_decode(text, position)
        yield RawRow(f"{path}:{text.count(chr(10), 0, position) + 1}", value=element)
        position = end


def _read_csv(path: Path, data: bytes) -> Iterator[RawRow]:
    text, problem = _decode_whole_file(path, data)
    if problem:
        yield problem
        return
    # Long completions exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        yield RawRow(f"{path}:1", error=f"not valid CSV ({error})")
        return
    if len(set(header)) != len(header):
        yield RawRow(f"{path}:1", error="the CSV header repeats a column name")
        return
    if len(header) > 1_000:
        yield RawRow(f"{path}:1", error=f"the CSV header has {len(header):,} columns; a preference file has a handful")
        return
    start_line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield RawRow(f"{path}:{reader.line_num}", error=f"not valid CSV ({error})")
            return
        location = f"{path}:{start_line}"
        start_line = reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield RawRow(location, error=f"has {len(cells)} cells but the header has {len(header)} columns")
            continue
        # Empty cells are absent values, as in every spreadsheet export.
        yield RawRow(location, value={name: cell for name, cell in zip(header, cells, strict=True) if cell != ""})


def _read_arrow_rows(label: str, dataset) -> Iterator[RawRow]:  # noqa: ANN001
    for number, row in enumerate(dataset, start=1):
        yield RawRow(f"{label}:row {number}", value=row)


def _read_parquet(path: Path, compressed: bool) -> Iterator[RawRow]:
    import datasets

    if compressed:
        raise UnreadableFile(f"{path}: Parquet is compressed inside; import the .parquet file without .gz")
    with tempfile.TemporaryDirectory(prefix="rewardlab-import-") as cache_dir:
        try:
            dataset = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache_dir)
        except Exception as error:  # noqa: BLE001 (pyarrow raises many types for a corrupt file)
            raise UnreadableFile(f"{path}: not a readable Parquet file ({type(error).__name__}: {error})") from None
        yield from _read_arrow_rows(str(path), dataset)


def _read_saved_dataset(path: Path) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001
        raise UnreadableFile(
            f"{path}: a folder must be written by datasets.save_to_disk ({type(error).__name__}: {error})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        for split, dataset in loaded.items():
            yield from _read_arrow_rows(f"{path}[{split}]", dataset)
    else:
        yield from _read_arrow_rows(str(path), loaded)


def read_rows(path: Path) -> Iterator[RawRow]:
    """Every row of ``path`` in order. Raises ``UnreadableFile`` when the file as a whole is bad."""
    if not path.exists():
        raise UnreadableFile(f"{path}: no such file or folder")
    if path.is_dir():
        yield from _read_saved_dataset(path)
        return
    suffix, compressed = _format_of(path)
    if suffix == ".parquet":
        yield from _read_parquet(path, compressed)
        return
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, compressed)
        return
    data = _open_bytes(path, compressed)
    if b"\x00" in data and suffix == ".csv":
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        yield RawRow(f"{path}:{line}", error="contains a NUL byte; this is not a text file")
        return
    reader = {".json": _read_json, ".csv": _read_csv}[suffix]
    yield from reader(path, data)
