"""Format adapters: one parsed row of an Alpaca, ShareGPT or OpenAI source to chat messages.

Only the mapping to `messages` (roles system | user | assistant | tool, text content) happens
here: no trimming, NFC normalization or turn-order check (normalize does that). A row that
cannot become messages raises RowProblem with a reason from tasks/core/reasons.py. Text holding
NUL (U+0000) or a lone UTF-16 surrogate from an unpaired "\\ud800" escape is refused as
`invalid_encoding`: neither is text, and a surrogate cannot even be written to Parquet.

`columns` renames fields ({format's name: source's name}); `role_map` adds speakers.
- alpaca: instruction, input, output, optional system and history ([user, assistant] pairs).
  The user turn is the instruction, followed by a blank line and the input when the input is
  not blank. No prompt template is added: the chat template does that at training time.
- sharegpt: `conversations` (a list, or a JSON string holding one) of {from, value} turns, and an
  optional row-level `system`. function_call turns become assistant turns holding the call
  text, observation turns become tool turns; with `tool_turns: quarantine` such rows are
  quarantined instead. Rows whose turns all use {role, content} are read too (which key pair a
  row uses is detected from its turns); mixing both key pairs in one row is `mixed_schema`.
- openai: `messages` of {role, content}; developer -> system, function -> tool. A list of
  content parts is flattened when every part is text (joined by newlines); an assistant turn's
  `tool_calls` become its content as compact JSON. `tool_turns: quarantine` applies here too.
Speaker names are matched case-insensitively. Columns the record type has no place for are
ignored: ShareGPT's `tools`, OpenAI's `tool_call_id` and `name`, any extra metadata column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.lib.rows import ROW_DECODER, UNREADABLE_JSON, RowProblem, SourceError, json_type, unreadable_json_problem

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

# What _check_storable refuses: NUL is binary data, a lone surrogate is not Unicode text (see
# sftflow.tasks.lib.rows.escape_surrogates).
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


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


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------- alpaca --
def alpaca_messages(row: dict[str, Any], source: SourceConfig) -> list[Message]:
    """Alpaca fields to messages: [system] + history pairs + user(instruction, input) + assistant.

    >>> src = SourceConfig(name="a", format="alpaca", path="a.json")
    >>> alpaca_messages({"instruction": "Add.", "input": "2+2", "output": "4"}, src)
    [{'role': 'user', 'content': 'Add.\\n\\n2+2'}, {'role': 'assistant', 'content': '4'}]
    """
    if not source.columns and "system" not in row and "history" not in row:
        # The usual row, read without the per-field helpers (same checks, same messages).
        instruction, extra_input, output = row.get("instruction"), row.get("input"), row.get("output")
        if (type(instruction) is str and type(output) is str and (extra_input is None or type(extra_input) is str)
                and _storable(instruction) and _storable(output) and (extra_input is None or _storable(extra_input))):
            prompt = f"{instruction}\n\n{extra_input}" if extra_input and not extra_input.isspace() else instruction
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    instruction = _required_field(row, source, "instruction")
    extra_input = _optional_field(row, source, "input")
    output = _required_field(row, source, "output")
    messages: list[Message] = []
    if _column(source, "system") in row:
        system = _optional_field(row, source, "system")
        if system.strip():  # LLaMA-Factory style files carry "system": "" on rows without one
            messages.append({"role": "system", "content": system})
    if _column(source, "history") in row:
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
            problem = unreadable_json_problem(exc)
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
