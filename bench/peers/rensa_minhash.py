"""rensa as its users write it: run in-process by bench/dedup.py on the stage's document texts.

Python shingles (`text.lower().split()`, 5-word joins), then rensa's bulk API:
`RMinHash.digest_matrix_from_token_sets` for the signatures and `RMinHashLSH.insert_matrix` +
`query_duplicate_flags_matrix` for the rows that share a band bucket with another row. rensa
cuts `num_perm` into `num_bands` equal bands, so the signatures have b*r values (91 for the
recipe default 13 x 7): the same bands as the stage. The output is a flag per document (it has
a candidate), not a decision: no verification, no representatives. rensa's own time from
pre-built shingles (signatures and LSH only) is reported too.
"""

from __future__ import annotations

import time
from typing import Any, Sequence


def shingle_sets(texts: Sequence[str], ngram: int) -> list[list[str]]:
    sets = []
    for text in texts:
        words = text.lower().split()
        sets.append([" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)])
    return sets


def candidate_flags(shingles: list[list[str]], threshold: float, bands: int, rows: int, seed: int) -> list[bool]:
    import rensa

    matrix = rensa.RMinHash.digest_matrix_from_token_sets(shingles, bands * rows, seed)
    lsh = rensa.RMinHashLSH(threshold, bands * rows, bands)
    lsh.insert_matrix(matrix)
    return lsh.query_duplicate_flags_matrix(matrix)


def run(texts: Sequence[str], threshold: float, bands: int, rows: int, ngram: int, seed: int) -> dict[str, Any]:
    """{"seconds": texts to flags, "signature_seconds": rensa's part alone, "n_flagged"}."""
    import rensa  # noqa: F401  imported before the clock starts, as for the stage

    started = time.perf_counter()
    flags = candidate_flags(shingle_sets(texts, ngram), threshold, bands, rows, seed)
    seconds = time.perf_counter() - started
    shingles = shingle_sets(texts, ngram)
    started = time.perf_counter()
    candidate_flags(shingles, threshold, bands, rows, seed)
    return {"seconds": seconds, "signature_seconds": time.perf_counter() - started, "n_flagged": int(sum(flags))}
