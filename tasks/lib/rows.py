"""A row as read from a source, before any format is applied, and the JSON decoder rows are parsed with.

Readers (tasks/lib/readers.py, tasks/lib/json_array.py, tasks/lib/hub.py) yield one RawRow per
row found, with its locator; a row that did not even parse carries a RowProblem (a quarantine
reason from tasks/core/reasons.py and a message), so one bad row never fails the file. A problem
with the whole source raises SourceError.

What counts as unreadable besides bad JSON: an object naming one key twice (`duplicate_key`:
Python keeps the last value, other readers the first, so the row has no single meaning); a
number too long for Python's int reader; nesting deeper than the JSON reader allows.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from typing import Any, NamedTuple

import orjson

from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import RAW_PREVIEW_CHARS


class SourceError(ValueError):
    """A whole source cannot be read; the message names the file, the place and what to do."""


class RowProblem(Exception):
    """Why one row cannot become messages: a quarantine reason and a precise message."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class RawRow(NamedTuple):
    """One row as read from the source, before any format is applied (a named tuple rather than a
    dataclass: one is made per row read, and a tuple is made several times faster)."""

    source_row: int  # 1-based line (JSON Lines) or 0-based index (array, Parquet, dataset)
    location: str  # "line 41" / "index 3 (line 5)" / "index 3", as written into decisions
    raw: str  # the line or element as text, for the examples table
    value: Any = None
    problem: RowProblem | None = None  # set when the row did not even parse
    line: int | None = None  # 1-based line the row starts on, in a text file


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as used in error messages.

    >>> json_type(3), json_type([1]), json_type({}), json_type(None), json_type("a")
    ('a number', 'a list', 'an object', 'null', 'text')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# What json.dumps(value, ensure_ascii=False, default=str) builds on every call, made once.
_PREVIEW_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def raw_preview(value: Any) -> str:
    """A parsed row as JSON text, cut to RAW_PREVIEW_CHARS (the catalog's `examples.raw`).

    >>> raw_preview({"instruction": "Say \\"hi\\"", "input": "", "n": 1})
    '{"instruction": "Say \\\\"hi\\\\"", "input": "", "n": 1}'
    """
    if type(value) is dict:
        try:  # the usual row, an object of text fields, spelled out with orjson's string encoder
            text = "{" + ", ".join([_json_text(key) + ": " + _json_text(field) for key, field in value.items()]) + "}"
        except (TypeError, orjson.JSONEncodeError):  # a field that is not text, or a lone surrogate
            text = _PREVIEW_ENCODER.encode(value)
    else:
        text = _PREVIEW_ENCODER.encode(value)
    return escape_surrogates(text[:RAW_PREVIEW_CHARS])


def _json_text(text: str) -> str:
    """A string as json.dumps(text, ensure_ascii=False) writes it (orjson escapes the same
    characters the same way; tests compare every code point), several times faster. Anything but
    a str raises TypeError; a lone surrogate, which orjson refuses, raises JSONEncodeError."""
    if type(text) is not str:
        raise TypeError(type(text).__name__)
    return orjson.dumps(text).decode()


# A lone surrogate comes from an unpaired "\ud800"-style escape; it is not Unicode text and UTF-8
# (hence Parquet) cannot store it, so one such string would fail the write of the whole stage.
_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    """Lone surrogates written back as the JSON escapes they came from, so the text can be stored.

    >>> escape_surrogates("a\\ud800b")
    'a\\\\ud800b'
    """
    return text if text.isascii() else _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_error_text(exc: json.JSONDecodeError) -> str:
    """json's message without its dangling "at" ("Invalid control character at")."""
    return exc.msg.removesuffix(" at")


class DuplicateKey(Exception):
    """Raised by ROW_DECODER when one object names a key twice."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: the object as a dict, or DuplicateKey.

    Python's json keeps the last value of a repeated key and drops the other without a word;
    other readers keep the first or fail. A row whose meaning depends on the reader is
    quarantined rather than read one arbitrary way.
    """
    row = dict(pairs)
    if len(row) < len(pairs):
        raise DuplicateKey(next(key for key, n in Counter(key for key, _ in pairs).items() if n > 1))
    return row


# Rows are parsed by ROW_DECODER; tasks/lib/json_array.py's ARRAY_DECODER (no hook) only finds
# where array elements end.
ROW_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_scan_row = ROW_DECODER.scan_once


def decode_row(text: str) -> Any:
    """ROW_DECODER.decode(text): the same value, or the same exception. The usual line starts
    with its value and ends with it, so the scanner is called on it directly, without decode's
    two whitespace passes; any other text (or one that does not parse) goes through decode.

    >>> decode_row('{"a": [1, 2]}'), decode_row(' {"a": 1} ')
    ({'a': [1, 2]}, {'a': 1})
    """
    try:
        value, end = _scan_row(text, 0)
    except Exception:  # StopIteration or any error decode reports: decode raises it again
        end = -1
    if end == len(text):
        return value
    return ROW_DECODER.decode(text)


# Besides JSONDecodeError, what the row decoder raises for input it cannot represent: a repeated
# key, nesting past the interpreter's recursion limit, and (ValueError) an integer longer than
# sys.get_int_max_str_digits().
UNREADABLE_JSON = (DuplicateKey, RecursionError, ValueError)
TOO_DEEP = "not valid JSON: nested more deeply than Python's JSON reader allows"


def unreadable_json_problem(exc: BaseException) -> RowProblem:
    """The quarantine for one of UNREADABLE_JSON (catch JSONDecodeError, a ValueError, first)."""
    if isinstance(exc, DuplicateKey):
        key = escape_surrogates(json.dumps(exc.key, ensure_ascii=False))
        return RowProblem(
            Reason.DUPLICATE_KEY,
            f"an object names the key {key} twice, so its value depends on the reader; keep one of them",
        )
    if isinstance(exc, RecursionError):
        return RowProblem(Reason.INVALID_JSON, TOO_DEEP)
    return RowProblem(
        Reason.INVALID_JSON,
        f"not valid JSON for this reader: a number with more than {sys.get_int_max_str_digits()} digits; "
        "write such numbers as strings",
    )
