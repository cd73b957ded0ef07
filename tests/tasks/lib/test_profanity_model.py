"""profanity-check probabilities from array steps: bitwise those of profanity_check.predict_prob."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
