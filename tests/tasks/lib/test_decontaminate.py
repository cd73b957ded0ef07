"""Decontamination: eval files in every format, exact hit counts, short items, template text,
Chinese items, actionable errors."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core.recipe_filters import DecontaminateConfig, EvalSetConfig
from sftflow.tasks.core.workspace import PathNotAllowed, Workspace
from sftflow.tasks.lib.decontaminate import (
    MAX_MATCHES_RECORDED,
    eval_set_fingerprints,
    load_eval_index,
    unit_ngrams,
)
from sftflow.tasks.lib.eval_files import EvalSetError
from tests.tasks.lib import decon_corpus as corpus
from tests.tasks.lib.decon_corpus import chat, write_jsonl

# 14 words: two 13-grams
ITEM = "Which planet in our solar system has the most moons orbiting it right now"
ITEM_WORDS = 14


def user_asks(text: str) -> list[dict]:
    return chat(text, "Saturn has the most.")


@pytest.fixture()
def ws(tmp_path):
    return Workspace(root=tmp_path, warehouse=tmp_path / "warehouse")


def index_of(ws, *sets: EvalSetConfig, **cfg):
    return load_eval_index(DecontaminateConfig(eval_sets=list(sets), **cfg), ws.resolve_input)


def text_set(tmp_path, ws, texts, name="e", **cfg):
    """The index of one `text` eval set holding `texts`, one row each."""
    write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in texts])
    return index_of(ws, EvalSetConfig(name=name, path=f"{name}.jsonl"), **cfg)


def hits(index, messages) -> dict[str, int]:
    return index.match(messages).hits_by_set


def test_unit_ngrams_ignore_case_and_punctuation():
    assert len(ITEM.split()) == ITEM_WORDS
    assert len(unit_ngrams(ITEM, 13)) == ITEM_WORDS - 13 + 1
    assert unit_ngrams(ITEM.upper().replace(" ", " ,  "), 13) == unit_ngrams(ITEM, 13)
    assert unit_ngrams("too short to hold one", 13) == set()
    assert all(-(2**63) <= g < 2**63 for g in unit_ngrams(ITEM, 3))  # 64-bit keys


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
    index = index_of(ws, *sets)
    assert hits(index, user_asks(f"Quick question: {ITEM}?")) == {s.name: 2 for s in sets}


def test_alpaca_instruction_and_input_joined(tmp_path, ws):
    # 7 words of instruction + 7 of input: only n-grams spanning both fields reach 13 words
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Please translate the following sentence into French",
                                        "input": "the cat sleeps on the warm mat"}])
    index = index_of(ws, EvalSetConfig(name="a", path="a.jsonl", format="alpaca"))
    prompt = "Please translate the following sentence into French:\nthe cat sleeps on the warm mat"
    assert hits(index, user_asks(prompt)) == {"a": 2}


def test_hits_count_user_and_assistant_turns_only(tmp_path, ws):
    index = text_set(tmp_path, ws, [ITEM])
    assert hits(index, [{"role": "system", "content": ITEM}, {"role": "user", "content": "hi"}]) == {"e": 0}
    assert hits(index, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ITEM}]) == {"e": 2}
    # a 12-word part of a 14-word item is not contamination at n = 13
    assert hits(index, user_asks(" ".join(ITEM.split()[:12]))) == {"e": 0}
    # keys never span two turns
    half = ITEM.split()
    split_turns = [{"role": "user", "content": " ".join(half[:7])}, {"role": "assistant", "content": " ".join(half[7:])}]
    assert hits(index, split_turns) == {"e": 0}


# ------------------------------------------------------------------------------ short items --
def test_short_item_is_matched_whole_inside_a_turn_and_named(tmp_path, ws):
    (tmp_path / "evals").mkdir()
    write_jsonl(tmp_path / "evals" / "q.jsonl", [{"text": ITEM}, {"text": "What is the boiling point of ethanol?"}])
    index = index_of(ws, EvalSetConfig(name="q", path="evals/q.jsonl"))
    match = index.match(chat("My homework says: what is the BOILING point of ethanol... any idea?", "78 C."))
    assert match.hits_by_set == {"q": 1}
    # named by the recipe's path, so the detail does not depend on where the project lives
    assert match.matches == [{"eval_set": "q", "item": "evals/q.jsonl:2", "by": "whole_item"}]
    # a part of the short item, or its words in another order, is not the item
    assert index.match(chat("What is the boiling point of water?", "100 C.")).hits == 0
    assert index.match(chat("Ethanol: what is the point of boiling it?", "None.")).hits == 0
    # a whole item is matched on unit boundaries, not inside longer words
    assert text_set(tmp_path, ws, ["cat sat down"], name="w").match(chat("the tomcat sat downwards", "x")).hits == 0


def test_items_below_min_item_units_are_not_used_and_counted(tmp_path, ws):
    index = text_set(tmp_path, ws, ["Why?", "Define entropy", "Define entropy precisely"])
    assert index.sets["e"].stats["items_without_keys"] == 2
    assert index.match(chat("Define entropy", "x")).hits == 0
    assert index.match(chat("Please define entropy precisely.", "x")).hits == 1
    loose = text_set(tmp_path, ws, ["Define entropy"], name="loose", min_item_units=2)
    assert loose.match(chat("Define entropy", "x")).hits == 1
    strict = text_set(tmp_path, ws, ["Define entropy precisely"], name="strict", min_item_units=13)
    assert strict.match(chat("Define entropy precisely", "x")).hits == 0  # n-grams only


def test_short_answers_are_not_whole_keys(tmp_path, ws):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "What is the capital city of the country of France",
                                        "input": "", "output": "The answer is Paris"}])
    index = index_of(ws, EvalSetConfig(name="a", path="a.jsonl", format="alpaca"))
    assert index.match(chat("Where is the Louvre?", "The answer is Paris, of course.")).hits == 0
    assert index.match(chat("What is the capital city of the country of France?", "Paris.")).hits == 1


def test_each_matched_item_is_named_up_to_the_cap(tmp_path, ws):
    items = [f"Explain the main idea of chapter number {i} of the textbook" for i in range(8)]
    index = text_set(tmp_path, ws, items + [ITEM], max_ngram_item_fraction=1.0, max_ngram_items=None)
    row = chat(" ".join(reversed(items)), ITEM)
    match = index.match(row)
    assert match.hits_by_set == {"e": 8 + 2}  # 8 whole items + the long item's two 13-grams
    assert [m["item"] for m in match.matches] == [f"e.jsonl:{i}" for i in range(1, MAX_MATCHES_RECORDED + 1)]


def test_exact_duplicate_items_count_once(tmp_path, ws):
    # the same item twice in a 10-item set is one item: its text is not "template"
    texts = [ITEM, ITEM] + [f"Name the author of book number {i} on the reading list" for i in range(8)]
    index = text_set(tmp_path, ws, texts)
    assert index.sets["e"].stats["duplicate_items"] == 1 and index.sets["e"].stats["items"] == 9
    assert hits(index, user_asks(ITEM)) == {"e": 2}


# -------------------------------------------------------------------------------- template --
def boilerplate_corpus(seed: int):
    writer = corpus.Writer(seed)
    questions = [writer.sentence(writer.rng.randint(4, 25)) for _ in range(80)]
    others = [writer.sentence(writer.rng.randint(4, 25)) for _ in range(300)]
    return writer, questions, others


@pytest.mark.parametrize("fmt", ["text", "alpaca"])
def test_shared_boilerplate_line_does_not_drop_clean_rows(tmp_path, ws, fmt):
    """Every eval item starts with one 16-word instruction line; clean rows use the same line
    with other questions. The old rule dropped all of them (the line's 13-grams, or the line
    plus the question's common first word); copies of the items are still all found."""
    writer, questions, others = boilerplate_corpus(seed=2)
    if fmt == "text":
        rows = [{"text": f"{corpus.BOILERPLATE} {q}"} for q in questions]
    else:
        rows = [{"instruction": corpus.BOILERPLATE, "input": q, "output": writer.sentence(8)} for q in questions]
    write_jsonl(tmp_path / "b.jsonl", rows)
    index = index_of(ws, EvalSetConfig(name="b", path="b.jsonl", format=fmt))
    clean = [chat(f"{corpus.BOILERPLATE}\n\n{q}", writer.paragraph(30, 60)) for q in others]
    copies = [chat(f"{corpus.BOILERPLATE}\n\n{q}", writer.paragraph(30, 60)) for q in questions]
    assert sum(index.match(row).hits > 0 for row in clean) == 0
    assert sum(index.match(row).hits > 0 for row in copies) == len(questions)
    stats = index.sets["b"].stats
    assert stats["items_with_template_text"] == 80 and stats["items_without_keys"] == 0


def test_per_subject_preamble_in_a_large_set_is_template(tmp_path, ws):
    """MMLU-like: a 12-word preamble per subject (shorter than n, 100 items each, 2% of the set)."""
    writer = corpus.Writer(3)
    subjects = [writer.words_of(2) for _ in range(5)]
    rows, asked = [], []
    for subject in subjects:
        for _ in range(100):
            question = writer.sentence(writer.rng.randint(6, 14))
            asked.append((subject, question))
            rows.append({"text": f"The following are multiple choice questions (with answers) about {subject}. {question}"})
    write_jsonl(tmp_path / "m.jsonl", rows)
    index = index_of(ws, EvalSetConfig(name="m", path="m.jsonl"), max_ngram_item_fraction=0.5)
    assert index.sets["m"].stats["key_item_limit"] == 50  # max_ngram_items caps the 0.5 share
    preamble = f"The following are multiple choice questions (with answers) about {subjects[0]}."
    clean = [chat(f"{preamble} {writer.sentence(writer.rng.randint(6, 14))}", "B") for _ in range(200)]
    assert sum(index.match(row).hits > 0 for row in clean) == 0
    copies = [chat(f"{preamble} {q}", "B") for s, q in asked if s == subjects[0]]
    assert sum(index.match(row).hits > 0 for row in copies) == len(copies)


# ------------------------------------------------------------------------- acceptance --
def caught(index, rows) -> float:
    return sum(index.match(row).hits > 0 for row in rows) / len(rows)


def test_long_and_short_items_copied_verbatim_are_caught_clean_rows_are_not(tmp_path, ws):
    """60 long items (20-40 words) and 100 short ones (3-12 words), each copied into two training
    rows (whole user turn; inside a longer user or assistant turn, some in capitals), among 1000
    clean rows of the same word distribution. Before: 0 of the 200 short copies were caught."""
    writer = corpus.Writer(1)
    items = corpus.eval_items(writer)
    index = text_set(tmp_path, ws, items)
    long_copies = [row for item in items[:60] for row in corpus.copies(writer, item)]
    short_copies = [row for item in items[60:] for row in corpus.copies(writer, item)]
    clean = corpus.clean_rows(writer, 1000)
    assert caught(index, long_copies) >= 0.95
    assert caught(index, short_copies) >= 0.95
    assert caught(index, clean) <= 0.01


ALPACA = corpus.SHARED_DATA / "alpaca_en_demo.json"


@pytest.mark.skipif(not ALPACA.is_file(), reason="real-world files live in ../shared/data")
def test_real_alpaca_items_copied_into_training_rows(tmp_path, ws):
    """150 rows of a real Alpaca file as the eval set (most instructions are under 13 words), the
    other 849 as clean training rows. Before: 140 of 300 copies caught."""
    eval_rows, train_rows = corpus.alpaca_split()
    write_jsonl(tmp_path / "a.jsonl", eval_rows)
    index = index_of(ws, EvalSetConfig(name="a", path="a.jsonl", format="alpaca"))
    rng = random.Random(5)
    copies = [chat(corpus.alpaca_prompt(r), "Here is my answer.") for r in eval_rows]
    copies += [chat(f"{rng.choice(['My teacher asked:', 'Quick one -', 'Task.'])} {corpus.alpaca_prompt(r)} Thanks!",
                    "Sure.") for r in eval_rows]
    assert caught(index, copies) >= 0.95
    # the clean rows that match are copies or near copies inside the file itself (a repeated
    # instruction, a shared answer paragraph): 4 of 849, as before this change
    assert caught(index, [chat(corpus.alpaca_prompt(r), r["output"]) for r in train_rows]) <= 0.01


def test_chinese_items_are_caught(tmp_path, ws):
    """\\w+ made each Chinese clause one "word": no 13-gram, so these were never caught before."""
    long_item = "请解释一下为什么天空在白天是蓝色的而在傍晚却是红色的"  # 26 characters
    short_item = "长城有多长"  # 5 characters: matched whole
    index = text_set(tmp_path, ws, [long_item, short_item])
    assert index.match(chat(f"老师今天问我们：{long_item}？我不知道。", "好的。")).matches == [
        {"eval_set": "e", "item": "e.jsonl:1", "by": "ngram"}]
    assert index.match(chat("你好", f"有人问过{short_item}，答案是两万多公里。")).hits_by_set == {"e": 1}
    assert index.match(chat("今天天气很好，我们去公园散步吧。", "好的，长城很美。")).hits == 0
    # mixed scripts: Chinese characters next to Latin letters are still units of their own
    assert index.match(chat(f"Q:{short_item}?", "ok")).hits == 1


# ------------------------------------------------------------------------------ errors --
def test_errors_name_file_row_and_field(tmp_path, ws):
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"question": ITEM}])
    with pytest.raises(EvalSetError, match=r"bad\.jsonl:2: missing field 'text'"):
        index_of(ws, EvalSetConfig(name="bad", path="bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"broken\.jsonl:2: not valid JSON"):
        index_of(ws, EvalSetConfig(name="broken", path="broken.jsonl"))
    (tmp_path / "data.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"eval sets are \.jsonl, \.ndjson, \.json or \.parquet files, not '\.csv'"):
        index_of(ws, EvalSetConfig(name="csv", path="data.csv"))
    (tmp_path / "broken.json").write_text('[{"text": "ok"},\n {"text": "no end},\n {"text": "x"}]', encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"broken\.json:2 \(index 1\): not valid JSON: .*fix the eval set file there"):
        index_of(ws, EvalSetConfig(name="broken", path="broken.json"))
    (tmp_path / "fake.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"^filters\.decontaminate\.eval_sets\[0\] \(pq\): .*fake\.parquet: not a readable"):
        index_of(ws, EvalSetConfig(name="pq", path="fake.parquet"))


def test_missing_eval_file_names_the_recipe_field_at_load_and_plan_time(tmp_path, ws):
    write_jsonl(tmp_path / "e.jsonl", [{"text": ITEM}])
    sets = [EvalSetConfig(name="e", path="e.jsonl"), EvalSetConfig(name="gone", path="evals/missing.jsonl")]
    expected = (
        f"filters.decontaminate.eval_sets[1] (gone): file not found: {tmp_path / 'evals' / 'missing.jsonl'}; "
        "fix `filters.decontaminate.eval_sets[1].path` (relative to the project root)"
    )
    for read in (lambda: index_of(ws, *sets), lambda: eval_set_fingerprints(sets, ws.resolve_input)):
        with pytest.raises(EvalSetError) as caught_error:
            read()
        assert str(caught_error.value) == expected
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(EvalSetError, match=r"eval_sets\[0\] \(dir\): is a folder, not a file"):
        eval_set_fingerprints([EvalSetConfig(name="dir", path="folder.jsonl")], ws.resolve_input)


def test_eval_files_read_like_sources_bom_and_json_lines_in_json(tmp_path, ws):
    bom = "\ufeff" + json.dumps({"text": ITEM}) + "\r\n"
    (tmp_path / "bom.jsonl").write_text(bom, encoding="utf-8")
    (tmp_path / "lines.json").write_text(bom + json.dumps({"text": "unrelated"}) + "\n", encoding="utf-8")
    (tmp_path / "bom_array.json").write_text("\ufeff" + json.dumps([{"text": ITEM}]), encoding="utf-8")
    names = ("bom", "lines", "bom_array")
    index = index_of(ws, *(EvalSetConfig(name=n, path=p) for n, p in zip(names, ("bom.jsonl", "lines.json", "bom_array.json"))))
    assert {name: set(s.ngrams) for name, s in index.sets.items()} == {name: unit_ngrams(ITEM, 13) for name in names}


def test_duplicate_names_and_outside_paths_refused(tmp_path, ws):
    write_jsonl(tmp_path / "e.jsonl", [{"text": ITEM}])
    with pytest.raises(EvalSetError, match="used twice"):
        index_of(ws, EvalSetConfig(name="e", path="e.jsonl"), EvalSetConfig(name="e", path="e.jsonl"))
    with pytest.raises(PathNotAllowed):
        index_of(ws, EvalSetConfig(name="etc", path="/etc/hostname"))


def test_fingerprints_follow_file_bytes(tmp_path, ws):
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": ITEM}])
    sets = [EvalSetConfig(name="e", path="e.jsonl")]
    first = eval_set_fingerprints(sets, ws.resolve_input)
    assert first == eval_set_fingerprints(sets, ws.resolve_input) and len(first[0]) == 64
    write_jsonl(path, [{"text": ITEM + " again"}])
    assert eval_set_fingerprints(sets, ws.resolve_input) != first


@pytest.mark.parametrize("ngram", [3, 4, 13])
def test_ngrams_skipped_before_hashing_are_never_keys(tmp_path, ws, ngram):
    """turn_keys hashes only n-grams whose first, middle and last units are those of some key:
    the hits equal those of hashing every n-gram of the turn."""
    rng = random.Random(ngram)
    vocabulary = [f"w{i}" for i in range(40)]
    items = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 20))) for _ in range(30)]
    index = text_set(tmp_path, ws, items, ngram=ngram, min_item_units=3)
    for _ in range(300):
        turn = " ".join(rng.choice(vocabulary + ["other", "words"]) for _ in range(rng.randint(0, 60)))
        every_ngram = unit_ngrams(turn, ngram)
        grams, _ = index.turn_keys(turn)
        assert grams <= every_ngram
        assert {g for g in every_ngram if g in index.sets["e"].ngrams} == {g for g in grams if g in index.sets["e"].ngrams}
