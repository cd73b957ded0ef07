"""Ingest: read one source row by row into the record type, with one decision per row read.

A source is a local file or folder (`.jsonl`, `.json`, `.parquet`, or a folder written by
`datasets.save_to_disk`) or a Hugging Face dataset id. Every row gets a `source_row` locator
(the 1-based physical line of a JSON Lines file, the 0-based index of an array, Parquet file or
dataset; an array element's location also names the line it starts on), and
`example_id = short_hash(source name, source_row)`, so a row keeps its id across
re-runs and across edits to other rows of the file.

Ingest only maps a format to `messages` (roles system | user | assistant | tool, text content).
It does not trim, NFC-normalize or check turn order: normalize does that, so the catalog keeps
"could not be read" (ingest) apart from "is not a valid conversation" (normalize). A row that
cannot become messages is quarantined with a reason from tasks/core/reasons.py and the detail
{"location": "line 41" | "index 3 (line 5)" | "index 3", "error": "..."}; one bad row never fails
the file, and a JSON array is read element by element, so one element that does not parse (or
holds bytes that are not UTF-8) is quarantined alone. The same locator is kept on each record
(`source_location`), so later stages name the same place. A problem with the whole source
(missing file, no rows, no readable row at all, a compressed or UTF-16 file) raises SourceError
naming the file, the place and what to do.

What counts as unreadable besides bad JSON: an object naming one key twice (`duplicate_key`:
Python keeps the last value, other readers the first, so the row has no single meaning); a
number too long for Python's int reader; nesting deeper than the JSON reader allows; text
holding NUL (U+0000) or a lone UTF-16 surrogate from an unpaired "\\ud800" escape
(`invalid_encoding`: neither is text, and a surrogate cannot even be written to Parquet). The
`id` column, like every column the format does not name, is ignored: two rows with one id are
two examples (their example_ids come from their places in the file).

A hub id must name a hub dataset: local data goes through `path`, which is confined to the
project and SFTFLOW_DATA_DIRS.

Formats. `columns` renames fields ({format's name: source's name}); `role_map` adds speakers.
- alpaca: instruction, input, output, optional system and history ([user, assistant] pairs).
  The user turn is the instruction, followed by a blank line and the input when the input is
  not blank. No prompt template is added: the chat template does that at training time.
- sharegpt: `conversations` (a list, or a JSON string holding one) of {from, value} turns, and an
  optional row-level `system`. function_call turns become assistant turns holding the call
  text, observation turns become tool turns; with `tool_turns: quarantine` such rows are
  quarantined instead. Rows whose turns all use {role, content} are read too; mixing both key
  pairs in one row is `mixed_schema`.
- openai: `messages` of {role, content}; developer -> system, function -> tool. A list of
  content parts is flattened when every part is text (joined by newlines); an assistant turn's
  `tool_calls` become its content as compact JSON. `tool_turns: quarantine` applies here too.
Speaker names are matched case-insensitively. Columns the record type has no place for are
ignored: ShareGPT's `tools`, OpenAI's `tool_call_id` and `name`, any extra metadata column.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.hashing import HASH_CHARS, sha256_file, sha256_text, sha256_tree, short_hash
from tasks.core.reasons import Reason
from tasks.core.recipe import SourceConfig
from tasks.core.records import (
    EXAMPLE_SCHEMA,
    RAW_PREVIEW_CHARS,
    RECORD_SCHEMA,
    DecisionLog,
    PartedOutput,
    StageOutput,
)
from tasks.core.stage import PART_ROWS, StageCall, stage_task
from tasks.core.workspace import PathNotAllowed, is_hub_id

LIBRARIES = ("pyarrow", "datasets")

JSONL_SUFFIXES = (".jsonl", ".ndjson")
FILE_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet")  # the file kinds iter_file_rows reads
UTF8_BOM = b"\xef\xbb\xbf"
PARQUET_BATCH_ROWS = 4096  # bounded memory while streaming a large Parquet file
FIRST_PROBLEMS_SHOWN = 3  # in the "0 of N rows" error: enough to see a pattern, short to read

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

Message = dict[str, str]

# Built-in speaker maps; a source's `role_map` is added on top (and wins).
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant",
    "function_call": "assistant",  # the call text is what the model learns to emit
    "observation": "tool", "tool": "tool",
}
OPENAI_ROLES: dict[str, str] = {
    "system": "system", "developer": "system",
    "user": "user", "assistant": "assistant",
    "tool": "tool", "function": "tool",
}
SHAREGPT_TOOL_SPEAKERS = frozenset({"function_call"})  # tool turns besides those mapped to "tool"

# The two key pairs a turn can use; which one a turn uses is read from its non-null values,
# because Arrow-backed rows (Parquet, datasets) fill every struct key, absent ones with None.
FROM_VALUE = ("from", "value")
ROLE_CONTENT = ("role", "content")

# Logical field names each format knows: the keys `columns` may rename.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "system", *FROM_VALUE, *ROLE_CONTENT),
    "openai": ("messages", *ROLE_CONTENT, *FROM_VALUE, "tool_calls"),
}


class SourceError(ValueError):
    """A whole source cannot be read; the message names the file, the place and what to do."""


class RowProblem(Exception):
    """Why one row cannot become messages: a quarantine reason and a precise message."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RawRow:
    """One row as read from the source, before any format is applied."""

    source_row: int  # 1-based line (JSON Lines) or 0-based index (array, Parquet, dataset)
    location: str  # "line 41" / "index 3 (line 5)" / "index 3", as written into decisions
    raw: str  # the line or element as text, for the examples table
    value: Any = None
    problem: RowProblem | None = None  # set when the row did not even parse
    line: int | None = None  # 1-based line the row starts on, in a text file


# ------------------------------------------------------------------------------ small helpers --
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
    """A parsed row as JSON text, cut to RAW_PREVIEW_CHARS (the catalog's `examples.raw`)."""
    return escape_surrogates(_PREVIEW_ENCODER.encode(value)[:RAW_PREVIEW_CHARS])


# A lone surrogate comes from an unpaired "\ud800"-style escape; it is not Unicode text and UTF-8
# (hence Parquet) cannot store it, so one such string would fail the write of the whole stage.
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    """Lone surrogates written back as the JSON escapes they came from, so the text can be stored.

    >>> escape_surrogates("a\\ud800b")
    'a\\\\ud800b'
    """
    return text if text.isascii() else _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _storable(text: str) -> bool:
    """Whether text holds neither NUL nor a lone surrogate (what _check_storable refuses)."""
    if "\x00" not in text and text.isascii():  # the common case, tested at C speed
        return True
    return _NOT_TEXT.search(text) is None


def _check_storable(text: str, what: str) -> None:
    """Refuse text holding NUL or a lone surrogate (invalid_encoding), naming the field."""
    if "\x00" not in text and text.isascii():  # the common case, tested at C speed
        return
    found = _NOT_TEXT.search(text)
    if found is None:
        return
    at = f"at character {found.start()}"
    if found.group() == "\x00":
        what_is_wrong = f"a NUL character (U+0000) {at}: binary data, not text"
    else:
        what_is_wrong = (f"a lone surrogate \\u{ord(found.group()):04x} {at} (half of a UTF-16 pair, from "
                         "an unpaired escape): not valid Unicode text")
    raise RowProblem(Reason.INVALID_ENCODING, f"field {what} holds {what_is_wrong}; fix the export that wrote it")


def _column(source: SourceConfig, logical: str) -> str:
    return source.columns.get(logical, logical)


def _quoted(source: SourceConfig, logical: str) -> str:
    """'"prompt" (instruction)' when renamed, so the message matches both file and docs."""
    name = _column(source, logical)
    return f'"{name}"' if name == logical else f'"{name}" ({logical})'


def _require_text(value: Any, what: str, *, present: bool = True) -> str:
    if not present:
        raise RowProblem(Reason.MISSING_FIELD, f"missing field {what}")
    if value is None:
        raise RowProblem(Reason.MISSING_FIELD, f"field {what} is null")
    if not isinstance(value, str):
        raise RowProblem(Reason.WRONG_TYPE, f"field {what} is {json_type(value)}, expected text")
    _check_storable(value, what)
    return value


def _required_field(row: dict[str, Any], source: SourceConfig, logical: str) -> str:
    name = _column(source, logical)
    value = row.get(name)
    if type(value) is str and _storable(value):  # valid text: skip building the field's name
        return value
    return _require_text(value, _quoted(source, logical), present=name in row)


def _optional_field(row: dict[str, Any], source: SourceConfig, logical: str) -> str:
    """Text of an optional field; absent and null both read as ''."""
    value = row.get(_column(source, logical))
    if value is None:
        return ""
    if type(value) is str and _storable(value):
        return value
    return _require_text(value, _quoted(source, logical))


# How json.dumps(..., ensure_ascii=False) writes a string (the C encoder when it is built).
_json_string = json.encoder.encode_basestring


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------- alpaca --
def alpaca_messages(row: dict[str, Any], source: SourceConfig) -> list[Message]:
    """Alpaca fields to messages: [system] + history pairs + user(instruction, input) + assistant.

    >>> src = SourceConfig(name="a", format="alpaca", path="a.json")
    >>> alpaca_messages({"instruction": "Add.", "input": "2+2", "output": "4"}, src)
    [{'role': 'user', 'content': 'Add.\\n\\n2+2'}, {'role': 'assistant', 'content': '4'}]
    """
    instruction = _required_field(row, source, "instruction")
    extra_input = _optional_field(row, source, "input")
    output = _required_field(row, source, "output")
    system = _optional_field(row, source, "system")
    messages: list[Message] = []
    if system.strip():  # LLaMA-Factory style files carry "system": "" on rows without one
        messages.append({"role": "system", "content": system})
    messages.extend(_alpaca_history(row, source))
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return messages


def _alpaca_history(row: dict[str, Any], source: SourceConfig) -> list[Message]:
    history = row.get(_column(source, "history"))
    if history is None:
        return []
    name = _quoted(source, "history")
    if not isinstance(history, (list, tuple)):
        raise RowProblem(
            Reason.WRONG_TYPE, f"field {name} is {json_type(history)}, expected a list of [user, assistant] pairs"
        )
    messages: list[Message] = []
    for index, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            shape = f"a list of {len(pair)}" if isinstance(pair, (list, tuple)) else json_type(pair)
            raise RowProblem(Reason.WRONG_TYPE, f"field {name}[{index}] is {shape}, expected a [user, assistant] pair")
        for position, role in enumerate(("user", "assistant")):
            text = _require_text(pair[position], f"{name}[{index}] {role} text")
            messages.append({"role": role, "content": text})
    return messages


# ------------------------------------------------------------------- sharegpt and openai turns --
def _turn_list(row: dict[str, Any], source: SourceConfig, logical: str) -> list[Any]:
    """The list of turns; a JSON string holding the list (common in CSV/Parquet exports) is parsed."""
    name = _column(source, logical)
    what = _quoted(source, logical)
    if name not in row:
        raise RowProblem(Reason.MISSING_FIELD, f"missing field {what}")
    turns = row[name]
    if turns is None:
        raise RowProblem(Reason.MISSING_FIELD, f"field {what} is null")
    if isinstance(turns, str):
        try:
            turns = ROW_DECODER.decode(turns)
        except json.JSONDecodeError as exc:
            raise RowProblem(
                Reason.INVALID_JSON,
                f"field {what} is text that is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            ) from None
        except UNREADABLE_JSON as exc:
            problem = _unreadable(exc)
            raise RowProblem(problem.reason, f"field {what} is text holding JSON that cannot be read: "
                                             f"{problem.message}") from None
    if not isinstance(turns, (list, tuple)):
        raise RowProblem(Reason.WRONG_TYPE, f"field {what} is {json_type(turns)}, expected a list of turns")
    return list(turns)


@dataclass(frozen=True)
class Turn:
    index: int
    keys: tuple[str, str]  # FROM_VALUE or ROLE_CONTENT (logical names)
    speaker: str
    text_key: str  # the source's actual key of the text
    text: Any  # not yet checked: openai allows null content next to tool_calls, and part lists
    fields: dict[str, Any]


def _read_turns(turns: list[Any], source: SourceConfig, default_keys: tuple[str, str]) -> list[Turn]:
    """Check each turn's shape and key pair; a row must use one key pair throughout."""
    read: list[Turn] = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowProblem(Reason.WRONG_TYPE, f"turn {index} is {json_type(turn)}, expected an object")
        used = [
            keys for keys in (FROM_VALUE, ROLE_CONTENT)
            if any(turn.get(_column(source, key)) is not None for key in keys)
        ]
        if len(used) > 1:
            raise RowProblem(Reason.MIXED_SCHEMA, f"turn {index} mixes from/value and role/content keys")
        keys = used[0] if used else default_keys
        if read and keys != read[0].keys:
            raise RowProblem(
                Reason.MIXED_SCHEMA,
                f"turn {index} uses {'/'.join(keys)} keys but turn 0 uses {'/'.join(read[0].keys)}",
            )
        speaker_key, text_key = (_column(source, key) for key in keys)
        try:
            speaker = _require_text(turn.get(speaker_key), f'"{speaker_key}"', present=speaker_key in turn)
        except RowProblem as problem:
            raise _with_turn(index, problem) from None
        read.append(Turn(index, keys, speaker, text_key, turn.get(text_key), turn))
    return read


def _with_turn(index: int, problem: RowProblem) -> RowProblem:
    return RowProblem(problem.reason, f"turn {index}: {problem.message}")


def _role_table(builtin: dict[str, str], source: SourceConfig) -> dict[str, str]:
    return {**builtin, **{name.lower(): role for name, role in source.role_map.items()}}


def _resolve_role(turn: Turn, roles: dict[str, str]) -> str:
    role = roles.get(turn.speaker.strip().lower())
    if role is None:
        raise RowProblem(
            Reason.UNKNOWN_ROLE,
            f'turn {turn.index}: unknown role "{turn.speaker}"; map it to a role with the source\'s role_map',
        )
    return role


def _quarantine_tool_turn(turn: Turn, source: SourceConfig, what: str) -> None:
    if source.tool_turns == "quarantine":
        raise RowProblem(
            Reason.TOOL_TURN_QUARANTINED, f'turn {turn.index}: {what} and the source sets tool_turns: quarantine'
        )


def _turn_text(turn: Turn) -> str:
    try:
        return _require_text(turn.text, f'"{turn.text_key}"', present=turn.text_key in turn.fields)
    except RowProblem as problem:
        raise _with_turn(turn.index, problem) from None


def sharegpt_messages(row: dict[str, Any], source: SourceConfig) -> list[Message]:
    """ShareGPT `conversations` to messages, with an optional row-level system turn first.

    >>> src = SourceConfig(name="s", format="sharegpt", path="s.json")
    >>> sharegpt_messages({"conversations": [{"from": "human", "value": "Hi"},
    ...                                      {"from": "gpt", "value": "Hello"}]}, src)
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    """
    system = _optional_field(row, source, "system")
    turns = _read_turns(_turn_list(row, source, "conversations"), source, FROM_VALUE)
    roles = _role_table(SHAREGPT_ROLES, source)
    messages: list[Message] = [{"role": "system", "content": system}] if system.strip() else []
    for turn in turns:
        role = _resolve_role(turn, roles)
        if role == "tool" or turn.speaker.strip().lower() in SHAREGPT_TOOL_SPEAKERS:
            _quarantine_tool_turn(turn, source, f'"{turn.speaker}" is a tool turn')
        messages.append({"role": role, "content": _turn_text(turn)})
    return messages


def openai_messages(row: dict[str, Any], source: SourceConfig) -> list[Message]:
    """OpenAI `messages` to messages: roles mapped, text parts flattened, tool calls as JSON text.

    >>> src = SourceConfig(name="o", format="openai", path="o.jsonl")
    >>> openai_messages({"messages": [{"role": "developer", "content": "Be brief."},
    ...                               {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}, src)
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    turns = _read_turns(_turn_list(row, source, "messages"), source, ROLE_CONTENT)
    roles = _role_table(OPENAI_ROLES, source)
    messages: list[Message] = []
    for turn in turns:
        role = _resolve_role(turn, roles)
        if role == "tool":
            _quarantine_tool_turn(turn, source, f'"{turn.speaker}" is a tool turn')
        messages.append({"role": role, "content": _openai_content(turn, role, source)})
    return messages


def _openai_content(turn: Turn, role: str, source: SourceConfig) -> str:
    # The legacy `function_call` field is the single-call form of `tool_calls`.
    calls = turn.fields.get(_column(source, "tool_calls")) or turn.fields.get("function_call")
    if role != "assistant" or not calls:
        return _content_text(turn)
    _quarantine_tool_turn(turn, source, "an assistant turn with tool_calls")
    calls_json = _compact_json(calls)
    try:
        _check_storable(calls_json, '"tool_calls"')
    except RowProblem as problem:
        raise _with_turn(turn.index, problem) from None
    if turn.text is None:  # the usual shape: the call is the whole turn
        return calls_json
    text = _content_text(turn)
    return f"{text}\n\n{calls_json}" if text.strip() else calls_json  # keep both, lose nothing


def _content_text(turn: Turn) -> str:
    """Text content, or a list of parts that are all text (joined by newlines)."""
    if not isinstance(turn.text, (list, tuple)):
        return _turn_text(turn)
    texts = []
    for position, part in enumerate(turn.text):
        where = f"turn {turn.index}: content part {position}"
        if not isinstance(part, dict):
            raise RowProblem(Reason.WRONG_TYPE, f"{where} is {json_type(part)}, expected an object with type and text")
        kind = part.get("type")
        if kind != "text":
            raise RowProblem(
                Reason.UNSUPPORTED_CONTENT, f"{where} has type {_compact_json(kind)}; only text parts can be ingested"
            )
        try:
            texts.append(_require_text(part.get("text"), '"text"', present="text" in part))
        except RowProblem as problem:
            raise RowProblem(problem.reason, f"{where}: {problem.message}") from None
    return "\n".join(texts)


ADAPTERS: dict[str, Callable[[dict[str, Any], SourceConfig], list[Message]]] = {
    "alpaca": alpaca_messages,
    "sharegpt": sharegpt_messages,
    "openai": openai_messages,
}


def row_messages(value: Any, source: SourceConfig) -> list[Message]:
    """One parsed row to messages with the source's format adapter, or RowProblem."""
    if not isinstance(value, dict):
        raise RowProblem(
            Reason.NOT_AN_OBJECT, f"the row is {json_type(value)}, expected an object with the {source.format} fields"
        )
    return ADAPTERS[source.format](value, source)


# ---------------------------------------------------------------------------------- readers --
def iter_jsonl_rows(lines: Iterable[bytes]) -> Iterator[RawRow]:
    """Rows of JSON Lines: one per non-blank line, located by its 1-based physical line number.

    Lines are split on b"\\n" only (binary iteration): str.splitlines would also split at
    U+2028 and friends, which may appear unescaped inside JSON strings.
    """
    for line_number, line in enumerate(lines, start=1):
        # A BOM may start any line, not only the first: concatenated files (`cat a b`) keep them.
        line = line.removeprefix(UTF8_BOM).rstrip(b"\r\n")
        if not line.strip():
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
            value = ROW_DECODER.decode(text)
        except json.JSONDecodeError as exc:
            problem = RowProblem(Reason.INVALID_JSON, f"not valid JSON: {_decode_message(exc)} at column {exc.colno}")
            yield RawRow(line_number, location, raw, problem=problem, line=line_number)
            continue
        except UNREADABLE_JSON as exc:
            yield RawRow(line_number, location, raw, problem=_unreadable(exc), line=line_number)
            continue
        yield RawRow(line_number, location, raw, value, line=line_number)


def _decode_message(exc: json.JSONDecodeError) -> str:
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


# Rows are parsed by ROW_DECODER; ARRAY_DECODER (no hook) only finds where elements end.
ROW_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
# Besides JSONDecodeError, what the row decoder raises for input it cannot represent: a repeated
# key, nesting past the interpreter's recursion limit, and (ValueError) an integer longer than
# sys.get_int_max_str_digits().
UNREADABLE_JSON = (DuplicateKey, RecursionError, ValueError)


def _unreadable(exc: BaseException) -> RowProblem:
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


def iter_indexed_rows(values: Iterable[Any]) -> Iterator[RawRow]:
    """Rows of a table or dataset, located by 0-based index."""
    for index, value in enumerate(values):
        yield RawRow(index, f"index {index}", raw_preview(value), value)


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
TOO_DEEP = "not valid JSON: nested more deeply than Python's JSON reader allows"
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


def iter_json_array_rows(text: str) -> Iterator[RawRow]:
    """Rows of a JSON array (the text starts with '[' after whitespace), one element at a time.

    Each element is located by its 0-based index and the line it starts on. An element that does
    not parse is an INVALID_JSON row and reading resumes after it; a file cut short ends with an
    INVALID_JSON row for its last element, so every element started is accounted for. A comma
    before the closing ']' is not a row; arrays written one after another are read as one. An
    element holding a byte that was not UTF-8 (see UNDECODABLE_BYTE) is an INVALID_ENCODING row.
    """
    lines = _LineCounter(text)
    index = 0
    keys: frozenset[str] = frozenset()  # of the last object read: what a row of this file looks like
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
        message = f"not valid JSON: {_decode_message(exc)} at line {exc.lineno}, column {exc.colno}"
        return None, RowProblem(Reason.INVALID_JSON, message), -1
    except UNREADABLE_JSON as exc:
        value, problem = None, _unreadable(exc)
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


def _saved_dataset_rows(source: SourceConfig, path: Path, where: str) -> Iterator[RawRow]:
    import datasets  # heavy import: only for sources that need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError and friends for a folder that is not a saved dataset
        raise SourceError(
            f"{where}: not a dataset folder written by datasets.save_to_disk ({exc}); "
            "point `path` at such a folder or at a .jsonl/.json/.parquet file"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if source.hf_split not in loaded:
            raise SourceError(
                f"{where}: the dataset has no split {source.hf_split!r} (it has: "
                f"{', '.join(sorted(loaded))}); set `hf_split` in the recipe"
            )
        loaded = loaded[source.hf_split]
    return iter_indexed_rows(loaded)


# ------------------------------------------------------------------------------- hub ids --
USE_PATH = "use `path:` for local data (paths are confined to the project and SFTFLOW_DATA_DIRS)"
# datasets' packaged builders (load_dataset("json") reads the current folder's files); the
# installed library's own list is used when it can be read.
LOCAL_BUILDERS = frozenset({
    "arrow", "audiofolder", "csv", "imagefolder", "json", "pandas", "parquet", "pdffolder", "sql",
    "text", "videofolder", "webdataset", "xml",
})


def _local_builders() -> frozenset[str]:
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # a datasets version that moved it: the fixed list still applies
        return LOCAL_BUILDERS
    return LOCAL_BUILDERS | {name.lower() for name in _PACKAGED_DATASETS_MODULES}


def check_hub_id(hf_dataset: str) -> None:
    """Refuse an `hf_dataset` that is not a hub id (`name` or `org/name`), so load_dataset never
    reads local files: that would escape path confinement and key the cache on a name, not bytes.

    >>> check_hub_id("tatsu-lab/alpaca")
    >>> check_hub_id("../data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tasks.core.workspace.PathNotAllowed: hf_dataset '../data' looks like a local path, ...; use `path:` for local data ...
    """
    if "\x00" in hf_dataset:
        raise PathNotAllowed(f"hf_dataset {hf_dataset!r} contains a NUL byte; {USE_PATH}")
    if hf_dataset.startswith(("/", ".", "~")) or ".." in hf_dataset or "\\" in hf_dataset:
        raise PathNotAllowed(f"hf_dataset {hf_dataset!r} looks like a local path, not a hub dataset id; {USE_PATH}")
    if hf_dataset.lower() in _local_builders():
        raise PathNotAllowed(
            f"hf_dataset {hf_dataset!r} names a datasets builder that reads local files, not a hub dataset; {USE_PATH}"
        )
    if not is_hub_id(hf_dataset):
        raise PathNotAllowed(
            f"hf_dataset {hf_dataset!r} is not a hub dataset id (`name` or `org/name`: letters, digits, "
            f"'-', '_', '.'); {USE_PATH}"
        )
    if Path(hf_dataset).exists():  # load_dataset would read it from the current folder
        raise PathNotAllowed(
            f"hf_dataset {hf_dataset!r} names a local file or folder ({Path(hf_dataset).resolve()}); {USE_PATH}"
        )


def _hub_id(source: SourceConfig) -> str:
    if source.hf_dataset is None:
        raise SourceError(f"source {source.name!r}: no resolved path given and no `hf_dataset` set")
    try:
        check_hub_id(source.hf_dataset)
    except PathNotAllowed as exc:
        raise PathNotAllowed(f"source {source.name!r}: {exc}") from None
    return source.hf_dataset


def _hub_dataset_rows(source: SourceConfig, where: str) -> Iterator[RawRow]:
    import datasets

    hub_id = _hub_id(source)
    try:
        dataset = datasets.load_dataset(hub_id, split=source.hf_split, revision=source.hf_revision)
    except Exception as exc:  # network, auth, missing split, offline mode: all end the source
        raise SourceError(
            f"{where}: could not load the hub dataset ({type(exc).__name__}: {exc}); check `hf_dataset`, "
            "`hf_split` and `hf_revision`, or save it locally with save_to_disk and use `path`"
        ) from None
    return iter_indexed_rows(dataset)


def source_rows(source: SourceConfig, path: Path | None) -> Iterator[RawRow]:
    """The raw rows of a source, whatever its kind; file-level problems raise SourceError."""
    where = f"source {source.name!r} ({source_uri(source, path)})"
    if path is None:
        return _hub_dataset_rows(source, where)
    if path.is_dir():
        return _saved_dataset_rows(source, path, where)
    if not path.is_file():
        raise SourceError(f"{where}: no such file or folder; fix `path` in the recipe (relative to the project root)")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise SourceError(
            f"{where}: unsupported file type {suffix or '(no extension)'!r}; use .jsonl, .json (an array or "
            "JSON Lines), .parquet, or a folder written by datasets.save_to_disk"
        )
    return iter_file_rows(path, where)


# ------------------------------------------------------------------------------- the stage --
def source_uri(source: SourceConfig, path: Path | None, root: Path | None = None) -> str:
    """Where the rows came from, as written into records and the catalog: a path relative to the
    project root when the file is under it (so an artifact's bytes do not depend on where the
    project is checked out: a copied or moved project reuses it byte for byte), else the absolute
    path, or the hub dataset id.

    >>> source_uri(SourceConfig(name="a", format="alpaca", path="x"), Path("/p/data/a.json"), Path("/p"))
    'data/a.json'
    """
    if path is not None:
        if root is not None and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
        return str(path)
    return f"hf://{source.hf_dataset}@{source.hf_revision or 'main'}/{source.hf_split}"


def source_fingerprint(source: SourceConfig, path: Path | None) -> str:
    """What identifies the source's bytes in the cache key: a file's sha256, a folder's tree hash,
    or the hub id, revision and split (an unpinned hub dataset that changes is not detected; an
    id that would read local files is refused by check_hub_id)."""
    if path is None:
        return f"hf:{_hub_id(source)}@{source.hf_revision or 'main'}/{source.hf_split}"
    if path.is_dir():
        return sha256_tree(path)
    if path.is_file():
        return sha256_file(path)
    raise SourceError(f"source {source.name!r} ({path}): no such file or folder; fix `path` in the recipe")


def check_columns(source: SourceConfig) -> None:
    """A renamed field the format does not know is a typo that would silently do nothing."""
    known = FORMAT_FIELDS[source.format]
    unknown = sorted(set(source.columns) - set(known))
    if unknown:
        raise SourceError(
            f"source {source.name!r}: `columns` renames {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not {source.format} fields; {source.format} fields "
            f"are: {', '.join(known)}"
        )


def read_source(source: SourceConfig, path: Path | None, root: Path | None = None) -> StageOutput:
    """`read_source_parts` collected into one StageOutput (for tests and small sources)."""
    output = read_source_parts(source, path, root)
    parts = list(output.parts)
    return StageOutput(
        records=pa.concat_tables([p.records for p in parts]), decisions=pa.concat_tables([p.decisions for p in parts]),
        extra={"examples": pa.concat_tables([p.extra["examples"] for p in parts])}, stats=output.stats())


def read_source_parts(source: SourceConfig, path: Path | None, root: Path | None = None,
                      rows_per_part: int = PART_ROWS) -> PartedOutput:
    """Read every row of one source: records for rows that became messages, a decision and an
    examples row for every row read, handed on every `rows_per_part` rows read (memory holds one
    part, whatever the file's size). Raises SourceError, after the last part, when the source
    yielded no valid row. `root` (the project root) makes `source_uri` relative to it."""
    check_columns(source)
    uri = source_uri(source, path, root)
    category = None if source.category == "auto" else source.category
    provenance = {
        "source": source.name, "source_format": source.format, "source_uri": uri,
        "origin": source.origin, "license": source.license,
    }
    quarantined: Counter[str] = Counter()
    first_problems: list[str] = []
    totals = {"n_in": 0, "n_records": 0}
    example_id_of = _example_ids(source.name)

    def parts() -> Iterator[StageOutput]:
        rows = source_rows(source, path)
        while True:
            # Column by column: the tables are built from one list per column, not from a dict per row.
            examples: dict[str, list[Any]] = {"example_id": [], "source_row": [], "raw": []}
            records: dict[str, list[Any]] = {"example_id": [], "source_row": [], "source_location": [], "messages": []}
            decisions = DecisionLog()
            for row in itertools.islice(rows, rows_per_part):
                example_id = example_id_of(row.source_row)
                examples["example_id"].append(example_id)
                examples["source_row"].append(row.source_row)
                examples["raw"].append(row.raw)
                try:
                    if row.problem is not None:
                        raise row.problem
                    messages = row_messages(row.value, source)
                except RowProblem as problem:
                    error = escape_surrogates(problem.message)  # messages quote the row's own strings
                    decisions.add(example_id, problem.reason, detail={"location": row.location, "error": error})
                    quarantined[problem.reason.value] += 1
                    if len(first_problems) < FIRST_PROBLEMS_SHOWN:
                        first_problems.append(f"{row.location}: {problem.reason.value}: {error}")
                    continue
                decisions.add(example_id, Reason.KEPT)
                records["example_id"].append(example_id)
                records["source_row"].append(row.source_row)
                records["source_location"].append(row.location)
                records["messages"].append(messages)
            n_read = len(examples["example_id"])
            if not n_read and totals["n_in"]:
                break
            totals["n_in"] += n_read
            totals["n_records"] += len(records["example_id"])
            if not totals["n_in"]:
                raise SourceError(
                    f"source {source.name!r} ({uri}): the source holds no rows (an empty file, only blank lines, "
                    "or an empty array); point `path` at the data, or remove the source from the recipe"
                )
            yield StageOutput(
                records=_columns_table(records, {**provenance, "content_hash": None, "category": category},
                                       RECORD_SCHEMA),
                decisions=decisions.to_table(),
                extra={"examples": _columns_table(examples, provenance, EXAMPLE_SCHEMA)},
            )
            if n_read < rows_per_part:
                break
        if not totals["n_records"]:
            raise SourceError(
                f"source {source.name!r} ({uri}): 0 of {totals['n_in']} rows could be read; first problems: "
                f"{'; '.join(first_problems)}; check the file and the source's `format` ({source.format}) "
                "and `columns` in the recipe"
            )

    def stats() -> dict[str, Any]:
        return {
            "n_in": totals["n_in"],
            "n_quarantined": sum(quarantined.values()),
            "source": source.name,
            "quarantined_by_reason": dict(sorted(quarantined.items())),
        }

    return PartedOutput(parts(), stats)


def _example_ids(source_name: str) -> Callable[[int], str]:
    """`row -> short_hash(source_name, row)`, with the constant part of the hashed text made once.

    short_hash hashes the canonical JSON of [name, row]: for a string and an int that is
    '[' + the JSON string + ',' + the int's digits + ']' (tests compare the two).
    """
    prefix = "[" + _json_string(source_name) + ","

    def example_id(source_row: int) -> str:
        if type(source_row) is not int:
            return short_hash(source_name, source_row)
        return sha256_text(f"{prefix}{source_row}]")[:HASH_CHARS]

    return example_id


def _columns_table(columns: dict[str, list[Any]], constants: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """A table from one list per column plus columns holding one value on every row: the same
    arrays as Table.from_pylist of the equivalent rows (so the same Parquet bytes)."""
    n_rows = len(next(iter(columns.values())))
    arrays = [pa.array(columns[f.name] if f.name in columns else [constants[f.name]] * n_rows, type=f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


@stage_task("ingest")
def ingest_stage(call: StageCall) -> PartedOutput:
    source = SourceConfig.model_validate(call.config)
    path = Path(call.params["path"]) if call.params.get("path") else None
    return read_source_parts(source, path, Path(call.root))
