"""A JSON array parsed one element at a time, so one broken element is one quarantined row.

The parser works on the array's text, already in memory (tasks/lib/readers.py reads a .json file
whole): each element is decoded on its own with raw_decode, and after an element that does not
parse, reading resumes at the ',' or ']' that ends it. Rows are yielded as they are parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import RAW_PREVIEW_CHARS
from sftflow.tasks.lib.rows import (
    ROW_DECODER,
    UNREADABLE_JSON,
    RawRow,
    RowProblem,
    json_error_text,
    raw_preview,
    unreadable_json_problem,
)

# JSON arrays are read one element at a time with raw_decode, so a broken element is one
# quarantined row and the elements after it are still read.
ARRAY_DECODER = json.JSONDecoder()
# An array file is decoded with errors="surrogateescape": a byte that is not UTF-8 becomes one
# of these code points (valid UTF-8 never decodes to them), so the element holding it can be
# quarantined alone instead of failing the file.
UNDECODABLE_BYTE = re.compile("[\udc80-\udcff]")
JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
JSON_STRUCTURE = re.compile(r'[\\"{}\[\],]')  # the characters the resynchronising scan looks at
# How far the bracket scan looks for a broken element's end: one missing quote can send it to
# the end of a large file, once per broken element; past this, the row-shaped-object search decides.
RESYNC_SCAN_CHARS = 1_000_000
CUT_SHORT = (
    "; the element does not end before the end of the file (a quote or bracket is missing, "
    "or the file was cut short)"
)


def _skip_whitespace(text: str, pos: int) -> int:
    return JSON_WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]  # `*` always matches


class _LineCounter:
    """1-based line of a position; positions only grow, so all lookups together cost one pass."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _structural_end(text: str, start: int) -> tuple[int, str]:
    """Where the element starting at `start` ends by its brackets and strings: the position of the
    ',' or ']' that follows it at the array's level, and that character ('' when none is found
    within RESYNC_SCAN_CHARS)."""
    depth, in_string, escaped_at = 0, False, -1
    for match in JSON_STRUCTURE.finditer(text, start, start + RESYNC_SCAN_CHARS):
        pos, char = match.start(), match.group()
        if in_string:
            if pos == escaped_at:
                continue
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            if depth:
                depth -= 1
            elif char == "]":
                return pos, char
            # a stray '}' at the array's level is part of the broken element
        elif char == "," and depth == 0:
            return pos, char
    return len(text), ""


def _whole_element_at(text: str, pos: int, keys: frozenset[str] | None = None) -> bool:
    """Whether a whole element starts at `pos` (after whitespace) and a ',' or the array's final
    ']' follows it. With `keys`, it must also be an object sharing a key with them (a row, not a
    turn object of a nested list)."""
    pos = _skip_whitespace(text, pos)
    if keys is not None and not text.startswith("{", pos):
        return False
    try:
        value, end = ARRAY_DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, or an over-long integer
        return False
    if keys and not (isinstance(value, dict) and keys & value.keys()):
        return False
    after = _skip_whitespace(text, end)
    return text[after : after + 1] == "," or _closes_array(text, after)


def _element_or_end_at(text: str, pos: int) -> bool:
    """After a ',': a whole element, or the array's final ']' (a trailing comma)."""
    return _whole_element_at(text, pos) or _closes_array(text, _skip_whitespace(text, pos))


def _closes_array(text: str, pos: int) -> bool:
    """A ']' at `pos` followed by nothing, or by another array (`cat a.json b.json`)."""
    if text[pos : pos + 1] != "]":
        return False
    rest = _skip_whitespace(text, pos + 1)
    return rest == len(text) or text[rest] == "["


def _resync(text: str, start: int, keys: frozenset[str]) -> tuple[int, str]:
    """Where the broken element starting at `start` ends: the position of the ',' or ']' after it,
    and that character ('' when it runs to the end of the file).

    The bracket-and-string scan is right unless the element's own mistake misleads it: one
    missing quote turns every later string inside out. Its answer is trusted when a whole
    element (or the array's end) follows; otherwise the element ends at the first ',' followed
    by a whole object that shares a key with the rows before (quotes inside a valid string are
    escaped, so no object parses from inside one), or at the file's final ']'.
    """
    end, char = _structural_end(text, start)
    if char == "," and _element_or_end_at(text, end + 1) or char == "]" and _closes_array(text, end):
        return end, char
    comma = text.find(",", start)
    while comma != -1:
        if _whole_element_at(text, comma + 1, keys):
            return comma, ","
        comma = text.find(",", comma + 1)
    if char:
        return end, char
    final = len(text.rstrip(" \t\n\r")) - 1
    if final > start and text[final] == "]":
        return final, "]"
    return len(text), ""


def _text_position(text: str, pos: int) -> str:
    """"line 3, column 7" of a position (only for error messages: it counts from the start)."""
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"line {line}, column {column}"


def iter_json_array_rows(text: str, undecodable: bool | None = None) -> Iterator[RawRow]:
    """Rows of a JSON array (the text starts with '[' after whitespace), one element at a time.

    Each element is located by its 0-based index and the line it starts on. An element that does
    not parse is an INVALID_JSON row and reading resumes after it; a file cut short ends with an
    INVALID_JSON row for its last element, so every element started is accounted for. A comma
    before the closing ']' is not a row; arrays written one after another are read as one. An
    element holding a byte that was not UTF-8 (see UNDECODABLE_BYTE) is an INVALID_ENCODING row.
    `undecodable=False` says the text came from valid UTF-8, so it holds no such byte (the text is
    not scanned for them).
    """
    lines = _LineCounter(text)
    index = 0
    keys: frozenset[str] = frozenset()  # of the last object read: what a row of this file looks like
    if undecodable is None:
        undecodable = UNDECODABLE_BYTE.search(text) is not None  # one scan; elements only when needed
    pos = _skip_whitespace(text, 0)
    while pos < len(text):
        if text[pos] != "[":
            line = lines.at(pos)
            problem = RowProblem(Reason.INVALID_JSON, "not valid JSON: text after the array's closing ']'")
            raw = _raw_text(text[pos:].strip()[:RAW_PREVIEW_CHARS])
            yield RawRow(index, f"index {index} (line {line})", raw, problem=problem, line=line)
            return
        pos = _skip_whitespace(text, pos + 1)
        while not text.startswith("]", pos):  # "[]", or "[a, b,]": that comma starts no row
            line = lines.at(pos)
            location = f"index {index} (line {line})"
            value, problem, end = _read_element(text, pos)
            if end < 0:  # the element did not parse: find where it ends
                end, _ = _resync(text, pos, keys)
                if end == len(text):
                    problem = RowProblem(problem.reason, problem.message + CUT_SHORT)
            bad_byte = undecodable and UNDECODABLE_BYTE.search(text, pos, end)
            if bad_byte:  # the cause of any other problem of the element, so it is the one reported
                problem = RowProblem(
                    Reason.INVALID_ENCODING,
                    f"byte 0x{ord(bad_byte.group()) - 0xDC00:02x} at {_text_position(text, bad_byte.start())} "
                    "is not UTF-8; re-save the file as UTF-8",
                )
            if problem is None:
                keys = frozenset(value) if isinstance(value, dict) else keys
                yield RawRow(index, location, raw_preview(value), value, line=line)
            else:
                raw = _raw_text(text[pos:end].strip()[:RAW_PREVIEW_CHARS])
                yield RawRow(index, location, raw, problem=problem, line=line)
            index += 1
            if end == len(text):
                return
            if text[end] == "]":
                pos = end
                break
            pos = _skip_whitespace(text, end + 1)
        pos = _skip_whitespace(text, pos + 1)  # past the ']'; another array may follow


def _read_element(text: str, start: int) -> tuple[Any, RowProblem | None, int]:
    """(value, None, position of the ',' or ']' after it) for a whole element; (None, problem, that
    position) for a whole element the row decoder refuses (a repeated key); (None, problem, -1)
    when it does not parse; (None, problem, end of text) when the array never closes after it."""
    problem = None
    try:
        value, end = ROW_DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        message = f"not valid JSON: {json_error_text(exc)} at line {exc.lineno}, column {exc.colno}"
        return None, RowProblem(Reason.INVALID_JSON, message), -1
    except UNREADABLE_JSON as exc:
        value, problem = None, unreadable_json_problem(exc)
        try:  # a repeated key leaves the element whole: the plain decoder finds its end
            _, end = ARRAY_DECODER.raw_decode(text, start)
        except UNREADABLE_JSON:
            return None, problem, -1
    end = _skip_whitespace(text, end)
    if text[end : end + 1] in (",", "]"):
        return value, problem, end
    if end == len(text):
        message = "not valid JSON: the file ends without the array's closing ']' (was it cut short?)"
        return None, RowProblem(Reason.INVALID_JSON, message), end
    message = f"not valid JSON: expected ',' or ']' after the element at {_text_position(text, end)}"
    return None, RowProblem(Reason.INVALID_JSON, message), -1


def _raw_text(text: str) -> str:
    """A slice of an array file as storable text: undecodable bytes become U+FFFD, as in JSON Lines."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
