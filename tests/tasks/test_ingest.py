"""Ingest: every file kind, every format, every quarantine reason, on small literal rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.core.records import EXAMPLE_SCHEMA, RAW_PREVIEW_CHARS, RECORD_SCHEMA
from sftflow.tasks.core.stage import StageCall, execute
from sftflow.tasks.core.workspace import PathNotAllowed
from sftflow.tasks.ingest import _example_ids, ingest_stage, source_fingerprint, source_uri
from tests.stage_helpers import read_source
from sftflow.tasks.lib.formats import alpaca_messages, openai_messages, sharegpt_messages
from sftflow.tasks.lib.hub import check_hub_id
from sftflow.tasks.lib.rows import RowProblem, SourceError, raw_preview

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

ALPACA_ROWS = [
    {"instruction": "Name a primary color.", "input": "", "output": "Red."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
    {"instruction": "Say hi.", "output": "Hi!"},  # no input at all
]


def source(fmt: str = "alpaca", path: Path | str = "unused.json", **fields) -> SourceConfig:
    return SourceConfig(name=fields.pop("name", "src"), format=fmt, path=str(path), **fields)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def decisions_of(out) -> list[dict]:
    rows = out.decisions.to_pylist()
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if row["detail"] else None
    return rows


def quarantine(fmt: str, row, **fields) -> tuple[Reason, str]:
    """The reason and message a single row gets from its format adapter."""
    adapter = {"alpaca": alpaca_messages, "sharegpt": sharegpt_messages, "openai": openai_messages}[fmt]
    with pytest.raises(RowProblem) as caught:
        adapter(row, source(fmt, **fields))
    return caught.value.reason, caught.value.message


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": speaker, "value": text} for speaker, text in pairs]


# ------------------------------------------------------------------------------- file kinds --
def test_json_array_alpaca_becomes_records_with_provenance(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA_ROWS, indent=2), encoding="utf-8")
    src = source("alpaca", path, category="qa", origin="synthetic", license="apache-2.0")

    out = read_source(src, path)

    assert out.records.schema == RECORD_SCHEMA
    assert out.records.column("source_row").to_pylist() == [0, 1, 2]
    assert out.records.column("messages").to_pylist() == [
        [{"role": "user", "content": "Name a primary color."}, {"role": "assistant", "content": "Red."}],
        [{"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    ]
    first = out.records.to_pylist()[0]
    assert {k: v for k, v in first.items() if k != "messages"} == {
        "example_id": short_hash("src", 0), "content_hash": None, "source": "src", "source_format": "alpaca",
        "source_uri": str(path), "source_row": 0, "source_location": "index 0 (line 2)", "category": "qa",
        "origin": "synthetic", "license": "apache-2.0",
    }
    assert [d["reason"] for d in decisions_of(out)] == ["kept"] * 3
    assert out.stats == {"n_in": 3, "n_quarantined": 0, "source": "src", "quarantined_by_reason": {}}


def test_category_auto_is_left_null_for_normalize(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS[:1])
    out = read_source(source("alpaca", path), path)
    assert out.records.column("category").to_pylist() == [None]


def test_jsonl_with_bom_blank_lines_and_crlf_uses_physical_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps(ALPACA_ROWS[0]), "", "   ", json.dumps(ALPACA_ROWS[1])]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n")

    out = read_source(source("alpaca", path), path)

    assert out.records.column("source_row").to_pylist() == [1, 4]  # blank lines are not rows
    assert out.stats["n_in"] == 2
    assert out.extra["examples"].column("raw").to_pylist() == [lines[0], lines[3]]


def test_jsonl_bad_line_in_the_middle_quarantines_only_that_line(tmp_path):
    path = tmp_path / "a.jsonl"
    good = [json.dumps(r) for r in ALPACA_ROWS]
    path.write_text("\n".join([good[0], good[1], '{"instruction": "x", "output": ', good[2]]) + "\n")

    out = read_source(source("alpaca", path), path)

    decisions = decisions_of(out)
    assert [d["reason"] for d in decisions] == ["kept", "kept", "invalid_json", "kept"]
    assert decisions[2]["kept"] is False
    assert decisions[2]["detail"] == {
        "location": "line 3", "error": "not valid JSON: Expecting value at column 32",
    }
    assert decisions[2]["example_id"] == short_hash("src", 3)
    assert out.records.column("source_row").to_pylist() == [1, 2, 4]
    assert out.stats["n_quarantined"] == 1


def test_jsonl_line_that_is_not_utf8_is_invalid_encoding_for_that_line_only(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        json.dumps(ALPACA_ROWS[0]).encode() + b"\n"
        + b'{"instruction": "caf\xe9", "output": "x"}\n'
        + json.dumps(ALPACA_ROWS[1]).encode() + b"\n"
    )
    out = read_source(source("alpaca", path), path)
    bad = decisions_of(out)[1]
    assert bad["reason"] == "invalid_encoding"
    assert bad["detail"] == {
        "location": "line 2",
        "error": "byte 0xe9 at byte 21 of the line is not UTF-8; re-save the file as UTF-8",
    }
    assert out.records.num_rows == 2
    assert out.extra["examples"].column("raw").to_pylist()[1] == '{"instruction": "caf\ufffd", "output": "x"}'


def test_row_that_is_not_an_object_is_not_an_object(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ALPACA_ROWS[0]) + "\n" + "[1, 2]\n" + '"text"\n')
    out = read_source(source("alpaca", path), path)
    bad = decisions_of(out)[1:]
    assert [d["reason"] for d in bad] == ["not_an_object", "not_an_object"]
    assert bad[0]["detail"] == {
        "location": "line 2", "error": "the row is a list, expected an object with the alpaca fields",
    }
    assert bad[1]["detail"]["location"] == "line 3"


def test_json_file_that_is_not_an_array_is_read_as_json_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("\n" + json.dumps(ALPACA_ROWS[0]) + "\n" + json.dumps(ALPACA_ROWS[1]) + "\n")
    out = read_source(source("alpaca", path), path)
    assert out.records.column("source_row").to_pylist() == [2, 3]


def invalid_rows(out) -> list[tuple[str, str]]:
    return [(d["detail"]["location"], d["detail"]["error"]) for d in decisions_of(out) if d["reason"] == "invalid_json"]


def test_json_array_broken_element_is_quarantined_alone(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n'
        '  {"instruction": "c, "output": "d"},\n'  # the closing quote after c is missing
        '  {"instruction": "e", "output": "f"}\n]\n'
    )
    out = read_source(source("alpaca", path), path)
    assert out.records.column("source_row").to_pylist() == [0, 2]
    assert [m[0]["content"] for m in out.records.column("messages").to_pylist()] == ["a", "e"]
    assert invalid_rows(out) == [("index 1 (line 3)", "not valid JSON: Expecting ',' delimiter at line 3, column 24")]
    assert out.extra["examples"].column("raw").to_pylist()[1] == '{"instruction": "c, "output": "d"}'
    assert [d["detail"]["location"] if d["detail"] else None for d in decisions_of(out)] == [
        None, "index 1 (line 3)", None,
    ]


def test_json_array_on_one_line_resynchronises_after_a_missing_quote(tmp_path):
    rows = [{"conversations": turns(("human", f"Q{i}"), ("gpt", f"A{i}"))} for i in range(4)]
    text = json.dumps(rows).replace('"Q1"', '"Q1', 1)  # inverts every later quote for a naive scan
    path = tmp_path / "one_line.json"
    path.write_text(text)
    out = read_source(source("sharegpt", path), path)
    assert out.records.column("source_row").to_pylist() == [0, 2, 3]
    assert [location for location, _ in invalid_rows(out)] == ["index 1 (line 1)"]


def test_json_array_cut_short_keeps_the_rows_before_and_flags_the_last(tmp_path):
    full = json.dumps(ALPACA_ROWS, indent=1)
    cut = full[: full.index('"Say hi."') + 4]  # inside the third element's instruction
    path = tmp_path / "cut.json"
    path.write_text(cut)
    out = read_source(source("alpaca", path), path)
    assert out.records.column("source_row").to_pylist() == [0, 1]
    [(location, error)] = invalid_rows(out)
    assert location == "index 2 (line 12)"  # the line of the element's "{"
    assert error.startswith("not valid JSON: Unterminated string starting at line")
    assert error.endswith("the element does not end before the end of the file (a quote or bracket is missing, "
                          "or the file was cut short)")
    assert out.stats["n_in"] == 3

    # cut right after a whole element: the missing ']' is still reported on that element
    whole = tmp_path / "no_bracket.json"
    whole.write_text(json.dumps(ALPACA_ROWS[:2])[:-1])
    out = read_source(source("alpaca", whole), whole)
    assert out.records.column("source_row").to_pylist() == [0]
    assert invalid_rows(out) == [
        ("index 1 (line 1)", "not valid JSON: the file ends without the array's closing ']' (was it cut short?)")
    ]


def test_json_array_trailing_comma_empty_slot_and_nan(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        '[{"instruction": "a", "output": "b"}, ,\n'
        ' {"instruction": NaN, "output": "x"},\n'
        ' {"instruction": "c", "output": "d"},\n]'
    )
    out = read_source(source("alpaca", path), path)
    assert out.records.column("source_row").to_pylist() == [0, 3]
    assert [(d["reason"], d["detail"]["location"] if d["detail"] else None) for d in decisions_of(out)] == [
        ("kept", None),
        ("invalid_json", "index 1 (line 1)"),  # the empty slot between two commas
        ("wrong_type", "index 2 (line 2)"),
        ("kept", None),
    ]
    assert decisions_of(out)[2]["detail"]["error"] == 'field "instruction" is a number, expected text'


def test_json_array_text_after_the_closing_bracket_is_one_invalid_row(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA_ROWS[:1]) + "\n" + json.dumps(ALPACA_ROWS[1:]) + "\noops\n")
    out = read_source(source("alpaca", path), path)
    assert out.records.column("source_row").to_pylist() == [0, 1, 2]  # `cat a.json b.json` reads as one array
    assert invalid_rows(out) == [("index 3 (line 3)", "not valid JSON: text after the array's closing ']'")]


def test_json_array_with_no_parsable_element_is_a_source_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"instruction": "a" "output": "b"},\n{"instruction": \n')
    with pytest.raises(SourceError) as caught:
        read_source(source("alpaca", path, name="bad"), path)
    assert str(caught.value).startswith(
        f"source 'bad' ({path}): 0 of 2 rows could be read; first problems: "
        "index 0 (line 2): invalid_json: not valid JSON: Expecting ',' delimiter at line 2, column 21; "
        "index 1 (line 3): invalid_json: not valid JSON: Expecting value at line 4, column 1; the element does not"
    )


def test_json_file_holding_one_pretty_printed_object_is_refused(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ALPACA_ROWS}, indent=2))
    with pytest.raises(SourceError, match="one JSON object spanning several lines"):
        read_source(source("alpaca", path), path)


def test_json_array_element_problems_are_located_by_index(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([ALPACA_ROWS[0], 7, {"instruction": "x"}]))
    out = read_source(source("alpaca", path), path)
    details = [d["detail"] for d in decisions_of(out)]
    assert details[1] == {
        "location": "index 1 (line 1)", "error": "the row is a number, expected an object with the alpaca fields",
    }
    assert details[2] == {"location": "index 2 (line 1)", "error": 'missing field "output"'}
    assert out.extra["examples"].column("raw").to_pylist() == [json.dumps(ALPACA_ROWS[0]), "7", '{"instruction": "x"}']


def test_parquet_sharegpt_rows_are_indexed_from_zero(tmp_path):
    rows = [
        {"conversations": turns(("human", "Hi"), ("gpt", "Hello")), "tools": None},
        {"conversations": turns(("human", "Who?"), ("narrator", "Once")), "tools": "[]"},
        {"conversations": turns(("human", "2+2?"), ("gpt", "4")), "tools": None},
    ]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)

    out = read_source(source("sharegpt", path), path)

    assert out.records.column("source_row").to_pylist() == [0, 2]
    assert out.records.column("messages").to_pylist()[1] == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    ]
    assert decisions_of(out)[1]["detail"] == {
        "location": "index 1",
        "error": 'turn 1: unknown role "narrator"; map it to a role with the source\'s role_map',
    }


def test_parquet_union_struct_keys_do_not_look_like_mixed_schema(tmp_path):
    # Arrow gives every turn all four keys when rows differ; null keys must not count as "used".
    rows = [
        {"conversations": turns(("human", "Hi"), ("gpt", "Hello"))},
        {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"role": "assistant", "content": "Yo"}]},
    ]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = read_source(source("sharegpt", path), path)
    assert [d["reason"] for d in decisions_of(out)] == ["kept", "kept", "mixed_schema"]
    assert decisions_of(out)[2]["detail"] == {
        "location": "index 2", "error": "turn 1 uses role/content keys but turn 0 uses from/value",
    }


def test_file_that_is_not_parquet_is_a_source_error(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        read_source(source("alpaca", path), path)


def test_saved_dataset_folder_and_dataset_dict_split(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(ALPACA_ROWS[:2]).save_to_disk(str(folder))
    out = read_source(source("alpaca", folder), folder)
    assert out.records.column("source_row").to_pylist() == [0, 1]
    assert out.records.column("messages").to_pylist()[1][0] == {"role": "user", "content": "Translate to French.\n\ncat"}

    dict_folder = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ALPACA_ROWS[:1]),
        "test": datasets.Dataset.from_list(ALPACA_ROWS[1:]),
    }).save_to_disk(str(dict_folder))
    out = read_source(source("alpaca", dict_folder, hf_split="test"), dict_folder)
    assert out.records.num_rows == 2
    with pytest.raises(SourceError, match=r"no split 'validation' \(it has: test, train\)"):
        read_source(source("alpaca", dict_folder, hf_split="validation"), dict_folder)


def test_folder_that_is_not_a_saved_dataset_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not a dataset folder written by datasets.save_to_disk"):
        read_source(source("alpaca", tmp_path), tmp_path)


def test_hub_dataset_is_loaded_with_split_and_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split, revision):
        calls.append((name, split, revision))
        return datasets.Dataset.from_list(ALPACA_ROWS[:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = SourceConfig(name="hub", format="alpaca", hf_dataset="org/data", hf_split="dev", hf_revision="abc123")
    out = read_source(src, None)
    assert calls == [("org/data", "dev", "abc123")]
    assert out.records.column("source_uri").to_pylist() == ["hf://org/data@abc123/dev"]
    unpinned = SourceConfig(name="hub", format="alpaca", hf_dataset="org/data")
    assert source_uri(unpinned, None) == "hf://org/data@main/train"


@pytest.mark.parametrize("hub_id", ["tatsu-lab/alpaca", "squad", "HuggingFaceH4/ultrachat_200k", "org/data.v2"])
def test_hub_ids_are_accepted(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_hub_id(hub_id) is None


@pytest.mark.parametrize(("hub_id", "why"), [
    ("/tmp/outside", "looks like a local path"),
    ("../x", "looks like a local path"),
    ("./data", "looks like a local path"),
    ("org/../../etc", "looks like a local path"),
    ("~/data", "looks like a local path"),
    ("org\\data", "looks like a local path"),
    ("org/da\x00ta", "contains a NUL byte"),
    ("a/b/c", "is not a hub dataset id"),
    ("org/", "is not a hub dataset id"),
    ("C:data", "is not a hub dataset id"),
    ("json", "names a datasets builder that reads local files"),
    ("local_data", "names a local file or folder"),
    ("notes.jsonl", "names a local file or folder"),
])
def test_hub_ids_that_would_read_local_files_are_refused(hub_id, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_data").mkdir()
    (tmp_path / "notes.jsonl").write_text("{}\n")
    with pytest.raises(PathNotAllowed) as caught:
        check_hub_id(hub_id)
    assert why in str(caught.value)
    assert "use `path:` for local data (paths are confined to the project and SFTFLOW_DATA_DIRS)" in str(caught.value)


def test_local_hub_id_is_refused_by_fingerprint_and_reader_before_loading(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_data").mkdir()
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not be called"))
    for hub_id in ("/tmp/outside", "local_data"):
        src = SourceConfig(name="hub", format="alpaca", hf_dataset=hub_id)
        with pytest.raises(PathNotAllowed, match=r"^source 'hub': hf_dataset"):
            source_fingerprint(src, None)
        with pytest.raises(PathNotAllowed, match=r"^source 'hub': hf_dataset"):
            read_source(src, None)


def test_missing_file_and_unknown_extension_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        read_source(source("alpaca", tmp_path / "nope.json"), tmp_path / "nope.json")
    csv = tmp_path / "a.csv"
    csv.write_text("instruction,output\n")
    with pytest.raises(SourceError, match="unsupported file type '.csv'"):
        read_source(source("alpaca", csv), csv)


def test_source_with_zero_valid_rows_is_a_source_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a"}\nnot json\n{"output": "b"}\n{"instruction": 1, "output": "c"}\n')
    with pytest.raises(SourceError) as caught:
        read_source(source("alpaca", path, name="bad"), path)
    assert str(caught.value).startswith(
        f"source 'bad' ({path}): 0 of 4 rows could be read; first problems: "
        'line 1: missing_field: missing field "output"; '
        "line 2: invalid_json: not valid JSON: Expecting value at column 1; "
        'line 3: missing_field: missing field "instruction"; check'
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SourceError, match=r"\(.*empty\.jsonl\): the source holds no rows \(an empty file"):
        read_source(source("alpaca", empty), empty)


# ---------------------------------------------------------------------------------- alpaca --
def test_alpaca_system_history_and_input():
    row = {
        "instruction": "And 3+3?", "input": "show work", "output": "6",
        "system": "You are terse.", "history": [["1+1?", "2"], ["2+2?", "4"]],
    }
    assert alpaca_messages(row, source("alpaca")) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?\n\nshow work"}, {"role": "assistant", "content": "6"},
    ]


def test_alpaca_null_input_blank_system_and_null_history_are_absent():
    row = {"instruction": "Hi", "input": None, "output": "Hello", "system": "", "history": None}
    assert alpaca_messages(row, source("alpaca")) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
    ]


def test_alpaca_text_is_passed_through_untrimmed():
    row = {"instruction": "  Hi \n", "output": " Hello "}
    assert alpaca_messages(row, source("alpaca"))[0]["content"] == "  Hi \n"


@pytest.mark.parametrize(
    ("row", "reason", "message"),
    [
        ({"output": "x"}, Reason.MISSING_FIELD, 'missing field "instruction"'),
        ({"instruction": "x", "output": None}, Reason.MISSING_FIELD, 'field "output" is null'),
        ({"instruction": "x", "output": 42}, Reason.WRONG_TYPE, 'field "output" is a number, expected text'),
        ({"instruction": ["a"], "output": "x"}, Reason.WRONG_TYPE, 'field "instruction" is a list, expected text'),
        ({"instruction": "x", "input": {"a": 1}, "output": "y"}, Reason.WRONG_TYPE,
         'field "input" is an object, expected text'),
        ({"instruction": "x", "output": "y", "history": "no"}, Reason.WRONG_TYPE,
         'field "history" is text, expected a list of [user, assistant] pairs'),
        ({"instruction": "x", "output": "y", "history": [["a", "b", "c"]]}, Reason.WRONG_TYPE,
         'field "history"[0] is a list of 3, expected a [user, assistant] pair'),
        ({"instruction": "x", "output": "y", "history": [["a", None]]}, Reason.MISSING_FIELD,
         'field "history"[0] assistant text is null'),
    ],
)
def test_alpaca_quarantine_reasons(row, reason, message):
    assert quarantine("alpaca", row) == (reason, message)


def test_alpaca_columns_mapping_renames_fields_and_names_them_in_errors():
    src = source("alpaca", columns={"instruction": "prompt", "output": "completion"})
    assert alpaca_messages({"prompt": "Q", "completion": "A"}, src) == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
    ]
    assert quarantine("alpaca", {"prompt": "Q"}, columns={"instruction": "prompt", "output": "completion"}) == (
        Reason.MISSING_FIELD, 'missing field "completion" (output)',
    )


def test_unknown_column_name_in_mapping_is_a_source_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    with pytest.raises(SourceError, match=r"`columns` renames 'instrution', which is not alpaca fields"):
        read_source(source("alpaca", path, columns={"instrution": "prompt"}), path)


# -------------------------------------------------------------------------------- sharegpt --
def test_sharegpt_roles_row_system_and_ignored_extra_columns():
    row = {
        "system": "Be kind.",
        "conversations": turns(("human", "Hi"), ("GPT", "Hello"), ("user", "Bye"), ("chatgpt", "Bye!")),
        "tools": "[]",
    }
    assert sharegpt_messages(row, source("sharegpt")) == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"},
    ]


def test_sharegpt_conversations_given_as_json_text_are_parsed():
    row = {"conversations": json.dumps(turns(("human", "Hi"), ("gpt", "Hello")))}
    assert [m["role"] for m in sharegpt_messages(row, source("sharegpt"))] == ["user", "assistant"]
    assert quarantine("sharegpt", {"conversations": "[{"})[0] == Reason.INVALID_JSON


TOOL_ROW = {
    "conversations": turns(
        ("human", "Weather in Oslo?"), ("function_call", '{"name": "weather", "arguments": {"city": "Oslo"}}'),
        ("observation", '{"temp_c": 3}'), ("gpt", "It is 3 °C."),
    )
}


def test_sharegpt_tool_turns_kept_as_assistant_and_tool():
    assert sharegpt_messages(TOOL_ROW, source("sharegpt", tool_turns="keep")) == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
        {"role": "tool", "content": '{"temp_c": 3}'},
        {"role": "assistant", "content": "It is 3 °C."},
    ]


def test_sharegpt_tool_turns_quarantined(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"conversations": turns(("human", "Hi"), ("gpt", "Yo"))}, TOOL_ROW])
    out = read_source(source("sharegpt", path, tool_turns="quarantine"), path)
    assert [d["reason"] for d in decisions_of(out)] == ["kept", "tool_turn_quarantined"]
    assert decisions_of(out)[1]["detail"] == {
        "location": "line 2",
        "error": 'turn 1: "function_call" is a tool turn and the source sets tool_turns: quarantine',
    }


def test_sharegpt_role_map_adds_speakers_and_tool_mapped_speakers_count_as_tool_turns():
    row = {"conversations": turns(("Student", "Why?"), ("teacher", "Because."), ("api", "{}"))}
    role_map = {"student": "user", "Teacher": "assistant", "api": "tool"}
    assert [m["role"] for m in sharegpt_messages(row, source("sharegpt", role_map=role_map))] == [
        "user", "assistant", "tool",
    ]
    reason, _ = quarantine("sharegpt", row, role_map=role_map, tool_turns="quarantine")
    assert reason == Reason.TOOL_TURN_QUARANTINED


def test_sharegpt_columns_mapping_for_turn_keys():
    src = source("sharegpt", columns={"conversations": "dialog", "from": "speaker", "value": "text"})
    row = {"dialog": [{"speaker": "human", "text": "Hi"}, {"speaker": "gpt", "text": "Yo"}]}
    assert sharegpt_messages(row, src) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]


def test_sharegpt_rows_using_role_content_throughout_are_read():
    row = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    assert [m["role"] for m in sharegpt_messages(row, source("sharegpt"))] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("row", "reason", "message"),
    [
        ({"tools": "[]"}, Reason.MISSING_FIELD, 'missing field "conversations"'),
        ({"conversations": {"from": "human"}}, Reason.WRONG_TYPE,
         'field "conversations" is an object, expected a list of turns'),
        ({"conversations": ["hi"]}, Reason.WRONG_TYPE, "turn 0 is text, expected an object"),
        ({"conversations": [{"value": "hi"}, {"from": "gpt", "value": "x"}]}, Reason.MISSING_FIELD,
         'turn 0: missing field "from"'),
        ({"conversations": turns(("human", "Hi"), ("gpt", None))}, Reason.MISSING_FIELD,
         'turn 1: field "value" is null'),
        ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]}, Reason.MISSING_FIELD,
         'turn 1: missing field "value"'),
        ({"conversations": turns(("human", "Hi"), ("gpt", 3))}, Reason.WRONG_TYPE,
         'turn 1: field "value" is a number, expected text'),
        ({"conversations": turns(("human", "Hi"), ("gpt", "x"), ("human", "y"), ("narrator", "z"))},
         Reason.UNKNOWN_ROLE, 'turn 3: unknown role "narrator"; map it to a role with the source\'s role_map'),
        ({"conversations": [{"from": "human", "value": "Hi"}, {"role": "assistant", "content": "x"}]},
         Reason.MIXED_SCHEMA, "turn 1 uses role/content keys but turn 0 uses from/value"),
        ({"conversations": [{"from": "human", "content": "Hi"}]}, Reason.MIXED_SCHEMA,
         "turn 0 mixes from/value and role/content keys"),
        ({"system": 5, "conversations": []}, Reason.WRONG_TYPE, 'field "system" is a number, expected text'),
    ],
)
def test_sharegpt_quarantine_reasons(row, reason, message):
    assert quarantine("sharegpt", row) == (reason, message)


# ---------------------------------------------------------------------------------- openai --
def test_openai_roles_parts_and_tool_calls():
    calls = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]
    row = {"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "content": '{"temp_c": 3}', "tool_call_id": "c1"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "function", "content": "{}", "name": "weather"},
        {"role": "assistant", "content": "3 °C."},
    ]}
    calls_json = '[{"id":"c1","type":"function","function":{"name":"weather","arguments":"{\\"city\\":\\"Oslo\\"}"}}]'
    assert openai_messages(row, source("openai")) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather\nin Oslo?"},
        {"role": "assistant", "content": calls_json},
        {"role": "tool", "content": '{"temp_c": 3}'},
        {"role": "assistant", "content": "Checking.\n\n" + calls_json},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "3 °C."},
    ]


def test_openai_tool_turns_quarantined():
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": calls}]}
    assert quarantine("openai", row, tool_turns="quarantine") == (
        Reason.TOOL_TURN_QUARANTINED,
        "turn 1: an assistant turn with tool_calls and the source sets tool_turns: quarantine",
    )


@pytest.mark.parametrize(
    ("row", "reason", "message"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         Reason.UNSUPPORTED_CONTENT, 'turn 0: content part 0 has type "image_url"; only text parts can be ingested'),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, Reason.MISSING_FIELD,
         'turn 0: content part 0: field "text" is null'),
        ({"messages": [{"role": "user", "content": None}]}, Reason.MISSING_FIELD, 'turn 0: field "content" is null'),
        ({"messages": [{"role": "user", "content": 1.5}]}, Reason.WRONG_TYPE,
         'turn 0: field "content" is a number, expected text'),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}, Reason.UNKNOWN_ROLE,
         'turn 1: unknown role "wizard"; map it to a role with the source\'s role_map'),
        ({"messages": [{"role": "user", "content": "a"}, {"from": "gpt", "value": "b"}]}, Reason.MIXED_SCHEMA,
         "turn 1 uses from/value keys but turn 0 uses role/content"),
        ({"messages": [{"role": True, "content": "a"}]}, Reason.WRONG_TYPE,
         'turn 0: field "role" is a boolean, expected text'),
        ({"conversations": []}, Reason.MISSING_FIELD, 'missing field "messages"'),
    ],
)
def test_openai_quarantine_reasons(row, reason, message):
    assert quarantine("openai", row) == (reason, message)


def test_openai_unsupported_content_in_a_file_is_located(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    ]
    path = tmp_path / "o.json"
    path.write_text(json.dumps(rows))
    out = read_source(source("openai", path), path)
    assert decisions_of(out)[1]["detail"] == {
        "location": "index 1 (line 1)",
        "error": 'turn 0: content part 0 has type "image_url"; only text parts can be ingested',
    }


def test_openai_role_map_and_columns():
    src = source("openai", columns={"messages": "chat", "role": "author"}, role_map={"bot": "assistant"})
    row = {"chat": [{"author": "user", "content": "Hi"}, {"author": "bot", "content": "Yo"}]}
    assert openai_messages(row, src) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]


# ---------------------------------------------------------------------- examples, ids, keys --
def test_examples_table_has_one_row_per_row_read_including_failures(tmp_path):
    long_text = "x" * (RAW_PREVIEW_CHARS + 500)
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join([
        json.dumps(ALPACA_ROWS[0]), "{oops", json.dumps({"instruction": long_text, "output": "y"}), "",
    ]))
    out = read_source(source("alpaca", path), path)
    examples = out.extra["examples"]
    assert examples.schema == EXAMPLE_SCHEMA
    assert examples.column("source_row").to_pylist() == [1, 2, 3]
    assert examples.column("example_id").to_pylist() == out.decisions.column("example_id").to_pylist()
    raws = examples.column("raw").to_pylist()
    assert raws[1] == "{oops"
    assert len(raws[2]) == RAW_PREVIEW_CHARS
    assert out.stats["n_in"] == out.records.num_rows + out.stats["n_quarantined"] == 3


def test_example_id_is_stable_per_source_and_row(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    ids = read_source(source("alpaca", path, name="one"), path).records.column("example_id").to_pylist()
    again = read_source(source("alpaca", path, name="one"), path).records.column("example_id").to_pylist()
    other = read_source(source("alpaca", path, name="two"), path).records.column("example_id").to_pylist()
    assert ids == again == [short_hash("one", n) for n in (1, 2, 3)]
    assert len(set(ids)) == 3
    assert set(ids).isdisjoint(other)


@pytest.mark.parametrize("name", ["one", "alpaca_en-demo_2"])
def test_example_ids_are_the_short_hash_of_name_and_row(name):
    example_id = _example_ids(name)
    assert [example_id(n) for n in (0, 1, 41, 10**12)] == [short_hash(name, n) for n in (0, 1, 41, 10**12)]


@pytest.mark.parametrize("value", [
    {"instruction": 'a "quoted" \\ line\n', "n": 1.5, "ok": True, "none": None, "nested": [{"x": "caf\u00e9"}]},
    ["not", "an", "object"], "text", 10**30,
])
def test_raw_preview_is_the_rows_json(value):
    assert raw_preview(value) == json.dumps(value, ensure_ascii=False, default=str)[:RAW_PREVIEW_CHARS]


def test_source_fingerprint_follows_the_bytes(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    src = source("alpaca", path)
    before = source_fingerprint(src, path)
    assert source_fingerprint(src, path) == before
    data = bytearray(path.read_bytes())
    data[-3] = ord("X")  # one byte inside the last output
    path.write_bytes(bytes(data))
    assert source_fingerprint(src, path) != before

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "part.arrow").write_bytes(b"abc")
    tree_before = source_fingerprint(src, folder)
    (folder / "part.arrow").write_bytes(b"abd")
    assert source_fingerprint(src, folder) != tree_before

    hub = SourceConfig(name="hub", format="alpaca", hf_dataset="org/data", hf_revision="v1", hf_split="dev")
    assert source_fingerprint(hub, None) == "hf:org/data@v1/dev"


def test_ingest_stage_writes_records_decisions_and_examples(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [*ALPACA_ROWS, {"instruction": "no output"}])
    config = source("alpaca", path).canonical()
    call = StageCall(
        stage="ingest", key="k1", label="src", code_hash="c", config=config, config_hash="h",
        params={"path": str(path)}, root=str(tmp_path), warehouse=str(tmp_path / "wh"),
    )
    manifest, hit = execute(call, ingest_stage.compute)
    assert not hit
    assert (manifest.n_in, manifest.n_out) == (4, 3)
    assert sorted(f.name for f in manifest.files) == ["decisions.parquet", "examples.parquet", "records-00000.parquet"]
    assert pq.read_table(manifest.file("examples.parquet")).num_rows == 4
    # under the project root, the source is named relative to it: the bytes do not depend on the checkout
    assert set(pq.read_table(manifest.file("examples.parquet")).column("source_uri").to_pylist()) == {"a.jsonl"}
    assert execute(call, ingest_stage.compute)[1] is True  # found on disk the second time


# ------------------------------------------------------------------------- real-world files --
def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real-world files live in ../shared/data)")
    return path


def test_real_alpaca_demo_every_row_accounted_for():
    path = shared_file("alpaca_en_demo.json")
    n_rows = len(json.loads(path.read_text(encoding="utf-8")))
    out = read_source(SourceConfig(name="alpaca_en_demo", format="alpaca", path=str(path)), path)
    assert n_rows == 999
    assert out.records.num_rows + out.stats["n_quarantined"] == n_rows == out.extra["examples"].num_rows
    assert out.records.num_rows == 999  # the file is clean: nothing to quarantine
    with_input = sum(1 for m in out.records.column("messages").to_pylist() if "\n\n" in m[0]["content"])
    assert with_input >= 412  # rows with an input (and instructions that contain blank lines)


def test_real_glaive_toolcall_demo_every_row_accounted_for():
    path = shared_file("glaive_toolcall_en_demo.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    n_tool_rows = sum(any(t["from"] in ("function_call", "observation") for t in r["conversations"]) for r in rows)
    kept = read_source(SourceConfig(name="glaive", format="sharegpt", path=str(path)), path)
    assert len(rows) == 300
    assert kept.records.num_rows == 300 and kept.stats["n_quarantined"] == 0
    roles = {m["role"] for ms in kept.records.column("messages").to_pylist() for m in ms}
    assert roles == {"user", "assistant", "tool"}

    quarantined = read_source(
        SourceConfig(name="glaive", format="sharegpt", path=str(path), tool_turns="quarantine"), path
    )
    assert quarantined.stats["quarantined_by_reason"] == {"tool_turn_quarantined": n_tool_rows}
    assert quarantined.records.num_rows + quarantined.stats["n_quarantined"] == 300


def test_parts_of_a_source_concatenate_to_the_whole(tmp_path):
    # a source read 7 rows at a time gives the same tables, decisions and stats as in one part
    from sftflow.tasks.ingest import read_source_parts

    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
             for i in range(20)]
    lines[3] = "{broken"
    path.write_text("\n".join(lines) + "\n")
    source = SourceConfig(name="s", path="rows.jsonl", format="openai")
    whole = read_source_parts(source, path, tmp_path, rows_per_part=1000)
    parted = read_source_parts(source, path, tmp_path, rows_per_part=7)
    one, many = list(whole.parts), list(parted.parts)
    assert (len(one), len(many)) == (1, 3)
    for name in ("records", "decisions"):
        assert pa.concat_tables([getattr(p, name) for p in many]).equals(getattr(one[0], name))
    assert pa.concat_tables([p.extra["examples"] for p in many]).equals(one[0].extra["examples"])
    assert parted.stats() == whole.stats() and parted.stats()["n_in"] == 20


def test_a_source_of_exactly_one_full_part_ends_cleanly(tmp_path):
    from sftflow.tasks.ingest import read_source_parts

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                     "content": f"a{i}"}]}) + "\n" for i in range(4)))
    parts = list(read_source_parts(SourceConfig(name="s", path="rows.jsonl", format="openai"), path, tmp_path,
                                   rows_per_part=4).parts)
    assert [p.records.num_rows for p in parts] == [4]


# ---------------------------------------------------------------------- tables built by column --
_ROWS_OF_MESSAGES = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello"}],
    [{"role": "user", "content": "é"}, {"role": "assistant", "content": ""}],
    [],
]


def test_turn_columns_make_the_array_a_list_of_messages_would():
    from sftflow.tasks.core.records import MESSAGE_TYPE
    from sftflow.tasks.ingest import _TurnColumns

    turns = _TurnColumns()
    for messages in _ROWS_OF_MESSAGES:
        turns.add(messages)
    expected = pa.array(_ROWS_OF_MESSAGES, MESSAGE_TYPE)
    assert turns.array().equals(expected)
    assert turns.array().buffers()[1] == expected.buffers()[1]  # the same offsets


def test_turn_columns_over_2_gib_of_text_let_pyarrow_split_the_column(monkeypatch):
    """pa.array answers a ChunkedArray for strings that do not fit one array; the column is then
    converted from the rows' messages (simulated: 2 GiB of text is too much for a test)."""
    import sftflow.tasks.ingest as ingest
    from sftflow.tasks.core.records import MESSAGE_TYPE

    class SplittingPyarrow:
        def __getattr__(self, name):
            return getattr(pa, name)

        @staticmethod
        def array(values, type=None):
            if type == pa.string():
                return pa.chunked_array([pa.array(values, type)])
            return pa.array(values, type)

    turns = ingest._TurnColumns()
    for messages in _ROWS_OF_MESSAGES:
        turns.add(messages)
    monkeypatch.setattr(ingest, "pa", SplittingPyarrow())
    assert turns.array().equals(pa.array(_ROWS_OF_MESSAGES, MESSAGE_TYPE))


def test_decisions_table_is_the_decision_logs():
    from sftflow.tasks.core.records import DecisionLog
    from sftflow.tasks.ingest import _decisions_table, _detail

    log = DecisionLog()
    log.add("a", Reason.KEPT)
    log.add("b", Reason.INVALID_JSON, detail={"location": "line 2", "error": "é"})
    table = _decisions_table(["a", "b"], ["kept", "invalid_json"], [None, _detail({"location": "line 2", "error": "é"})])
    assert table.equals(log.to_table())
