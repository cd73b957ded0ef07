"""The rensa backend: 64-bit shingle hashes against the shingle strings, distinct counts, bands,
and exact-Jaccard verification."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.core.recipe_data import DedupConfig, NearDedupConfig
from sftflow.tasks.dedup import deduplicate
from sftflow.tasks.lib import minhash_rensa
from sftflow.tasks.lib.minhash import band_candidate_pairs, shingle_hashes, signature_matrix
from sftflow.tasks.lib.minhash_rensa import band_pairs, exact_jaccard, exact_verified_pairs, signatures
from sftflow.tasks.lib.ngram_hashes import batch_ngrams, distinct_counts, turn_unit_bytes
from sftflow.tasks.lib.shingles import conversation_text, row_features, shingles
from sftflow.tasks.lib.text_units import text_units
from tests.tasks.dedup_rows import graded_rows, record, table, words

NEAR = NearDedupConfig()  # rensa, 5-grams, 3-character grams for unspaced scripts, min_shingles 3
NUMPY = DedupConfig.model_validate({"near": {"backend": "numpy"}})


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


ROWS = [
    chat(("user", "Hi, hi."), ("assistant", "Hi! Hi! Hi! Hi! Hi! Hi! Hi!")),  # repetitive: 1 distinct 5-gram
    chat(("user", "a b a b"), ("assistant", "a b a b a b")),  # alternating: 2 distinct 5-grams
    chat(("user", "Hi"), ("assistant", "ok")),  # shorter than one 5-gram
    chat(("system", "You are terse, precise and polite always."), ("user", "one two"), ("assistant", "three four five")),
    chat(("user", "请写一首关于春天的诗。"), ("assistant", "春天来了，花开了。春天来了，花开了。")),  # 3-character grams
    chat(("user", "Übersetze: “Café”—naïve façade, ½ × ² … 🙂"), ("assistant", "Cafe\tnaive_facade 42")),
    chat(("user", "please translate the word 春 into english now"), ("assistant", "SPRING spring Spring.")),
    chat(("user", "ภาษาไทย ok"), ("assistant", "ภาษาไทยภาษาไทย")),
    chat(("user", ""), ("assistant", "")),
    [],
]


def test_turn_units_equal_text_units():
    texts = ["Hello, WORLD! it's 42", "a\x00b\tc\n\nd__e", "Café naïve", "请写诗 ok", "ÀÉÎ İstanbul ǅ", "x" * 300,
             " ".join(words(50, seed=4)).upper()]
    for text in texts:
        assert turn_unit_bytes(text).split() == [u.encode() for u in text_units(text)], text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.text(alphabet="aB1_ ,.-\n\t'", max_size=60))
def test_turn_units_equal_text_units_on_any_text(text):
    assert turn_unit_bytes(text).split() == [u.encode() for u in text_units(text)]


def test_equal_shingles_hash_equal_and_distinct_shingles_differ():
    rows = ROWS + [chat(("user", "Q?"), ("assistant", " ".join(words(80, seed=s)))) for s in range(20)]
    ngrams = batch_ngrams(rows, np.ones(len(rows), dtype=bool), NEAR)
    hash_of: dict[bytes, int] = {}
    for r, messages in enumerate(rows):
        grams, units = row_features(messages, NEAR)
        distinct = list(dict.fromkeys(ngrams.row(r).tolist()))  # first appearance, as shingles keeps them
        assert len(distinct) == len(grams)
        for gram, value in zip(grams, distinct):
            assert hash_of.setdefault(gram, value) == value, gram  # equal shingles, equal hashes
        assert ngrams.response_units[r] == units
    assert len(set(hash_of.values())) == len(hash_of)  # and no two distinct shingles collide here


def test_unwanted_rows_get_no_shingles():
    wanted = np.array([i % 2 == 0 for i in range(len(ROWS))])
    ngrams = batch_ngrams(ROWS, wanted, NEAR)
    whole = batch_ngrams(ROWS, np.ones(len(ROWS), dtype=bool), NEAR)
    for r in range(len(ROWS)):
        assert ngrams.row(r).tolist() == (whole.row(r).tolist() if wanted[r] else [])


@pytest.mark.parametrize("minimum", [1, 2, 3, 5])
def test_distinct_counts_are_exact_below_the_minimum(minimum):
    ngrams = batch_ngrams(ROWS, np.ones(len(ROWS), dtype=bool), NEAR)
    counts = distinct_counts(ngrams, minimum)
    for r, messages in enumerate(ROWS):
        exact = len(row_features(messages, NEAR)[0])
        assert counts[r] == exact if exact < minimum else counts[r] >= minimum, (r, exact, counts[r])
    # the edge cases are what they claim: repetition, alternation, too short, characters
    assert [len(row_features(m, NEAR)[0]) for m in ROWS[:3]] == [1, 2, 0]
    assert shingles(conversation_text(ROWS[4]), 5, 3)[0].decode() == "请 写 一"


def test_band_pairs_equal_band_candidate_pairs():
    rows = graded_rows()
    grams = [shingles(conversation_text(r["messages"]), 5) for r in rows]
    matrix = signature_matrix([shingle_hashes(g) for g in grams], 128, 1)
    expected = band_candidate_pairs(matrix, 13, 7)
    assert len(expected) > 10
    assert band_pairs(matrix, 13, 7).tolist() == expected.tolist()
    assert band_pairs(matrix[:1], 13, 7).shape == (0, 2)


def test_rensa_signatures_follow_the_sets():
    messages = [r["messages"] for r in graded_rows(6)]
    ngrams = batch_ngrams(messages, np.ones(len(messages), dtype=bool), NEAR)
    matrix = signatures(ngrams, np.arange(len(messages)), 91, 1)
    assert matrix.shape == (len(messages), 91) and matrix.dtype == np.uint32
    assert (matrix[0] == matrix[1]).mean() > 0.8  # a one-edit pair
    assert (matrix[0] == matrix[2]).mean() < 0.2  # unrelated rows
    again = signatures(ngrams, np.array([2, 0]), 91, 1)
    assert (again == matrix[[2, 0]]).all()


def test_exact_jaccard():
    assert exact_jaccard(np.array([1, 5, 9]), np.array([1, 5, 9])) == 1.0
    assert exact_jaccard(np.array([1, 2]), np.array([3])) == 0.0
    assert exact_jaccard(np.array([], dtype=np.uint64), np.array([7])) == 0.0


def test_exact_verification_refuses_a_pair_whose_estimate_passes():
    # 3 words changed in 120: exact shingle Jaccard 0.785, under the threshold, while both MinHash
    # estimates (datasketch's 128 values, rensa's 91) are above 0.8
    text = words(120, seed=6)
    edited = list(text)
    for position in random.Random(6).sample(range(120), 3):
        edited[position] = f"zz{position}"
    a, b = set(shingles(" ".join(text), 5)), set(shingles(" ".join(edited), 5))
    assert 0.78 < len(a & b) / len(a | b) < 0.8
    rows = [record("a", " ".join(text)), record("b", " ".join(edited))]
    ngrams = batch_ngrams([r["messages"] for r in rows], np.ones(2, dtype=bool), NEAR)
    matrix = signatures(ngrams, np.arange(2), 91, 1)
    assert (matrix[0] == matrix[1]).mean() >= 0.8
    by_estimate = deduplicate(table(rows), NUMPY)
    assert by_estimate.stats["near_duplicates"] == 1 and by_estimate.decisions.column("score")[1].as_py() >= 0.8
    exact = deduplicate(table(rows), DedupConfig())
    assert exact.stats["candidate_pairs"] == 1 and exact.stats["near_duplicates"] == 0
    assert exact.stats["near_verification"] == "exact_jaccard"


def test_verification_passes_hold_a_bounded_window(monkeypatch):
    # every row in several candidate pairs, verified with room for two rows' hashes per pass
    sets = {p: np.unique(np.random.default_rng(p).integers(0, 50, size=40).astype(np.uint64)) for p in range(8)}
    pairs = np.array([(i, j) for i in range(6) for j in range(i + 1, 6)])
    positions = np.array([7, 0, 3, 5, 1, 6])  # pair indices refer to these input positions
    n_total = np.full(8, 40)
    passes = []

    def row_sets(needed):
        passes.append(np.flatnonzero(needed).tolist())
        yield from ((p, sets[p]) for p in np.flatnonzero(needed).tolist())

    whole = exact_verified_pairs(pairs, positions, n_total, 0.3, row_sets)
    assert len(passes) == 1
    expected = sorted((i, j, exact_jaccard(sets[positions[i]], sets[positions[j]])) for i, j in pairs.tolist())
    assert whole == [p for p in expected if p[2] >= 0.3] and whole
    monkeypatch.setattr(minhash_rensa, "VERIFY_NGRAMS_PER_PASS", 80)
    passes.clear()
    assert exact_verified_pairs(pairs, positions, n_total, 0.3, row_sets) == whole
    assert len(passes) >= 3
