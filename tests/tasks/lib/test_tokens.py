"""Token counting: which tokenizer, exact MiniLM counts, local folders confined to the workspace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.core.workspace import PathNotAllowed, Workspace
from sftflow.tasks.lib.tokens import (
    BUILTIN_MINILM,
    load_token_counter,
    minilm_folder,
    resolve_tokenizer_spec,
    tokenizer_fingerprint,
)


@pytest.fixture(scope="module")
def minilm():
    return load_token_counter(BUILTIN_MINILM)


def test_spec_resolution():
    assert resolve_tokenizer_spec("my/tokenizer", "builtin:tiny-llama") == "my/tokenizer"
    assert resolve_tokenizer_spec(None, "Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_tokenizer_spec("", "models/local-base") == "models/local-base"
    assert resolve_tokenizer_spec(None, "builtin:tiny-llama") == BUILTIN_MINILM


def test_minilm_counts_are_exact_and_without_special_tokens(minilm):
    texts = ["Hello world, this is a test.", "", "Four.", "unbelievably"]
    # hello world , this is a test .  |  (nothing)  |  four .  |  un ##bel ##ie ##va ##bly
    assert minilm.count(texts) == [8, 0, 2, 5]
    assert minilm.count([]) == []


def test_long_texts_are_not_truncated(minilm):
    # MiniLM's context is 512 tokens; counting must see the whole text to catch too-long rows
    assert minilm.count(["word " * 1000]) == [1000]


def test_batches_larger_than_one_call(minilm, monkeypatch):
    import sftflow.tasks.lib.tokens as tokens

    monkeypatch.setattr(tokens, "COUNT_BATCH_TEXTS", 2)
    assert minilm.count(["a b", "a", "a b c", "", "a b c d"]) == [2, 1, 3, 0, 4]


def test_local_folder_is_loaded_and_named_by_its_bytes(tmp_path, minilm):
    folder = tmp_path / "tok"
    shutil.copytree(minilm_folder(), folder, ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    counter = load_token_counter("tok", ws.resolve_input)
    assert counter.count(["Hello world, this is a test."]) == [8]
    # same tokenizer bytes, same digest as the packaged one
    assert counter.name.split("@")[1] == minilm.name.split("@")[1]
    (folder / "vocab.txt").write_text((folder / "vocab.txt").read_text() + "sftflowtoken\n")
    assert tokenizer_fingerprint("tok", ws.resolve_input) != counter.name


def test_hub_ids_are_named_by_themselves(tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert tokenizer_fingerprint("org/some-model", ws.resolve_input) == "org/some-model"


def test_folders_outside_the_workspace_and_unknown_builtins_refused(tmp_path):
    ws = Workspace(root=tmp_path / "project", warehouse=tmp_path / "wh")
    with pytest.raises(PathNotAllowed):
        load_token_counter(str(minilm_folder()), ws.resolve_input)
    with pytest.raises(ValueError, match="unknown builtin tokenizer 'builtin:gpt'"):
        load_token_counter("builtin:gpt")


def test_tokenizers_are_loaded_without_remote_code(from_pretrained_calls):
    load_token_counter(str(minilm_folder()))  # a local folder goes through transformers
    assert [name for name, _ in from_pretrained_calls] == ["AutoTokenizer"]
    assert from_pretrained_calls[0][1]["trust_remote_code"] is False


def test_builtin_minilm_counts_equal_the_transformers_fast_tokenizer():
    """The builtin counter reads tokenizer.json with `tokenizers` (no torch in filter workers);
    its counts must be transformers' counts for the same folder, on every kind of text."""
    import json

    from transformers import AutoTokenizer

    from sftflow.tasks.lib.tokens import BUILTIN_MINILM, HFTokenCounter, RustTokenCounter, load_token_counter, minilm_folder

    texts = ["", " ", "Hello, world!", "naïve café — Ünïcödé, accents and CAPITALS", "日本語のテキストと中文",
             "emoji 🤖🚀 and tabs\tand\nnewlines", "x" * 5000, " ".join(["supercalifragilistic"] * 600),
             "def f(x):\n    return x ** 2  # code", "<s>[INST] special-looking [/INST]</s> [CLS] [SEP] [PAD]",
             "\u200bzero\u00a0width and non-breaking", "12345678901234567890 3.14159 1e-9"]
    samples = Path(__file__).resolve().parents[3] / "data" / "samples" / "openai.jsonl"
    for line in samples.read_text(encoding="utf-8").splitlines():
        try:
            texts += [m["content"] for m in json.loads(line)["messages"] if isinstance(m.get("content"), str)]
        except (ValueError, KeyError, TypeError):
            continue
    builtin = load_token_counter(BUILTIN_MINILM)
    assert isinstance(builtin, RustTokenCounter)
    reference = HFTokenCounter(AutoTokenizer.from_pretrained(str(minilm_folder()), use_fast=True), builtin.name)
    assert len(texts) > 100
    assert builtin.count(texts) == reference.count(texts)
    assert builtin.count(["x " * 3000])[0] == 3000  # never truncated


# ------------------------------------------------- counting by words equals whole-text counts --
def whole_text_counts(counter, texts: list[str]) -> list[int]:
    return [len(e.ids) for e in counter.tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_python_whitespace_lists_every_code_point_str_split_cuts_at():
    from sftflow.tasks.lib.tokens import PYTHON_WHITESPACE

    assert PYTHON_WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


# Characters BERT drops, maps or cuts at, around and inside words: the white space it deletes
# (vertical tab, form feed, U+001C-U+001F, U+0085), the one it keeps, control and format
# characters, accents it strips, CJK it isolates, punctuation, special tokens' text, long words.
_PIECES = ["word", "Hello", "un", "believ", "ably", "café", "NAÏVE", "日本", "語", "你好", "[CLS]", "[MASK]", "[UNK",
           ".", ",", "'", "—", "(", ")", "e.g.", "x" * 120, "ab" * 60, " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c",
           "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000", "\u200b", "\u00ad", "\x00", "\ufffd", "\x7f", "ﬁ", "Σ"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join), max_size=6))
def test_counts_by_words_equal_whole_text_counts(minilm, texts):
    assert minilm.count(texts) == whole_text_counts(minilm, texts)


def test_counts_by_words_equal_whole_text_counts_on_long_answers(minilm):
    from tests.tasks.lib.toxicity_corpus import buried_insults, generated_answers

    answers = generated_answers(300)
    texts = answers + buried_insults(answers) + ["a\x0bb c", "a\x85b", "x\x1cy z"]
    assert minilm.count(texts) == whole_text_counts(minilm, texts)
    assert minilm.count(texts) == minilm.count(texts)  # remembered word counts give the same again


# ASCII texts are cut into words by pyarrow; the ASCII white space it does not cut at
# (U+001C-U+001F) and what BERT deletes (vertical tab, form feed) send a text to str.split().
_ASCII_PIECES = ["word", "Hello", "un", "believ", "ably", "e.g.", ".", ",", "'", "(", "x" * 120, "[CLS]", " ", "  ",
                 "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x00", "\x7f", "\x01"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_ASCII_PIECES), max_size=30).map("".join), max_size=8),
       st.lists(st.lists(st.sampled_from(_PIECES), max_size=10).map("".join), max_size=2))
def test_ascii_texts_cut_by_pyarrow_count_as_whole_texts(minilm, ascii_texts, others):
    assert minilm.count(ascii_texts) == whole_text_counts(minilm, ascii_texts)
    mixed = ascii_texts[: len(ascii_texts) // 2] + others + ascii_texts[len(ascii_texts) // 2:]
    assert minilm.count(mixed) == whole_text_counts(minilm, mixed)


def test_texts_without_any_word_count_zero(minilm):
    assert minilm.count(["", " ", "\n\t ", "\x1c", "a", ""]) == [0, 0, 0, 0, 1, 0]
