"""N-gram decontamination: eval files in every format, exact hit counts, actionable errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.recipe import EvalSetConfig
from tasks.core.workspace import PathNotAllowed, Workspace
from tasks.decontaminate import (
    EvalSetError,
    contamination_hits,
    eval_set_fingerprints,
    load_eval_ngrams,
    word_ngrams,
)

# 14 words: two 13-grams
ITEM = "Which planet in our solar system has the most moons orbiting it right now"
ITEM_WORDS = 14


def user_asks(text: str) -> list[dict]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "Saturn has the most."}]


def test_word_ngrams_ignore_case_and_punctuation():
    assert len(ITEM.split()) == ITEM_WORDS
    assert len(word_ngrams(ITEM, 13)) == ITEM_WORDS - 13 + 1
    assert word_ngrams(ITEM.upper().replace(" ", " ,  "), 13) == word_ngrams(ITEM, 13)
    assert word_ngrams("too short to hold one", 13) == set()
    assert all(0 <= g < 2**64 for g in word_ngrams(ITEM, 3))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def ws(tmp_path):
    return Workspace(root=tmp_path, warehouse=tmp_path / "warehouse")


def test_every_format_is_read(tmp_path, ws):
    write_jsonl(tmp_path / "text.jsonl", [{"text": "unrelated"}, {"text": ITEM}])
    (tmp_path / "text.json").write_text(json.dumps([{"text": ITEM}]), encoding="utf-8")
    pq.write_table(pa.table({"text": [ITEM]}), tmp_path / "text.parquet")
    write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Answer briefly.", "input": ITEM, "output": "Saturn"}])
    write_jsonl(tmp_path / "sharegpt.jsonl",
                [{"conversations": [{"from": "human", "value": ITEM}, {"from": "gpt", "value": "Saturn"}]}])
    write_jsonl(tmp_path / "openai.jsonl",
                [{"messages": [{"role": "user", "content": [{"type": "text", "text": ITEM}]},
                               {"role": "assistant", "content": "Saturn"}]}])
    sets = [
        EvalSetConfig(name="text_jsonl", path="text.jsonl"),
        EvalSetConfig(name="text_json", path="text.json"),
        EvalSetConfig(name="text_parquet", path="text.parquet"),
        EvalSetConfig(name="alpaca", path="alpaca.jsonl", format="alpaca"),
        EvalSetConfig(name="sharegpt", path="sharegpt.jsonl", format="sharegpt"),
        EvalSetConfig(name="openai", path="openai.jsonl", format="openai"),
    ]
    ngrams = load_eval_ngrams(sets, 13, ws.resolve_input)
    hits = contamination_hits(user_asks(f"Quick question: {ITEM}?"), ngrams, 13)
    assert hits == {s.name: 2 for s in sets}


def test_alpaca_instruction_and_input_joined(tmp_path, ws):
    # 7 words of instruction + 7 of input: only n-grams spanning both fields reach 13 words
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Please translate the following sentence into French",
                                        "input": "the cat sleeps on the warm mat"}])
    ngrams = load_eval_ngrams([EvalSetConfig(name="a", path="a.jsonl", format="alpaca")], 13, ws.resolve_input)
    prompt = "Please translate the following sentence into French:\nthe cat sleeps on the warm mat"
    assert contamination_hits(user_asks(prompt), ngrams, 13) == {"a": 2}


def test_hits_count_user_and_assistant_turns_only():
    ngrams = {"eval": word_ngrams(ITEM, 13)}
    assert contamination_hits([{"role": "system", "content": ITEM}, {"role": "user", "content": "hi"}],
                              ngrams, 13) == {"eval": 0}
    assert contamination_hits([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ITEM}],
                              ngrams, 13) == {"eval": 2}
    # a 12-word overlap is not contamination at n = 13
    assert contamination_hits(user_asks(" ".join(ITEM.split()[:12])), ngrams, 13) == {"eval": 0}
    # n-grams never span two turns
    half = ITEM.split()
    split_turns = [{"role": "user", "content": " ".join(half[:7])}, {"role": "assistant", "content": " ".join(half[7:])}]
    assert contamination_hits(split_turns, ngrams, 13) == {"eval": 0}


def test_errors_name_file_row_and_field(tmp_path, ws):
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"question": ITEM}])
    with pytest.raises(EvalSetError, match=r"bad\.jsonl:2: missing field 'text'"):
        load_eval_ngrams([EvalSetConfig(name="bad", path="bad.jsonl")], 13, ws.resolve_input)
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"broken\.jsonl:2: not valid JSON"):
        load_eval_ngrams([EvalSetConfig(name="broken", path="broken.jsonl")], 13, ws.resolve_input)
    (tmp_path / "data.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"eval sets are \.jsonl, \.ndjson, \.json or \.parquet files, not '\.csv'"):
        load_eval_ngrams([EvalSetConfig(name="csv", path="data.csv")], 13, ws.resolve_input)
    (tmp_path / "broken.json").write_text('[{"text": "ok"},\n {"text": "no end},\n {"text": "x"}]', encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"broken\.json:2 \(index 1\): not valid JSON: .*fix the eval set file there"):
        load_eval_ngrams([EvalSetConfig(name="broken", path="broken.json")], 13, ws.resolve_input)
    (tmp_path / "fake.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"^filters\.decontaminate\.eval_sets\[0\] \(pq\): .*fake\.parquet: not a readable"):
        load_eval_ngrams([EvalSetConfig(name="pq", path="fake.parquet")], 13, ws.resolve_input)


def test_missing_eval_file_names_the_recipe_field_at_load_and_plan_time(tmp_path, ws):
    write_jsonl(tmp_path / "e.jsonl", [{"text": ITEM}])
    sets = [EvalSetConfig(name="e", path="e.jsonl"), EvalSetConfig(name="gone", path="evals/missing.jsonl")]
    expected = (
        f"filters.decontaminate.eval_sets[1] (gone): file not found: {tmp_path / 'evals' / 'missing.jsonl'}; "
        "fix `filters.decontaminate.eval_sets[1].path` (relative to the project root)"
    )
    for read in (lambda: load_eval_ngrams(sets, 13, ws.resolve_input), lambda: eval_set_fingerprints(sets, ws.resolve_input)):
        with pytest.raises(EvalSetError) as caught:
            read()
        assert str(caught.value) == expected
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(EvalSetError, match=r"eval_sets\[0\] \(dir\): is a folder, not a file"):
        eval_set_fingerprints([EvalSetConfig(name="dir", path="folder.jsonl")], ws.resolve_input)


def test_eval_files_read_like_sources_bom_and_json_lines_in_json(tmp_path, ws):
    bom = "\ufeff" + json.dumps({"text": ITEM}) + "\r\n"
    (tmp_path / "bom.jsonl").write_text(bom, encoding="utf-8")
    (tmp_path / "lines.json").write_text(bom + json.dumps({"text": "unrelated"}) + "\n", encoding="utf-8")
    (tmp_path / "bom_array.json").write_text("\ufeff" + json.dumps([{"text": ITEM}]), encoding="utf-8")
    sets = [
        EvalSetConfig(name="bom", path="bom.jsonl"),
        EvalSetConfig(name="lines", path="lines.json"),
        EvalSetConfig(name="bom_array", path="bom_array.json"),
    ]
    ngrams = load_eval_ngrams(sets, 13, ws.resolve_input)
    assert ngrams == {name: word_ngrams(ITEM, 13) for name in ("bom", "lines", "bom_array")}


def test_duplicate_names_and_outside_paths_refused(tmp_path, ws):
    write_jsonl(tmp_path / "e.jsonl", [{"text": ITEM}])
    twice = [EvalSetConfig(name="e", path="e.jsonl"), EvalSetConfig(name="e", path="e.jsonl")]
    with pytest.raises(EvalSetError, match="used twice"):
        load_eval_ngrams(twice, 13, ws.resolve_input)
    with pytest.raises(PathNotAllowed):
        load_eval_ngrams([EvalSetConfig(name="etc", path="/etc/hostname")], 13, ws.resolve_input)


def test_fingerprints_follow_file_bytes(tmp_path, ws):
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": ITEM}])
    sets = [EvalSetConfig(name="e", path="e.jsonl")]
    first = eval_set_fingerprints(sets, ws.resolve_input)
    assert first == eval_set_fingerprints(sets, ws.resolve_input) and len(first[0]) == 64
    write_jsonl(path, [{"text": ITEM + " again"}])
    assert eval_set_fingerprints(sets, ws.resolve_input) != first
