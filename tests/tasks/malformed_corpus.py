"""Malformed input, case by case: the file's bytes and what must happen to every row.

Each case is one small source file. Its expected outcome is either a SourceError (the whole file
is refused: `source_error` is a regex its message must match after the file's path) or one
`Row` per row read, in file order: the stage that decides the row's fate and the reason it
records, at the row's location as ingest names it. A row ingest keeps always gets a normalize
decision, so `kept` rows are judged by normalize.

Used by tests/tasks/test_malformed_corpus.py (each case through ingest and normalize),
tests/flows/test_bad_input_flow.py (the row-level JSON Lines cases inside a real pipeline run)
and summarized in docs/bad-input.md.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any

INGEST, NORMALIZE = "ingest", "normalize"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Row:
    """The expected fate of one row: where it is, which stage decides, the reason, and a piece of
    the decision's error message ('' = not checked)."""

    location: str
    stage: str
    reason: str
    error: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    format: str  # alpaca | sharegpt | openai
    suffix: str  # ".jsonl" or ".json"
    data: bytes
    rows: tuple[Row, ...] = ()
    source_error: str | None = None  # regex for the SourceError message after "source 'x' (PATH): "
    source: dict[str, Any] = field(default_factory=dict)  # extra SourceConfig fields
    normalize: dict[str, Any] = field(default_factory=dict)  # NormalizeConfig fields

    @property
    def row_level(self) -> bool:
        """Whether each row's fate depends on its own line only (so the line can be moved into
        another file with the default source and normalize settings)."""
        return self.suffix == ".jsonl" and self.source_error is None and not self.source and not self.normalize


def kept(location: str) -> Row:
    return Row(location, NORMALIZE, "kept")


def trimmed(location: str) -> Row:
    return Row(location, NORMALIZE, "kept_trimmed_trailing_turn")


def quarantined(location: str, reason: str, error: str = "") -> Row:
    return Row(location, INGEST, reason, error)


def dropped(location: str, reason: str, error: str = "") -> Row:
    return Row(location, NORMALIZE, reason, error)


def jsonl(*rows: Any, end: bytes = b"\n") -> bytes:
    """JSON Lines: bytes are written as they are, anything else as json.dumps."""
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
    return b"\n".join(lines) + end


# ---------------------------------------------------------------------------- good rows --
ALPACA_OK = {"instruction": "Name a primary color.", "output": "Red is a primary color."}
ALPACA_OK2 = {"instruction": "Translate 'cat' to French.", "output": "The French word is 'chat'."}


def sg(*turns: tuple[Any, Any], **extra: Any) -> dict:
    """A ShareGPT row from (from, value) pairs."""
    return {"conversations": [{"from": speaker, "value": text} for speaker, text in turns], **extra}


def oa(*turns: tuple[Any, Any]) -> dict:
    """An OpenAI row from (role, content) pairs."""
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


SHAREGPT_OK = sg(("human", "Hi"), ("gpt", "Hello! How can I help?"))
OPENAI_OK = oa(("user", "Hi"), ("assistant", "Hello! How can I help?"))
WEATHER_CALL = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]

# ----------------------------------------------------------------------------------- alpaca --
ALPACA = [
    Case("alpaca_missing_output", "alpaca", ".jsonl", jsonl(ALPACA_OK, {"instruction": "Say hi."}),
         (kept("line 1"), quarantined("line 2", "missing_field", 'missing field "output"'))),
    Case("alpaca_empty_output", "alpaca", ".jsonl", jsonl(ALPACA_OK, {"instruction": "Say hi.", "output": ""}),
         (kept("line 1"), dropped("line 2", "empty_turn", "turn 1 (assistant) is empty"))),
    Case("alpaca_whitespace_only_fields", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, {"instruction": "  \t ", "output": "Hi"}, {"instruction": "Say hi.", "output": " \n\u3000"}),
         (kept("line 1"), dropped("line 2", "empty_turn", "turn 0 (user) is empty"),
          dropped("line 3", "empty_turn", "turn 1 (assistant) is empty"))),
    Case("alpaca_null_output", "alpaca", ".jsonl", jsonl(ALPACA_OK, {"instruction": "Say hi.", "output": None}),
         (kept("line 1"), quarantined("line 2", "missing_field", 'field "output" is null'))),
    Case("alpaca_null_vs_missing_input", "alpaca", ".jsonl",
         jsonl({"instruction": "Say hi.", "input": None, "output": "Hi!"}, {"instruction": "Say hi.", "output": "Hi!"},
               {"instruction": "Say hi.", "input": "", "output": "Hi!"}),
         (kept("line 1"), kept("line 2"), kept("line 3"))),
    Case("alpaca_numbers_and_lists_where_text_belongs", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, {"instruction": "Say hi.", "output": 42}, {"instruction": ["Say", "hi."], "output": "Hi"},
               {"instruction": "Say hi.", "input": {"lang": "en"}, "output": "Hi"},
               {"instruction": "Say hi.", "output": True}),
         (kept("line 1"), quarantined("line 2", "wrong_type", 'field "output" is a number, expected text'),
          quarantined("line 3", "wrong_type", 'field "instruction" is a list, expected text'),
          quarantined("line 4", "wrong_type", 'field "input" is an object, expected text'),
          quarantined("line 5", "wrong_type", 'field "output" is a boolean, expected text'))),
    Case("alpaca_history_shapes", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, {**ALPACA_OK, "history": "Hi, Hello"}, {**ALPACA_OK, "history": [["Hi", "Hello", "Bye"]]},
               {**ALPACA_OK, "history": [["Hi", "Hello there."]]}),
         (kept("line 1"),
          quarantined("line 2", "wrong_type", 'field "history" is text, expected a list of [user, assistant] pairs'),
          quarantined("line 3", "wrong_type", 'field "history"[0] is a list of 3'), kept("line 4"))),
    Case("alpaca_rows_that_are_not_objects", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, [ALPACA_OK], 3, "Name a primary color.", None, True),
         (kept("line 1"), quarantined("line 2", "not_an_object", "the row is a list"),
          quarantined("line 3", "not_an_object", "the row is a number"),
          quarantined("line 4", "not_an_object", "the row is text"),
          quarantined("line 5", "not_an_object", "the row is null"),
          quarantined("line 6", "not_an_object", "the row is a boolean"))),
    Case("alpaca_other_formats_in_the_file", "alpaca", ".jsonl", jsonl(ALPACA_OK, SHAREGPT_OK, OPENAI_OK),
         (kept("line 1"), quarantined("line 2", "missing_field", 'missing field "instruction"'),
          quarantined("line 3", "missing_field", 'missing field "instruction"'))),
    # The id column is not read: example_id comes from the row's place, so every row is its own example.
    Case("alpaca_duplicate_and_mixed_type_ids", "alpaca", ".jsonl",
         jsonl({"id": 7, **ALPACA_OK}, {"id": 7, **ALPACA_OK2}, {"id": "7", **ALPACA_OK}, {"id": None, **ALPACA_OK},
               {"id": [7], **ALPACA_OK2}, {"id": 7.5, **ALPACA_OK}),
         tuple(kept(f"line {n}") for n in range(1, 7))),
    Case("alpaca_duplicate_keys", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Say hi.", "output": "Hi!", "output": "Bye!"}',
               b'{"instruction": "Say hi.", "instruction": "Say hi.", "output": "Hi!"}',
               b'{"instruction": "Say hi.", "output": "Hi!", "meta": {"a": 1, "a": 2}}'),
         (kept("line 1"), quarantined("line 2", "duplicate_key", 'names the key "output" twice'),
          quarantined("line 3", "duplicate_key", 'names the key "instruction" twice'),
          quarantined("line 4", "duplicate_key", 'names the key "a" twice'))),
    # Python's json reads NaN and Infinity: a number where text belongs, harmless in other columns.
    Case("alpaca_nan_and_infinity", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": NaN, "output": "Hi"}',
               b'{"instruction": "Say hi.", "output": "Hi!", "score": Infinity}',
               b'{"instruction": "Say hi.", "output": -Infinity}'),
         (kept("line 1"), quarantined("line 2", "wrong_type", 'field "instruction" is a number'), kept("line 3"),
          quarantined("line 4", "wrong_type", 'field "output" is a number'))),
    Case("alpaca_pretty_printed_array", "alpaca", ".json",
         json.dumps([ALPACA_OK, {"instruction": "Say hi."}, ALPACA_OK2], indent=2).encode(),
         (kept("index 0 (line 2)"), quarantined("index 1 (line 6)", "missing_field", 'missing field "output"'),
          kept("index 2 (line 9)"))),
    Case("alpaca_single_pretty_printed_object", "alpaca", ".json",
         json.dumps({"data": [ALPACA_OK, ALPACA_OK2]}, indent=2).encode(),
         source_error=r"the file is one JSON object spanning several lines, not rows"),
    Case("alpaca_json_lines_in_a_json_file", "alpaca", ".json", jsonl(ALPACA_OK, {"instruction": "Say hi."}),
         (kept("line 1"), quarantined("line 2", "missing_field", 'missing field "output"'))),
    Case("alpaca_utf8_bom_json_lines", "alpaca", ".jsonl", BOM + jsonl(ALPACA_OK, {"instruction": "Say hi."}),
         (kept("line 1"), quarantined("line 2", "missing_field"))),
    Case("alpaca_utf8_bom_json_array", "alpaca", ".json", BOM + json.dumps([ALPACA_OK, ALPACA_OK2]).encode(),
         (kept("index 0 (line 1)"), kept("index 1 (line 1)"))),
    Case("alpaca_cp1252_bytes_json_lines", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Caf\xe9 au lait?", "output": "Yes."}',
               b'{"instruction": "Say \x93hi\x94.", "output": "Hi"}'),
         (kept("line 1"), quarantined("line 2", "invalid_encoding", "byte 0xe9 at byte 21 of the line is not UTF-8"),
          quarantined("line 3", "invalid_encoding", "byte 0x93 at byte 22 of the line is not UTF-8"))),
    Case("alpaca_cp1252_bytes_json_array", "alpaca", ".json",
         b'[\n  {"instruction": "Name a primary color.", "output": "Red."},\n'
         b'  {"instruction": "Caf\xe9 au lait?", "output": "Oui."},\n'
         b'  {"instruction": "Say hi.", "output": "Hi!"}\n]\n',
         (kept("index 0 (line 2)"), quarantined("index 1 (line 3)", "invalid_encoding", "byte 0xe9 at line 3, column"),
          kept("index 2 (line 4)"))),
    Case("alpaca_gzip_bytes_named_jsonl", "alpaca", ".jsonl", gzip.compress(jsonl(ALPACA_OK, ALPACA_OK2), mtime=0),
         source_error=r"the file is gzip-compressed; decompress it"),
    Case("alpaca_utf16_json", "alpaca", ".json", json.dumps([ALPACA_OK]).encode("utf-16"),
         source_error=r"the file is UTF-16 encoded .*; re-save it as UTF-8"),
    Case("alpaca_empty_file", "alpaca", ".jsonl", b"", source_error=r"the source holds no rows"),
    Case("alpaca_blank_lines_only", "alpaca", ".jsonl", b"\n  \n\t\r\n", source_error=r"the source holds no rows"),
    Case("alpaca_empty_json_array", "alpaca", ".json", b"[]\n", source_error=r"the source holds no rows"),
    Case("alpaca_no_readable_row", "alpaca", ".json", b'[\n  {"instruction": "Say hi."},\n  {"output": "Hi"}\n]\n',
         source_error=r"0 of 2 rows could be read; first problems: index 0 \(line 2\): missing_field: "
                      r'missing field "output"; index 1 \(line 3\): missing_field'),
    Case("alpaca_truncated_last_line", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Say hi.", "outp', end=b""),
         (kept("line 1"), quarantined("line 2", "invalid_json", "not valid JSON: Unterminated string"))),
    Case("alpaca_trailing_comma_in_object", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Say hi.", "output": "Hi!",}'),
         (kept("line 1"), quarantined("line 2", "invalid_json", "Expecting property name enclosed in double quotes"))),
    Case("alpaca_trailing_comma_in_array", "alpaca", ".json",
         b'[\n  ' + json.dumps(ALPACA_OK).encode() + b',\n  ' + json.dumps(ALPACA_OK2).encode() + b',\n]\n',
         (kept("index 0 (line 2)"), kept("index 1 (line 3)"))),
    Case("alpaca_crlf_and_blank_lines", "alpaca", ".jsonl",
         json.dumps(ALPACA_OK).encode() + b"\r\n\r\n" + b'{"instruction": "Say hi."}\r\n   \r\n'
         + json.dumps({"instruction": "List two colors.", "output": "Red\r\nBlue"}).encode() + b"\r\n",
         (kept("line 1"), quarantined("line 3", "missing_field"), kept("line 5"))),
    Case("alpaca_deeply_nested", "alpaca", ".jsonl",
         jsonl(ALPACA_OK,
               b'{"instruction": "Say hi.", "output": "Hi", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         (kept("line 1"),
          quarantined("line 2", "invalid_json", "nested more deeply than Python's JSON reader allows"))),
    Case("alpaca_integer_too_long", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Say hi.", "output": "Hi", "n": ' + b"9" * 5000 + b"}"),
         (kept("line 1"), quarantined("line 2", "invalid_json", "a number with more than 4300 digits"))),
    Case("alpaca_nul_bytes", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Say hi.", "output": "Hi\\u0000!"}',
               b'{"instruction": "Say hi.", "output": "Hi\x00!"}'),
         (kept("line 1"),
          quarantined("line 2", "invalid_encoding", 'field "output" holds a NUL character (U+0000) at character 2'),
          quarantined("line 3", "invalid_json", "Invalid control character"))),
    Case("alpaca_lone_surrogates", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, b'{"instruction": "Say hi.", "output": "Hi \\ud800!"}',
               b'{"instruction": "Say hi \\udfff", "output": "Hi"}',
               b'{"instruction": "Smile.", "output": "\\ud83d\\ude00"}'),
         (kept("line 1"),
          quarantined("line 2", "invalid_encoding", 'field "output" holds a lone surrogate \\ud800 at character 3'),
          quarantined("line 3", "invalid_encoding", 'field "instruction" holds a lone surrogate \\udfff'),
          kept("line 4"))),  # a surrogate pair is one emoji
    Case("alpaca_lone_surrogate_in_array", "alpaca", ".json",
         b'[\n' + json.dumps(ALPACA_OK).encode() + b',\n{"instruction": "Say hi.", "output": "Hi \\udc00"}\n]',
         (kept("index 0 (line 2)"), quarantined("index 1 (line 3)", "invalid_encoding", "lone surrogate \\udc00"))),
    Case("alpaca_duplicate_key_in_array", "alpaca", ".json",
         b'[{"instruction": "Say hi.", "output": "Hi!"},\n'
         b' {"instruction": "Say hi.", "output": "Hi!", "output": "Bye!"},\n'
         b' {"instruction": "Say bye.", "output": "Bye!"}]',
         (kept("index 0 (line 1)"), quarantined("index 1 (line 2)", "duplicate_key", '"output"'),
          kept("index 2 (line 3)"))),
    Case("alpaca_template_tokens", "alpaca", ".jsonl",
         jsonl(ALPACA_OK, {"instruction": "Say hi.", "output": "Hi!<|im_end|>\n<|im_start|>user\nMore"},
               {"instruction": "Say <|endoftext|> hi.", "output": "Hi!"},
               {"instruction": "What do <s> and </s> mean?",
                "output": "In HTML, <s> strikes text out and </s> ends it."}),
         (kept("line 1"),
          dropped("line 2", "template_token_in_text", "turn 1 (assistant) holds the chat-template token '<|im_end|>'"),
          dropped("line 3", "template_token_in_text", "turn 0 (user) holds the chat-template token '<|endoftext|>'"),
          kept("line 4"))),
]

# --------------------------------------------------------------------------------- sharegpt --
TOOL_CONVERSATION = sg(("human", "Weather in Oslo?"),
                       ("function_call", '{"name": "weather", "arguments": {"city": "Oslo"}}'),
                       ("observation", '{"temp_c": 3}'), ("gpt", "It is 3 degrees in Oslo."))

SHAREGPT = [
    Case("sharegpt_unknown_role", "sharegpt", ".jsonl", jsonl(SHAREGPT_OK, sg(("human", "Hi"), ("narrator", "Once"))),
         (kept("line 1"), quarantined("line 2", "unknown_role", 'turn 1: unknown role "narrator"'))),
    Case("sharegpt_mixed_case_roles", "sharegpt", ".jsonl",
         jsonl(sg(("Human", "Hi"), ("GPT", "Hello there.")), sg(("HUMAN", "Hi"), ("ChatGPT", "Hello.")),
               sg(("Narrator", "Once"), ("gpt", "Upon"))),
         (kept("line 1"), kept("line 2"), quarantined("line 3", "unknown_role", 'turn 0: unknown role "Narrator"'))),
    Case("sharegpt_role_content_mixed_with_from_value", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK,
               {"conversations": [{"from": "human", "value": "Hi"}, {"role": "assistant", "content": "Yo"}]},
               {"conversations": [{"from": "human", "content": "Hi"}, {"from": "gpt", "value": "Yo"}]},
               {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}),
         (kept("line 1"),
          quarantined("line 2", "mixed_schema", "turn 1 uses role/content keys but turn 0 uses from/value"),
          quarantined("line 3", "mixed_schema", "turn 0 mixes from/value and role/content keys"),
          kept("line 4"))),  # role/content throughout is read
    Case("sharegpt_non_alternating", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", "Hi"), ("human", "Anyone?"), ("gpt", "Yes")),
               sg(("human", "Hi"), ("gpt", "Hello"), ("gpt", "Again"))),
         (kept("line 1"), dropped("line 2", "non_alternating", "turn 1: two user turns in a row"),
          dropped("line 3", "non_alternating", "turn 2: two assistant turns in a row"))),
    Case("sharegpt_starts_with_assistant", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("gpt", "I start."), ("human", "Hi"), ("gpt", "Hello"))),
         (kept("line 1"),
          dropped("line 2", "starts_with_assistant", "turn 0: the conversation starts with an assistant"))),
    Case("sharegpt_ends_with_user", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", "Hi"), ("gpt", "Hello"), ("human", "Thanks!"))),
         (kept("line 1"), trimmed("line 2"))),
    Case("sharegpt_ends_with_user_without_trimming", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", "Hi"), ("gpt", "Hello"), ("human", "Thanks!"))),
         (kept("line 1"),
          dropped("line 2", "non_alternating", "turn 2: 1 turn(s) after the last assistant turn (user)")),
         normalize={"trim_trailing_turns": False}),
    Case("sharegpt_system_only_and_empty_conversations", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("system", "Be brief.")), sg(), {"system": "Be brief.", "conversations": []}),
         (kept("line 1"), dropped("line 2", "empty_conversation", "only a system turn"),
          dropped("line 3", "empty_conversation", "no turns"),
          dropped("line 4", "empty_conversation", "only a system turn"))),
    Case("sharegpt_system_not_first", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", "Hi"), ("gpt", "Hello"), ("system", "Be rude."), ("gpt", "No.")),
               sg(("system", "Be kind."), ("human", "Hi"), ("gpt", "Hello"), system="Be brief.")),
         (kept("line 1"), dropped("line 2", "system_not_first", "turn 2: system turn after the first position"),
          dropped("line 3", "system_not_first", "turn 1: system turn"))),  # row-level system + a system turn
    Case("sharegpt_tool_turns_kept", "sharegpt", ".jsonl", jsonl(SHAREGPT_OK, TOOL_CONVERSATION),
         (kept("line 1"), kept("line 2"))),
    Case("sharegpt_tool_turns_quarantined", "sharegpt", ".jsonl", jsonl(SHAREGPT_OK, TOOL_CONVERSATION),
         (kept("line 1"), quarantined("line 2", "tool_turn_quarantined", 'turn 1: "function_call" is a tool turn')),
         source={"tool_turns": "quarantine"}),
    Case("sharegpt_conversations_as_json_text", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, {"conversations": json.dumps(SHAREGPT_OK["conversations"])},
               {"conversations": '[{"from": "human", "value": "Hi"'},
               {"conversations": '[{"from": "human", "value": "a", "value": "b"}, {"from": "gpt", "value": "c"}]'},
               {"conversations": "[" * 100_000}),
         (kept("line 1"), kept("line 2"),
          quarantined("line 3", "invalid_json", 'field "conversations" is text that is not valid JSON'),
          quarantined("line 4", "duplicate_key", 'field "conversations" is text holding JSON that cannot be read'),
          quarantined("line 5", "invalid_json", "nested more deeply"))),
    Case("sharegpt_conversations_of_the_wrong_shape", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, {"conversations": None}, {"conversations": {"from": "human", "value": "Hi"}},
               {"dialog": SHAREGPT_OK["conversations"]}, {"conversations": ["Hi", "Hello"]}, {"conversations": 5}),
         (kept("line 1"), quarantined("line 2", "missing_field", 'field "conversations" is null'),
          quarantined("line 3", "wrong_type", 'field "conversations" is an object, expected a list of turns'),
          quarantined("line 4", "missing_field", 'missing field "conversations"'),
          quarantined("line 5", "wrong_type", "turn 0 is text, expected an object"),
          quarantined("line 6", "wrong_type", 'field "conversations" is a number'))),
    Case("sharegpt_turn_fields_of_the_wrong_type", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", 3), ("gpt", "x")), sg(("human", ["Hi"]), ("gpt", "x")),
               sg(("human", "Hi"), ("gpt", None)),
               {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
               sg((None, "Hi"), ("gpt", "x")), sg(("human", "Hi"), ("gpt", "x"), system=5)),
         (kept("line 1"), quarantined("line 2", "wrong_type", 'turn 0: field "value" is a number'),
          quarantined("line 3", "wrong_type", 'turn 0: field "value" is a list'),
          quarantined("line 4", "missing_field", 'turn 1: field "value" is null'),
          quarantined("line 5", "missing_field", 'turn 0: missing field "value"'),
          quarantined("line 6", "missing_field", 'turn 0: field "from" is null'),
          quarantined("line 7", "wrong_type", 'field "system" is a number'))),
    Case("sharegpt_empty_and_whitespace_turns", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", ""), ("gpt", "Hello")), sg(("human", "Hi"), ("gpt", "  \n\t"))),
         (kept("line 1"), dropped("line 2", "empty_turn", "turn 0 (user) is empty"),
          dropped("line 3", "empty_turn", "turn 1 (assistant) is empty"))),
    Case("sharegpt_no_assistant_turn", "sharegpt", ".jsonl", jsonl(SHAREGPT_OK, sg(("human", "Hi"))),
         (kept("line 1"), dropped("line 2", "no_assistant_turn"))),
    Case("sharegpt_template_tokens", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK, sg(("human", "Hi<|im_end|>\n<|im_start|>assistant\nSure"), ("gpt", "Hello")),
               sg(("human", "Hi"), ("gpt", "Hello<end_of_turn>\n<start_of_turn>user\nMore")),
               sg(("human", "What does <|> do in Haskell?"), ("gpt", "It is the Alternative choice operator."))),
         (kept("line 1"),
          dropped("line 2", "template_token_in_text", "turn 0 (user) holds the chat-template token '<|im_end|>'"),
          dropped("line 3", "template_token_in_text",
                  "turn 1 (assistant) holds the chat-template token '<end_of_turn>'"),
          kept("line 4"))),
    Case("sharegpt_duplicate_keys", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK,
               b'{"conversations": [{"from": "human", "value": "Hi", "value": "Hey"}, {"from": "gpt", "value": "Yo"}]}',
               b'{"conversations": [], "conversations": [{"from": "human", "value": "Hi"}]}'),
         (kept("line 1"), quarantined("line 2", "duplicate_key", 'the key "value" twice'),
          quarantined("line 3", "duplicate_key", 'the key "conversations" twice'))),
    Case("sharegpt_array_spanning_lines", "sharegpt", ".json",
         b'[\n  {"conversations": [{"from": "human", "value": "Hi"},\n'
         b'                     {"from": "gpt", "value": "Hello! How can I help?"}]},\n'
         b'  {"conversations": [{"from": "gpt", "value": "I start."},\n'
         b'                     {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Ok"}]},\n'
         b'  {"conversations": [{"from": "human", "value": "Hi"}]}\n]\n',
         (kept("index 0 (line 2)"), dropped("index 1 (line 4)", "starts_with_assistant"),
          dropped("index 2 (line 6)", "no_assistant_turn"))),
    Case("sharegpt_nul_and_lone_surrogates", "sharegpt", ".jsonl",
         jsonl(SHAREGPT_OK,
               b'{"conversations": [{"from": "human", "value": "Hi\\u0000"}, {"from": "gpt", "value": "Yo"}]}',
               b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo \\udc80"}]}',
               b'{"conversations": [{"from": "hu\\ud800man", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}'),
         (kept("line 1"), quarantined("line 2", "invalid_encoding", 'turn 0: field "value" holds a NUL character'),
          quarantined("line 3", "invalid_encoding", 'turn 1: field "value" holds a lone surrogate \\udc80'),
          quarantined("line 4", "invalid_encoding", 'turn 0: field "from" holds a lone surrogate \\ud800'))),
]

# ----------------------------------------------------------------------------------- openai --
OPENAI = [
    Case("openai_unknown_and_mixed_case_roles", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("USER", "Hi"), ("Assistant", "Hello.")), oa(("user", "Hi"), ("wizard", "Abracadabra")),
               oa(("Developer", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))),
         (kept("line 1"), kept("line 2"), quarantined("line 3", "unknown_role", 'turn 1: unknown role "wizard"'),
          kept("line 4"))),
    Case("openai_content_parts", "openai", ".jsonl",
         jsonl(OPENAI_OK,
               oa(("user", [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Oslo?"}]),
                  ("assistant", "Mild.")),
               oa(("user", [{"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]),
                  ("assistant", "A cat.")),
               oa(("user", ["What is this?"]), ("assistant", "A cat.")),
               oa(("user", [{"type": "text", "text": None}]), ("assistant", "A cat."))),
         (kept("line 1"), kept("line 2"),
          quarantined("line 3", "unsupported_content", 'turn 0: content part 1 has type "image_url"'),
          quarantined("line 4", "wrong_type", "turn 0: content part 0 is text, expected an object"),
          quarantined("line 5", "missing_field", 'turn 0: content part 0: field "text" is null'))),
    Case("openai_content_of_the_wrong_type", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("user", None), ("assistant", "Hello")), oa(("user", 1.5), ("assistant", "Hello")),
               {"messages": [{"role": "user"}, {"role": "assistant", "content": "Hello"}]},
               oa((1, "Hi"), ("assistant", "Hello"))),
         (kept("line 1"), quarantined("line 2", "missing_field", 'turn 0: field "content" is null'),
          quarantined("line 3", "wrong_type", 'turn 0: field "content" is a number'),
          quarantined("line 4", "missing_field", 'turn 0: missing field "content"'),
          quarantined("line 5", "wrong_type", 'turn 0: field "role" is a number'))),
    Case("openai_tool_turns_kept", "openai", ".jsonl",
         jsonl(OPENAI_OK,
               {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                             {"role": "assistant", "content": None, "tool_calls": WEATHER_CALL},
                             {"role": "tool", "content": '{"temp_c": 3}', "tool_call_id": "c1"},
                             {"role": "assistant", "content": "It is 3 degrees."}]},
               oa(("user", "Weather?"), ("assistant", "Calling."), ("function", "{}"), ("assistant", "Mild."))),
         (kept("line 1"), kept("line 2"), kept("line 3"))),
    Case("openai_tool_turns_quarantined", "openai", ".jsonl",
         jsonl(OPENAI_OK,
               {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                             {"role": "assistant", "content": None, "tool_calls": WEATHER_CALL}]},
               oa(("user", "Weather?"), ("assistant", "Let me check."), ("tool", "3C"), ("assistant", "It is 3C."))),
         (kept("line 1"),
          quarantined("line 2", "tool_turn_quarantined", "turn 1: an assistant turn with tool_calls"),
          quarantined("line 3", "tool_turn_quarantined", 'turn 2: "tool" is a tool turn')),
         source={"tool_turns": "quarantine"}),
    Case("openai_system_not_first", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("user", "Hi"), ("assistant", "Hello"), ("system", "Be rude."), ("assistant", "No."))),
         (kept("line 1"), dropped("line 2", "system_not_first", "turn 2"))),
    Case("openai_system_only_and_empty_conversations", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("system", "Be brief.")), oa()),
         (kept("line 1"), dropped("line 2", "empty_conversation", "only a system turn"),
          dropped("line 3", "empty_conversation", "no turns"))),
    Case("openai_starts_with_assistant_or_tool", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("assistant", "I start."), ("user", "Hi"), ("assistant", "Hello")),
               oa(("system", "Be brief."), ("tool", "3C"), ("assistant", "Warm."))),
         (kept("line 1"), dropped("line 2", "starts_with_assistant"),
          dropped("line 3", "non_alternating", "turn 1: the conversation starts with a tool turn"))),
    Case("openai_ends_with_user", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("user", "Hi"), ("assistant", "Hello"), ("user", "Thanks!"))),
         (kept("line 1"), trimmed("line 2"))),
    Case("openai_non_alternating", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("user", "Hi"), ("tool", "3C"), ("assistant", "Warm.")),
               oa(("user", "Hi"), ("user", "Hello?"), ("assistant", "Yes."))),
         (kept("line 1"), dropped("line 2", "non_alternating", "turn 1: a tool turn cannot follow a user turn"),
          dropped("line 3", "non_alternating", "turn 1: two user turns in a row"))),
    Case("openai_role_content_mixed_with_from_value", "openai", ".jsonl",
         jsonl(OPENAI_OK, {"messages": [{"role": "user", "content": "Hi"}, {"from": "gpt", "value": "Hello"}]}),
         (kept("line 1"),
          quarantined("line 2", "mixed_schema", "turn 1 uses from/value keys but turn 0 uses role/content"))),
    Case("openai_messages_as_json_text", "openai", ".jsonl",
         jsonl(OPENAI_OK, {"messages": json.dumps(OPENAI_OK["messages"])}, {"messages": "Hi"}),
         (kept("line 1"), kept("line 2"),
          quarantined("line 3", "invalid_json", 'field "messages" is text that is not valid JSON'))),
    Case("openai_template_tokens", "openai", ".jsonl",
         jsonl(OPENAI_OK, oa(("user", "<|start_header_id|>assistant<|end_header_id|>\nSure"), ("assistant", "Hi")),
               oa(("user", "Hi"), ("assistant", "Done.<|eot_id|>")),
               oa(("user", "Pipe it: x <| f |> g"), ("assistant", "That is Elm's pipe syntax."))),
         (kept("line 1"),
          dropped("line 2", "template_token_in_text",
                  "turn 0 (user) holds the chat-template token '<|start_header_id|>'"),
          dropped("line 3", "template_token_in_text", "turn 1 (assistant) holds the chat-template token '<|eot_id|>'"),
          kept("line 4"))),
    Case("openai_duplicate_keys", "openai", ".jsonl",
         jsonl(OPENAI_OK,
               b'{"messages": [{"role": "user", "role": "assistant", "content": "Hi"}, '
               b'{"role": "assistant", "content": "Hello"}]}'),
         (kept("line 1"), quarantined("line 2", "duplicate_key", 'the key "role" twice'))),
    Case("openai_other_formats_in_the_file", "openai", ".jsonl", jsonl(OPENAI_OK, SHAREGPT_OK, ALPACA_OK),
         (kept("line 1"), quarantined("line 2", "missing_field", 'missing field "messages"'),
          quarantined("line 3", "missing_field", 'missing field "messages"'))),
    Case("openai_array_with_crlf_line_ends", "openai", ".json",
         b"[\r\n  " + json.dumps(OPENAI_OK).encode() + b",\r\n  " + json.dumps(oa(("user", "Hi"))).encode()
         + b",\r\n  " + json.dumps(oa(("user", "Hi\r\nthere"), ("assistant", "Hello\r\n"))).encode() + b"\r\n]\r\n",
         (kept("index 0 (line 2)"), dropped("index 1 (line 3)", "no_assistant_turn"), kept("index 2 (line 4)"))),
    Case("openai_rows_that_are_not_objects", "openai", ".jsonl",
         jsonl(OPENAI_OK, OPENAI_OK["messages"], "Hi", None),
         (kept("line 1"), quarantined("line 2", "not_an_object", "the row is a list"),
          quarantined("line 3", "not_an_object", "the row is text"),
          quarantined("line 4", "not_an_object", "the row is null"))),
]

CASES: list[Case] = [*ALPACA, *SHAREGPT, *OPENAI]
