"""profanity-check's probability of profanity, with the document-term counts built in array steps.

`profanity_check.predict_prob` runs scikit-learn's TfidfVectorizer, whose analyzer is Python per
document and per token (lowercase, regex, stop-word list, a dict of counts per document): most of
its time on short windows. Here the counts come from one regex call per text and a few numpy
steps over all tokens at once, and are handed to the package's own fitted TfidfTransformer and
CalibratedClassifierCV. The count matrix equals the vectorizer's (same entries, same sorted
storage order, same dtype), and every floating-point step after it is scikit-learn's, so the
probabilities are bitwise those of `predict_prob` (tests/tasks/lib/test_profanity_model.py).

The analyzer is reproduced only for the settings the shipped vectorizer has (word analyzer,
unigrams, lowercase, no accent stripping, no custom preprocessor or tokenizer, counts not binary);
`ProfanityModel` refuses to load a model fitted with any other, rather than score differently.
"""

from __future__ import annotations

import re
from itertools import chain, repeat

import numpy as np

# The vectorizer settings whose analyzer `_counts` reproduces: name -> required value.
_EXPECTED_SETTINGS = {
    "analyzer": "word", "ngram_range": (1, 1), "lowercase": True, "strip_accents": None,
    "preprocessor": None, "tokenizer": None, "binary": False, "input": "content",
}
_FITTED_ATTRIBUTES = ("vocabulary_", "_tfidf", "token_pattern", "dtype")


class ProfanityModelMismatch(RuntimeError):
    """The installed profanity-check model is not the kind `ProfanityModel` reproduces exactly."""


class ProfanityModel:
    """`predict_prob(texts)` of alt-profanity-check, computed from its fitted vectorizer and model."""

    def __init__(self, vectorizer=None, model=None) -> None:
        if vectorizer is None or model is None:
            from profanity_check import profanity_check

            vectorizer = profanity_check.vectorizer if vectorizer is None else vectorizer
            model = profanity_check.model if model is None else model
        _check_supported(vectorizer, model)
        stop_words = vectorizer.get_stop_words() or frozenset()
        # The analyzer drops stop words before the vocabulary lookup; dropping them from the
        # lookup table instead gives the same counts with one lookup per token.
        self._index = {token: int(column) for token, column in vectorizer.vocabulary_.items()
                       if token not in stop_words}
        self._n_features = len(vectorizer.vocabulary_)
        self._findall = re.compile(vectorizer.token_pattern).findall
        self._dtype = vectorizer.dtype
        self._tfidf = vectorizer._tfidf  # what TfidfVectorizer.transform applies to its counts
        self._model = model

    def predict_prob(self, texts: list[str]) -> np.ndarray:
        """Probability of profanity per text (float64), equal to profanity_check.predict_prob."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        features = self._tfidf.transform(self._counts(texts), copy=False)
        return self._model.predict_proba(features)[:, 1]

    def _counts(self, texts: list[str]):
        """The vectorizer's document-term count matrix: CSR, columns sorted within each row."""
        import scipy.sparse as sp

        tokens_per_text = list(map(self._findall, map(str.lower, texts)))
        n_tokens = np.fromiter(map(len, tokens_per_text), dtype=np.int64, count=len(texts))
        tokens = list(chain.from_iterable(tokens_per_text))
        columns = np.fromiter(map(self._index.get, tokens, repeat(-1)), dtype=np.int64, count=len(tokens))
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), n_tokens)
        known = columns >= 0  # out-of-vocabulary tokens (and stop words) are not counted
        # One sort orders the entries by row, then column, and merges repeats into counts.
        cells, counts = np.unique(rows[known] * self._n_features + columns[known], return_counts=True)
        indptr = np.zeros(len(texts) + 1, dtype=np.int32)
        np.cumsum(np.bincount(cells // self._n_features, minlength=len(texts)), out=indptr[1:])
        indices = (cells % self._n_features).astype(np.int32)
        return sp.csr_array((counts.astype(self._dtype), indices, indptr),
                            shape=(len(texts), self._n_features), dtype=self._dtype)


def _check_supported(vectorizer, model) -> None:
    missing = [name for name in _FITTED_ATTRIBUTES if not hasattr(vectorizer, name)]
    if missing or not hasattr(model, "predict_proba"):
        raise ProfanityModelMismatch(
            f"the installed profanity-check vectorizer ({type(vectorizer).__name__}) or model "
            f"({type(model).__name__}) lacks {missing or ['predict_proba']}: this scikit-learn and "
            "alt-profanity-check combination is not supported"
        )
    different = {name: getattr(vectorizer, name, "absent") for name, value in _EXPECTED_SETTINGS.items()
                 if getattr(vectorizer, name, "absent") != value}
    if different:
        raise ProfanityModelMismatch(
            f"the installed profanity-check vectorizer has settings {different}; its counts are "
            f"reproduced only for {_EXPECTED_SETTINGS}"
        )
    if re.compile(vectorizer.token_pattern).groups > 1:
        raise ProfanityModelMismatch("the profanity-check vectorizer's token_pattern has capture groups")
