"""MinHash signatures, LSH candidates and representatives: the numpy backend against datasketch."""

from __future__ import annotations

from sftflow.tasks.lib.minhash import (
    band_candidate_pairs,
    candidate_pairs,
    greedy_representatives,
    minhashes,
    shingle_hashes,
    signature_matrix,
)
from sftflow.tasks.lib.shingles import conversation_text, shingles
from tests.tasks.dedup_rows import CFG, TEXT_A, TEXT_B, graded_rows, words


def test_greedy_representatives_do_not_chain_and_do_not_depend_on_edge_order():
    # 0~2, 2~4, 4~5 form a chain: 2 goes to 0; 4's only earlier partner (2) is dropped, so 4 is
    # kept; 5 has pairs with 4 (0.9) and 0 (0.82): it goes to the best-matching kept row, 4
    edges = [(4, 5, 0.9), (0, 2, 0.85), (2, 4, 0.85), (1, 3, 0.8), (0, 5, 0.82)]
    expected = [None, None, (0, 0.85), (1, 0.8), None, (4, 0.9)]
    assert greedy_representatives(7, edges) == expected + [None]
    assert greedy_representatives(7, list(reversed(edges))) == expected + [None]
    assert greedy_representatives(7, [(j, i, e) for i, j, e in edges]) == expected + [None]
    assert greedy_representatives(3, []) == [None, None, None]


def test_candidate_pairs_are_sorted_and_unique():
    texts = [TEXT_A, TEXT_A.rsplit(" ", 1)[0] + " zzzword", TEXT_B]
    signatures = minhashes([shingles(t, 5) for t in texts], 128, 1)
    assert candidate_pairs(signatures, CFG.near) == [(0, 1)]


# ------------------------------------------------------------------ numpy backend = datasketch --
def test_numpy_signatures_equal_datasketch_minhash_values():
    from datasketch import MinHash

    sets = [shingles(" ".join(words(n, seed=n)), 5) for n in (5, 6, 40, 300)] + [[]]
    matrix = signature_matrix([shingle_hashes(s) for s in sets], num_perm=64, seed=3)
    for row, grams in zip(matrix, sets):
        reference = MinHash(num_perm=64, seed=3)
        for gram in grams:
            reference.update(gram)
        assert row.tolist() == reference.hashvalues.tolist()


def test_numpy_signatures_span_passes(monkeypatch):
    # rows split across several numpy passes (and a row larger than one pass) give the same values
    import sftflow.tasks.lib.minhash as minhash

    hashes = [shingle_hashes(shingles(" ".join(words(n, seed=n)), 3)) for n in (50, 7, 120, 30)]
    whole = signature_matrix(hashes, 32, 1)
    monkeypatch.setattr(minhash, "SHINGLES_PER_PASS", 40)
    assert (signature_matrix(hashes, 32, 1) == whole).all()


def test_band_buckets_equal_minhash_lsh_candidates():
    rows = graded_rows()
    grams = [shingles(conversation_text(r["messages"]), 5) for r in rows]
    sketches = minhashes(grams, 128, 1)
    matrix = signature_matrix([shingle_hashes(g) for g in grams], 128, 1)
    expected = candidate_pairs(sketches, CFG.near)
    assert 0 < len(expected) < len(rows) ** 2 / 2
    assert [tuple(p) for p in band_candidate_pairs(matrix, *CFG.near.lsh_params).tolist()] == expected
