"""LSH banding for MinHash near-dedup: the S-curve, and bands/rows derived from the threshold.

Two rows whose shingle sets have Jaccard s agree on one MinHash value with probability s, on all
r values of a band with probability s^r, and so share at least one of b buckets (become a
candidate pair, which is then verified against the threshold) with probability

    P(candidate | s) = 1 - (1 - s^r)^b.

Verification can only remove pairs, so P(candidate | threshold) is the recall ceiling at the
threshold. The curve is steepest near its midpoint (1/b)^(1/r); a (b, r) chosen for one threshold
misses most pairs at another (16 x 8 finds 95% of pairs at J = 0.8 but 24% at J = 0.6).

`derive_bands` picks, among all b * r <= num_perm (b >= 2, as datasketch's MinHashLSH requires),
the curve with the smallest area below the threshold (the expected share of dissimilar pairs
that must be verified) among those whose recall at the threshold is at least TARGET_RECALL.
This is the idea of datasketch's `_optimal_param` (weighted false-positive and false-negative
areas), with the false-negative side turned into a floor on recall at the threshold itself, so
the documented guarantee is a number a recipe author can read.

>>> derive_bands(0.8, 128)
(13, 7)
>>> round(candidate_probability(0.8, 13, 7), 3)
0.953
>>> round(candidate_probability(0.6, 16, 8), 3)
0.237
"""

from __future__ import annotations

import functools

TARGET_RECALL = 0.95  # derived bands: P(candidate | J = threshold) at least this
MIN_RECALL = 0.9  # explicit bands/rows: below this the recipe is refused
_GRID_POINTS = 200  # trapezoids for the area below the threshold


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """P(two sets with this Jaccard share an LSH bucket) for `bands` bands of `rows` rows.

    >>> candidate_probability(1.0, 4, 8), candidate_probability(0.0, 4, 8)
    (1.0, 0.0)
    """
    return 1.0 - (1.0 - similarity**rows) ** bands


def s_curve_midpoint(bands: int, rows: int) -> float:
    """The similarity (1/b)^(1/r) near which the S-curve is steepest.

    >>> round(s_curve_midpoint(16, 8), 3)
    0.707
    """
    return (1.0 / bands) ** (1.0 / rows)


def _area_below(threshold: float, bands: int, rows: int) -> float:
    step = threshold / _GRID_POINTS
    values = [candidate_probability(k * step, bands, rows) for k in range(_GRID_POINTS + 1)]
    return step * (sum(values) - (values[0] + values[-1]) / 2)


@functools.lru_cache(maxsize=64)  # recipes are validated many times per run; the search is ~50 ms
def derive_bands(threshold: float, num_perm: int, target_recall: float = TARGET_RECALL) -> tuple[int, int]:
    """(bands, rows) with b * r <= num_perm, recall at `threshold` >= target, least area below it.

    When no (b, r) reaches the target (a threshold so low that even r = 1 cannot), the one with
    the highest recall at the threshold is returned.
    """
    feasible, fallback = [], None
    for bands in range(2, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            recall = candidate_probability(threshold, bands, rows)
            if recall >= target_recall:
                feasible.append((_area_below(threshold, bands, rows), bands, rows))
            elif fallback is None or recall > fallback[0]:
                fallback = (recall, bands, rows)
    if feasible:
        _, bands, rows = min(feasible)
        return bands, rows
    assert fallback is not None  # num_perm >= 2 always allows (2, 1)
    return fallback[1], fallback[2]
