"""Property: whatever a source file holds, ingest and normalize account for every row.

Valid rows of each format (the project's samples and a few literal ones) are mutated at random:
field values swapped for JSON values of other types, keys dropped, renamed or repeated, turns
shuffled, chat-template tokens, NUL, lone surrogates and long strings injected, unreadable JSON
tokens (NaN, huge integers, deep nesting) spliced in, and the serialized bytes flipped, inserted,
deleted or cut. The file goes through the pure ingest and normalize functions, and then:

- the only exception is SourceError, and only when no row is readable (its message names the
  source and counts the rows), the file is empty, or it starts with a compression or UTF-16
  signature;
- every physical non-blank line of JSON Lines has exactly one ingest decision; a JSON array that
  parses as a whole has one per element;
- the ledger balances (tests/tasks/ledger.py): normalize judges exactly the rows ingest kept,
  kept + dropped = rows in, no example_id is lost, every table can be written to Parquet.

Deterministic (derandomize, no example database). The default run generates
DEFAULT_EXAMPLES_PER_TEST cases per test (6 tests: JSON Lines and JSON array for each format);
set SFTFLOW_FUZZ_EXAMPLES=20000 to spread that many cases over the same tests.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.core.recipe_data import NormalizeConfig
from tests.stage_helpers import read_source
from sftflow.tasks.lib.rows import SourceError
from sftflow.tasks.normalize import normalize_records
from tests.tasks.ledger import assert_ledger

REPO = Path(__file__).resolve().parents[2]
FORMATS = ("alpaca", "sharegpt", "openai")
N_TESTS = 6
DEFAULT_EXAMPLES_PER_TEST = 350  # 6 x 350 = 2,100 cases in the default run
EXAMPLES_PER_TEST = math.ceil(int(os.environ.get("SFTFLOW_FUZZ_EXAMPLES", "0")) / N_TESTS) or DEFAULT_EXAMPLES_PER_TEST

FUZZ = settings(
    max_examples=EXAMPLES_PER_TEST, derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

BOM = b"\xef\xbb\xbf"
# First bytes after which a whole-file refusal (compressed, zip, UTF-16) is allowed.
BINARY_PREFIXES = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ", b"BZh", b"PK\x03\x04", b"\xff\xfe", b"\xfe\xff")
BINARY_REFUSAL = re.compile(r"the file (is \w+-compressed|is a zip archive|is UTF-16 encoded)")


# ---------------------------------------------------------------------------- valid rows --
def _sample_rows() -> dict[str, list[Any]]:
    samples = REPO / "data" / "samples"
    alpaca = [row for row in json.loads((samples / "alpaca.json").read_text(encoding="utf-8"))
              if isinstance(row, dict)]

    def jsonl(name: str) -> list[Any]:
        rows = []
        for line in (samples / name).read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the samples plant a truncated line on purpose
        return [row for row in rows if isinstance(row, dict)]

    literal = {
        "alpaca": [{"instruction": "Add.", "input": "2+2", "output": "4", "system": "Be terse.",
                    "history": [["1+1?", "2"]]}],
        "sharegpt": [{"system": "Be kind.", "conversations": [
            {"from": "human", "value": "Weather in Oslo?"}, {"from": "function_call", "value": '{"name": "w"}'},
            {"from": "observation", "value": '{"temp_c": 3}'}, {"from": "gpt", "value": "It is 3 degrees."}]}],
        "openai": [{"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "w"}}]},
            {"role": "tool", "content": "3C", "tool_call_id": "c"}, {"role": "assistant", "content": "3C."}]}],
    }
    return {"alpaca": alpaca[:40] + literal["alpaca"], "sharegpt": jsonl("sharegpt.jsonl")[:40] + literal["sharegpt"],
            "openai": jsonl("openai.jsonl")[:40] + literal["openai"]}


VALID_ROWS = _sample_rows()


# ------------------------------------------------------------------- a JSON writer that lies --
class Raw(str):
    """Text written into the JSON as it is: tokens json.dumps will not write."""


class Pairs(list):
    """An object as (key, value) pairs: a key may appear twice."""


RAW_TOKENS = [Raw(t) for t in ("NaN", "Infinity", "-Infinity", "9" * 5000, "[" * 3000 + "]" * 3000,
                               '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"\\ud83d\\ude00"', "1e999")]


def dump(value: Any, ensure_ascii: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{dump(k, ensure_ascii)}: {dump(v, ensure_ascii)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return dump(Pairs(value.items()), ensure_ascii)
    if isinstance(value, list):
        return "[" + ", ".join(dump(v, ensure_ascii) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii)


# ------------------------------------------------------------------------------ mutations --
SPECIAL_TEXT = [
    "", " ", "\t\n", "\u0000", "a\u0000b", "\ud800", "x\udfffy", "\ufeff", "\u200b", "\u3000",
    "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>",
    "<s>", "<|>", "human", "gpt", "GPT", "user", "USER", "assistant", "system", "tool", "function_call",
    "observation", "developer", "function", "narrator", "image_url", "text", "e\u0301", "line\r\nbreak",
    "x" * 100_000,
]
KEYS = ["instruction", "input", "output", "system", "history", "conversations", "messages", "from", "value",
        "role", "content", "tool_calls", "function_call", "type", "text", "id", "Role", ""]

texts = st.one_of(st.text(max_size=20), st.sampled_from(SPECIAL_TEXT))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.sampled_from(RAW_TOKENS))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.sampled_from(KEYS), children,
                                                                                 max_size=3)),
    max_leaves=6,
)


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every value inside dicts and lists (not into Pairs or Raw)."""
    places = [path]
    if isinstance(value, dict) and not isinstance(value, Pairs):
        for key, child in value.items():
            places += _places(child, (*path, key))
    elif isinstance(value, list) and not isinstance(value, Pairs):
        for index, child in enumerate(value):
            places += _places(child, (*path, index))
    return places


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _set(root: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    _get(root, path[:-1])[path[-1]] = new
    return root


@st.composite
def mutated_row(draw, fmt: str) -> Any:
    row = copy.deepcopy(draw(st.sampled_from(VALID_ROWS[fmt])))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_places(row)))
        target = _get(row, path)
        action = draw(st.sampled_from(["replace", "drop", "rename", "repeat_key", "shuffle", "inject", "wrap"]))
        if action == "replace":
            row = _set(row, path, draw(json_values))
        elif action == "drop" and path:
            parent = _get(row, path[:-1])
            if not isinstance(parent, Pairs):
                del parent[path[-1]]
        elif action in ("rename", "repeat_key") and isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target, key=str)))
            pairs = Pairs(target.items())
            if action == "rename":
                new_key = draw(st.one_of(st.sampled_from(KEYS), st.just(key.upper()), st.text(max_size=5)))
                pairs = Pairs((new_key if k == key else k, v) for k, v in pairs)
            else:
                pairs.append((key, draw(json_values)))
            row = _set(row, path, pairs)
        elif action == "shuffle" and isinstance(target, list) and not isinstance(target, Pairs):
            row = _set(row, path, list(draw(st.permutations(target))))
        elif action == "inject" and isinstance(target, str) and not isinstance(target, Raw):
            at = draw(st.integers(0, len(target)))
            row = _set(row, path, target[:at] + draw(st.sampled_from(SPECIAL_TEXT)) + target[at:])
        elif action == "wrap":
            row = _set(row, path, draw(st.sampled_from([[target], None, 7, "row"])))
    return row


@st.composite
def serialized(draw, fmt: str) -> bytes:
    """One mutated row as bytes, maybe with its bytes damaged afterwards."""
    row = draw(mutated_row(fmt))
    ensure_ascii = draw(st.booleans())
    # ensure_ascii=False with a lone surrogate: "surrogatepass" writes bytes that are not UTF-8
    data = dump(row, ensure_ascii).encode("utf-8", "surrogatepass")
    return draw(damaged(data, max_damage=2))


INSERTS = [b"\x00", b"\xff", b"\xe9", b"\xed\xa0\x80", BOM, b"\r", b"\n", b",", b"}", b"]", b"{", b'"', b"\\",
           b"\\u", b"\\ud800", b"[" * 2000, b"\x1f\x8b\x08"]


@st.composite
def damaged(draw, data: bytes, max_damage: int) -> bytes:
    for _ in range(draw(st.integers(0, max_damage))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "none", "none", "none", "none"]))
        if action == "flip" and at < len(data):
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        elif action == "insert":
            data = data[:at] + draw(st.one_of(st.sampled_from(INSERTS), st.binary(max_size=4))) + data[at:]
        elif action == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif action == "truncate":
            data = data[:at]
    return data


@st.composite
def json_lines_file(draw, fmt: str) -> bytes:
    lines = draw(st.lists(serialized(fmt), min_size=0, max_size=8))
    lines = [line for item in lines for line in [item, *draw(st.sampled_from([[], [b""], [b"   "]]))]]
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = newline.join(lines) + draw(st.sampled_from([newline, b""]))
    return (BOM if draw(st.booleans()) else b"") + data


@st.composite
def json_array_file(draw, fmt: str) -> bytes:
    elements = draw(st.lists(serialized(fmt), min_size=0, max_size=8))
    separator = draw(st.sampled_from([b",", b", ", b",\n  ", b",\r\n"]))
    body = b"[\n  " + separator.join(elements) + draw(st.sampled_from([b"", b",", b"\n"])) + b"]\n"
    return draw(damaged((BOM if draw(st.booleans()) else b"") + body, max_damage=1))


# ------------------------------------------------------------------------------- property --
def _non_blank_lines(data: bytes) -> list[int]:
    return [number for number, line in enumerate(data.split(b"\n"), start=1)
            if line.removeprefix(BOM).rstrip(b"\r\n").strip()]


def _array_length(data: bytes) -> int | None:
    """The number of elements when the whole file is one valid JSON array, else None."""
    try:
        value = json.loads(data.removeprefix(BOM).decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return len(value) if isinstance(value, list) else None


def check_ledger(path: Path, fmt: str, data: bytes) -> None:
    path.write_bytes(data)
    source = SourceConfig(name="fuzz", format=fmt, path=str(path))
    is_json_lines = path.suffix == ".jsonl" or data.removeprefix(BOM).lstrip()[:1] != b"["
    try:
        ingested = read_source(source, path)
    except SourceError as exc:
        message = str(exc)
        assert message.startswith(f"source 'fuzz' ({path}): "), message
        if BINARY_REFUSAL.search(message):
            assert data.startswith(BINARY_PREFIXES), message
        elif "one JSON object spanning several lines" in message:
            assert path.suffix == ".json" and isinstance(json.loads(data.removeprefix(BOM)), dict)
        elif "the source holds no rows" in message:
            assert not is_json_lines or not _non_blank_lines(data), message
            assert _array_length(data) in (None, 0)
        else:
            n_rows = re.search(r": 0 of (\d+) rows could be read; first problems: ", message)
            assert n_rows, message
            if is_json_lines:
                assert int(n_rows.group(1)) == len(_non_blank_lines(data)), message
        return
    normalized = normalize_records(ingested.records, NormalizeConfig())
    assert_ledger(ingested, normalized)
    read = ingested.extra["examples"].column("source_row").to_pylist()
    if is_json_lines:
        assert read == _non_blank_lines(data)
    elif (n_elements := _array_length(data)) is not None:
        assert read == list(range(n_elements))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("fmt", FORMATS)
def test_json_lines_ledger_balances_whatever_the_bytes(fmt, workdir):
    @FUZZ
    @given(data=json_lines_file(fmt))
    def run(data: bytes) -> None:
        check_ledger(workdir / f"{fmt}.jsonl", fmt, data)

    run()


@pytest.mark.parametrize("fmt", FORMATS)
def test_json_array_ledger_balances_whatever_the_bytes(fmt, workdir):
    @FUZZ
    @given(data=json_array_file(fmt))
    def run(data: bytes) -> None:
        check_ledger(workdir / f"{fmt}.json", fmt, data)

    run()
