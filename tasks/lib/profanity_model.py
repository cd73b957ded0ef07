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

ASCII texts, nearly all of them, skip Python strings altogether: on ASCII, `str.lower` is a byte
table and the pattern's tokens are the maximal runs of at least two bytes of [A-Za-z0-9_] (what
`(?u)\w` matches among ASCII characters; `\b` holds at both ends of such a run and nowhere
inside it). So their tokens are found with numpy over the texts' UTF-8 bytes and looked up with
one pyarrow `index_in` against the vocabulary. Other texts go through the regex.
"""

from __future__ import annotations

import re
from itertools import chain, repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The vectorizer settings whose analyzer `_counts` reproduces: name -> required value.
_EXPECTED_SETTINGS = {
    "analyzer": "word", "ngram_range": (1, 1), "lowercase": True, "strip_accents": None,
    "preprocessor": None, "tokenizer": None, "binary": False, "input": "content",
}
TEXTS_PER_CHUNK = 8192  # windows counted and scored at once: bounds the byte tables to tens of MB
_FITTED_ATTRIBUTES = ("vocabulary_", "_tfidf", "token_pattern", "dtype")
# The token pattern whose ASCII tokens `_ascii_tokens` finds without the regex.
_WORD_RUNS_PATTERN = r"(?u)\b\w\w+\b"
# Per byte value: whether it is an ASCII character `(?u)\w` matches, and its `str.lower`.
_WORD_BYTE = np.array([chr(b).isascii() and re.fullmatch(r"(?u)\w", chr(b)) is not None for b in range(256)])
_LOWER_BYTE = np.array([ord(chr(b).lower()) if b < 128 else b for b in range(256)], dtype=np.uint8)


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
        self._ascii_runs = vectorizer.token_pattern == _WORD_RUNS_PATTERN
        self._vocabulary = pa.array(list(self._index), type=pa.large_string())
        self._vocabulary_columns = np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))
        self._dtype = vectorizer.dtype
        self._tfidf = vectorizer._tfidf  # what TfidfVectorizer.transform applies to its counts
        self._model = model

    def predict_prob(self, texts: list[str]) -> np.ndarray:
        """Probability of profanity per text (float64), equal to profanity_check.predict_prob."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        # A chunk at a time: the byte tables of `_ascii_tokens` take several bytes per byte of
        # text, and every step is row by row, so chunking bounds memory and changes no bit.
        return np.concatenate([
            self._model.predict_proba(self._tfidf.transform(self._counts(texts[start:start + TEXTS_PER_CHUNK]),
                                                            copy=False))[:, 1]
            for start in range(0, len(texts), TEXTS_PER_CHUNK)])

    def _counts(self, texts: list[str]):
        """The vectorizer's document-term count matrix: CSR, columns sorted within each row."""
        import scipy.sparse as sp

        ascii_rows = [row for row, text in enumerate(texts) if text.isascii()] if self._ascii_runs else []
        if len(ascii_rows) == len(texts):
            rows, columns = self._ascii_tokens(texts)
        else:
            other_rows = np.setdiff1d(np.arange(len(texts)), ascii_rows)
            ascii_at, ascii_columns = self._ascii_tokens([texts[row] for row in ascii_rows])
            other_at, other_columns = self._regex_tokens([texts[row] for row in other_rows])
            rows = np.concatenate([np.asarray(ascii_rows, dtype=np.int64)[ascii_at], other_rows[other_at]])
            columns = np.concatenate([ascii_columns, other_columns])
        # COO to CSR sums the repeats of a (text, column) cell into its count and sorts each
        # row's columns: the vectorizer's storage.
        coordinates = rows.astype(np.int32), columns.astype(np.int32)  # the vectorizer's index dtype
        counts = sp.coo_array((np.ones(len(rows), dtype=self._dtype), coordinates),
                              shape=(len(texts), self._n_features)).tocsr()
        counts.sum_duplicates()
        return counts

    def _regex_tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text, column) of every token of `texts` in the vocabulary, by the vectorizer's own
        pattern."""
        tokens_per_text = list(map(self._findall, map(str.lower, texts)))
        n_tokens = np.fromiter(map(len, tokens_per_text), dtype=np.int64, count=len(texts))
        tokens = list(chain.from_iterable(tokens_per_text))
        columns = np.fromiter(map(self._index.get, tokens, repeat(-1)), dtype=np.int64, count=len(tokens))
        known = columns >= 0  # out-of-vocabulary tokens (and stop words) are not counted
        return np.repeat(np.arange(len(texts), dtype=np.int64), n_tokens)[known], columns[known]

    def _ascii_tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`_regex_tokens` of ASCII texts, from their bytes: a token is a run of two or more word
        bytes, cut at the texts' ends."""
        array = pa.array(texts, type=pa.large_string())
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[: len(texts) + 1]
        if offsets[-1] == 0:  # no text has a character
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[: offsets[-1]]
        word = _WORD_BYTE[data]
        text_starts = offsets[1:-1][offsets[1:-1] < len(data)]  # where one text ends and the next starts
        first = word.copy()  # a run's first byte: after a non-word byte or at a text's start
        first[1:] &= ~word[:-1]
        first[text_starts] = word[text_starts]
        last = word.copy()  # a run's last byte: before a non-word byte or at a text's end
        last[:-1] &= ~word[1:]
        last[text_starts - 1] = word[text_starts - 1]
        run_starts = np.flatnonzero(first)
        run_bytes = np.flatnonzero(last) + 1 - run_starts
        # The word bytes alone, back to back: each run is a contiguous piece of them, so they
        # are the data of a string array whose offsets add up the runs' lengths.
        token_offsets = np.zeros(len(run_starts) + 1, dtype=np.int64)
        np.cumsum(run_bytes, out=token_offsets[1:])
        letters = _LOWER_BYTE[data[word]]
        tokens = pa.LargeStringArray.from_buffers(len(run_starts), pa.py_buffer(token_offsets), pa.py_buffer(letters))
        found = pc.fill_null(pc.index_in(tokens, value_set=self._vocabulary), -1).to_numpy()
        counted = np.flatnonzero((found >= 0) & (run_bytes >= 2))
        runs_per_text = np.diff(np.searchsorted(run_starts, offsets))
        text_of_run = np.repeat(np.arange(len(texts), dtype=np.int64), runs_per_text)
        return text_of_run[counted], self._vocabulary_columns[found[counted]]


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
