"""File readers: the raw rows of a .jsonl/.ndjson, .json (an array or JSON Lines) or .parquet file.

Sources and eval sets share them, so both accept the same files. Every row gets its locator: the
1-based physical line of a JSON Lines file, the 0-based index of an array element (with the line
it starts on) or of a Parquet row. JSON Lines files are read line by line and Parquet files 4,096
rows at a time; a .json file is read into memory whole and then parsed row by row (an array by
tasks/lib/json_array.py, JSON Lines line by line). A problem with the whole file (missing,
compressed, UTF-16, one pretty-printed object, not Parquet) raises SourceError.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq

from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import RAW_PREVIEW_CHARS
from sftflow.tasks.lib.json_array import iter_json_array_rows
from sftflow.tasks.lib.rows import (
    UNREADABLE_JSON,
    RawRow,
    RowProblem,
    SourceError,
    decode_row,
    json_error_text,
    raw_preview,
    unreadable_json_problem,
)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
FILE_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet")  # the file kinds iter_file_rows reads
UTF8_BOM = b"\xef\xbb\xbf"
PARQUET_BATCH_ROWS = 4096  # bounded memory while streaming a large Parquet file

# First bytes of files that are not UTF-8 text. Read line by line, every line of such a file would
# be quarantined as invalid_encoding, hiding the one fix that applies to the whole file.
NOT_TEXT_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b\x08", "is gzip-compressed; decompress it (gunzip FILE) and point `path` at the result"),
    (b"\x28\xb5\x2f\xfd", "is zstd-compressed; decompress it (zstd -d FILE) and point `path` at the result"),
    (b"\xfd7zXZ\x00", "is xz-compressed; decompress it (xz -d FILE) and point `path` at the result"),
    (b"BZh", "is bzip2-compressed; decompress it (bunzip2 FILE) and point `path` at the result"),
    (b"PK\x03\x04", "is a zip archive; extract it and point `path` at the file inside"),
    (b"\xff\xfe", "is UTF-16 encoded (it starts with a UTF-16 byte-order mark); re-save it as UTF-8"),
    (b"\xfe\xff", "is UTF-16 encoded (it starts with a UTF-16 byte-order mark); re-save it as UTF-8"),
)


def iter_jsonl_rows(lines: Iterable[bytes]) -> Iterator[RawRow]:
    """Rows of JSON Lines: one per non-blank line, located by its 1-based physical line number.

    Lines are split on b"\\n" only (binary iteration): str.splitlines would also split at
    U+2028 and friends, which may appear unescaped inside JSON strings.
    """
    for line_number, line in enumerate(lines, start=1):
        # A BOM may start any line, not only the first: concatenated files (`cat a b`) keep them.
        if line.startswith(UTF8_BOM):
            line = line[len(UTF8_BOM):]
        line = line.rstrip(b"\r\n")
        if not line or line.isspace():  # what `not line.strip()` tests, without copying the line
            continue
        location = f"line {line_number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = RowProblem(
                Reason.INVALID_ENCODING,
                f"byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of the line is not UTF-8; "
                "re-save the file as UTF-8",
            )
            raw = line.decode("utf-8", errors="replace")[:RAW_PREVIEW_CHARS]
            yield RawRow(line_number, location, raw, problem=problem, line=line_number)
            continue
        raw = text[:RAW_PREVIEW_CHARS]
        try:
            value = decode_row(text)
        except json.JSONDecodeError as exc:
            problem = RowProblem(Reason.INVALID_JSON, f"not valid JSON: {json_error_text(exc)} at column {exc.colno}")
            yield RawRow(line_number, location, raw, problem=problem, line=line_number)
            continue
        except UNREADABLE_JSON as exc:
            yield RawRow(line_number, location, raw, problem=unreadable_json_problem(exc), line=line_number)
            continue
        yield RawRow(line_number, location, raw, value, line=line_number)


def iter_indexed_rows(values: Iterable[Any]) -> Iterator[RawRow]:
    """Rows of a table or dataset, located by 0-based index."""
    for index, value in enumerate(values):
        yield RawRow(index, f"index {index}", raw_preview(value), value)

def _jsonl_file_rows(path: Path) -> Iterator[RawRow]:
    with open(path, "rb") as handle:
        yield from iter_jsonl_rows(handle)


def _json_file_rows(path: Path, where: str) -> Iterator[RawRow]:
    """A .json file: a JSON array of rows, or (as many `.json` files really are) JSON Lines."""
    data = path.read_bytes()
    body = data.removeprefix(UTF8_BOM)
    if body.lstrip()[:1] != b"[":
        _refuse_single_object(body, where)
        return iter_jsonl_rows(io.BytesIO(data))
    try:
        return iter_json_array_rows(body.decode("utf-8"), undecodable=False)
    except UnicodeDecodeError:  # elements holding bytes that are not UTF-8 are quarantined one by one
        return iter_json_array_rows(body.decode("utf-8", errors="surrogateescape"))  # see UNDECODABLE_BYTE


def _refuse_single_object(body: bytes, where: str) -> None:
    """A pretty-printed single object (e.g. {"data": [...]}) would read as N broken lines."""
    if sum(1 for line in body.split(b"\n") if line.strip()) < 2:
        return
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError: not UTF-8, not one JSON value, a huge integer
        return  # the usual case: JSON Lines, read line by line
    if isinstance(value, dict):
        raise SourceError(
            f"{where}: the file is one JSON object spanning several lines, not rows; a .json source "
            "must be an array of rows ([{...}, ...]) or one object per line (JSON Lines)"
        )


def _refuse_binary(path: Path, where: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(8)
    for signature, what in NOT_TEXT_SIGNATURES:
        if head.startswith(signature):
            raise SourceError(f"{where}: the file {what}")


def _parquet_file_rows(path: Path, where: str) -> Iterator[RawRow]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a non-Parquet file
        raise SourceError(f"{where}: not a readable Parquet file ({exc}); check the file or its extension") from None
    rows = (row for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS) for row in batch.to_pylist())
    return iter_indexed_rows(rows)


def iter_file_rows(path: Path, where: str | None = None) -> Iterator[RawRow]:
    """The raw rows of one .jsonl/.ndjson, .json (an array or JSON Lines) or .parquet file.

    A row that does not parse comes back with its `problem` set; a problem with the whole file
    raises SourceError starting with `where` (default: the path). Sources and eval sets share it,
    so both accept the same files.
    """
    where = where or str(path)
    if not path.is_file():
        raise SourceError(f"{where}: no such file")
    suffix = path.suffix.lower()
    if suffix in (*JSONL_SUFFIXES, ".json"):
        _refuse_binary(path, where)
    if suffix in JSONL_SUFFIXES:
        return _jsonl_file_rows(path)
    if suffix == ".json":
        return _json_file_rows(path, where)
    if suffix == ".parquet":
        return _parquet_file_rows(path, where)
    raise SourceError(
        f"{where}: unsupported file type {suffix or '(no extension)'!r}; use .jsonl, .ndjson, "
        ".json (an array or JSON Lines) or .parquet"
    )
