"""profanity-check probabilities from array steps: bitwise those of profanity_check.predict_prob."""

from __future__ import annotations

import copy
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.lib import profanity_model
from sftflow.tasks.lib.profanity_model import ProfanityModel, ProfanityModelMismatch
from tests.tasks.lib.toxicity_corpus import INSULTS, alpaca_long_answers, buried_insults, generated_answers, SHARED_ALPACA

profanity_check = pytest.importorskip("profanity_check")

# Characters that exercise the analyzer: case (Greek final sigma, Turkish dotted I, German sharp
# s), accents kept as they are, underscores and digits (word characters), apostrophes and
# hyphens (token breaks), one-letter words (too short for a token), CJK, white space of every kind.
_TRICKY = ["Σ", "ΟΔΟΣ", "İstanbul", "STRASSE", "straße", "café", "naïve", "_", "__init__", "a_b", "42", "x2",
           "don't", "well-known", "I", "a", "日本語", "你好", "ｆｕｃｋ", "F*CK", "\t", "\n", "\xa0", "\u2003", "\x1c",
           "", "!!", "...", "—", "’s", "sh1t", "DaMn", "ASS", "Ass.", "(idiot)", "idiot's", "12345"]


def _varied_texts(n: int, seed: int) -> list[str]:
    """Texts mixing vocabulary words, profanity and tricky characters, of 0 to 60 words."""
    rng = random.Random(seed)
    model = ProfanityModel()
    vocabulary = sorted(model._index)
    words = vocabulary + _TRICKY + [w for insult in INSULTS for w in insult.split()]
    texts = []
    for _ in range(n):
        pieces = [rng.choice(words) for _ in range(rng.randint(0, 60))]
        pieces = [p.upper() if rng.random() < 0.1 else p for p in pieces]
        texts.append(rng.choice([" ", "  ", "\n", " , "]).join(pieces))
    return texts


def _assert_bitwise_equal(texts: list[str]) -> None:
    expected = profanity_check.predict_prob(texts)
    got = ProfanityModel().predict_prob(texts)
    assert got.dtype == expected.dtype == np.float64
    assert np.array_equal(got, expected)  # equal as float64 values, not within a tolerance


def test_toxicity_corpus_probabilities_are_bitwise_equal():
    clean = generated_answers(200)
    texts = INSULTS + clean + buried_insults(clean)
    if SHARED_ALPACA.is_file():
        real = alpaca_long_answers()
        texts += real + buried_insults(real)
    _assert_bitwise_equal(texts)
    # and cut into the sentences the filter scores
    from sftflow.tasks.lib.toxicity import split_sentences

    _assert_bitwise_equal([sentence for text in texts for sentence in split_sentences(text)])


def test_thousands_of_varied_texts_are_bitwise_equal():
    _assert_bitwise_equal(_varied_texts(5000, seed=1))


def test_texts_scored_in_chunks_are_bitwise_equal(monkeypatch):
    monkeypatch.setattr(profanity_model, "TEXTS_PER_CHUNK", 7)  # 300 texts: 43 chunks, the last one short
    texts = _varied_texts(300, seed=2) + ["日本語 idiot", "", "shut up you moron"]
    _assert_bitwise_equal(texts)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("abcsfkuhitdomSFKΣσςİıßé_0 \t\n.,'-!") + ["\xa0", "日"]),
                        max_size=80), max_size=8))
def test_arbitrary_texts_are_bitwise_equal(texts):
    if texts:
        _assert_bitwise_equal(texts)


def test_empty_batch():
    assert ProfanityModel().predict_prob([]).shape == (0,)


def test_a_model_fitted_with_other_analyzer_settings_is_refused():
    vectorizer = copy.deepcopy(profanity_check.profanity_check.vectorizer)
    vectorizer.ngram_range = (1, 2)
    with pytest.raises(ProfanityModelMismatch, match="ngram_range"):
        ProfanityModel(vectorizer, profanity_check.profanity_check.model)
    del vectorizer._tfidf
    with pytest.raises(ProfanityModelMismatch, match="_tfidf"):
        ProfanityModel(vectorizer, profanity_check.profanity_check.model)


# ---------------------------------------------- ASCII texts: tokens from bytes, not the regex --
_ASCII = st.text(alphabet=st.sampled_from([chr(c) for c in range(128)]), max_size=60)
_ASCII_WORDY = st.lists(st.sampled_from(["ass", "Shit", "DAMN", "idiot", "a", "I", "_", "__x__", "a_b", "42", "x2",
                                         "don't", "e.g.", "well-known", " ", "  ", "\t", "\n", "\x0b", "\x1c", "\x00",
                                         ".", "-", "'", "(", ")", "@", "\x7f"]), max_size=40).map("".join)


def _regex_cells(model: ProfanityModel, texts: list[str]) -> list[tuple[int, int]]:
    rows, columns = model._regex_tokens(texts)
    return sorted(zip(rows.tolist(), columns.tolist()))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_ASCII, _ASCII_WORDY), max_size=8))
def test_ascii_tokens_from_bytes_equal_the_vectorizer_pattern(texts):
    """On ASCII, `(?u)\\b\\w\\w+\\b` after str.lower matches the runs of two or more [A-Za-z0-9_]
    bytes, cut at each text's ends (texts are concatenated in one buffer)."""
    model = ProfanityModel()
    rows, columns = model._ascii_tokens(texts)
    assert sorted(zip(rows.tolist(), columns.tolist())) == _regex_cells(model, texts)
    # and token by token, out-of-vocabulary ones included: the runs are the pattern's matches
    finder = re.compile(profanity_check.profanity_check.vectorizer.token_pattern)
    for text in texts:
        runs = [run for run in re.split(r"[^a-z0-9_]+", text.lower()) if len(run) >= 2]
        assert runs == finder.findall(text.lower())


def test_word_bytes_are_the_ascii_characters_the_pattern_calls_word_characters():
    from sftflow.tasks.lib.profanity_model import _LOWER_BYTE, _WORD_BYTE

    for code in range(128):
        assert bool(_WORD_BYTE[code]) == (re.fullmatch(r"(?u)\w", chr(code)) is not None), code
        assert chr(_LOWER_BYTE[code]) == chr(code).lower()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_ASCII_WORDY, st.text(alphabet=st.sampled_from(list("abSKΣσςİıßé_0 \t\n.,'-!日")),
                                                max_size=40)), min_size=1, max_size=10))
def test_mixed_ascii_and_other_batches_are_bitwise_equal(texts):
    _assert_bitwise_equal(texts)


def test_mixed_batch_of_corpus_texts_is_bitwise_equal():
    texts = _varied_texts(2000, seed=2)  # about a third hold a non-ASCII character
    assert 0 < sum(text.isascii() for text in texts) < len(texts)
    _assert_bitwise_equal(texts)
    _assert_bitwise_equal(["", " ", "\n"] + [text for text in texts if text.isascii()][:500] + ["", "日本語 shit"])


def test_a_model_with_another_token_pattern_uses_the_pattern_for_every_text():
    vectorizer = copy.deepcopy(profanity_check.profanity_check.vectorizer)
    vectorizer.token_pattern = r"(?u)\b\w\w\w+\b"  # no two-letter tokens: not what the byte runs find
    texts = ["hi yo idiot idiot shit", "oh", "yo you are a dumb ass, a real ass im"]
    got = ProfanityModel(vectorizer, profanity_check.profanity_check.model).predict_prob(texts)
    expected = profanity_check.profanity_check.model.predict_proba(vectorizer.transform(texts))[:, 1]
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, ProfanityModel().predict_prob(texts))  # the pattern changed the counts
