"""MinHash signatures, LSH candidate pairs and verified pairs for near-dedup, in two
interchangeable backends (`dedup.near.backend`), and the representatives chosen from the pairs.

- datasketch, the reference: `MinHash.bulk`, `MinHashLSH`, `LeanMinHash.jaccard`.
- numpy, written here: datasketch's own hash function and permutation parameters, applied to
  thousands of rows per numpy call instead of one row per call, and LSH buckets found by sorting
  each band. It computes the same signature values, the same buckets and the same estimates
  (tests/tasks/lib/test_minhash.py compares signatures and buckets, tests/tasks/test_dedup.py
  decisions; bench/dedup.py measures both on 100k documents). Why by hand: see "numpy backend".

`greedy_representatives` is written here too: connected components of the verified pairs would
chain near copies of near copies (tasks/dedup.py, "No chains").
"""

from __future__ import annotations

import functools
from collections import defaultdict
from hashlib import sha1
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from sftflow.tasks.core.recipe_data import NearDedupConfig

if TYPE_CHECKING:
    from datasketch import LeanMinHash

# datasketch is imported where it is used: importing it pulls in scipy (about 0.9 s), which
# every `sftflow` command would pay for while only planning a run.


# ----------------------------------------------------------------------- datasketch backend --
def minhashes(shingle_sets: Sequence[Sequence[bytes]], num_perm: int, seed: int) -> list[LeanMinHash]:
    """One MinHash signature per shingle set, hashed in bulk (update_batch, one init per call).

    LeanMinHash drops the permutation tables each MinHash carries (2 x num_perm integers), so
    memory grows with the signatures only.
    """
    if not shingle_sets:
        return []
    from datasketch import LeanMinHash, MinHash

    return [LeanMinHash(m) for m in MinHash.bulk(shingle_sets, num_perm=num_perm, seed=seed)]


def candidate_pairs(signatures: Sequence[LeanMinHash], cfg: NearDedupConfig) -> list[tuple[int, int]]:
    """Index pairs (i < j) that share at least one LSH band bucket, sorted.

    The bands are `cfg.lsh_params`: the recipe's, or derived from the threshold
    (tasks/core/dedup_lsh.py), passed as params=(b, r) so datasketch does not pick its own.
    Two sets with Jaccard s become candidates with P(candidate | s) = 1 - (1 - s^r)^b; for the
    default threshold 0.8 the derived 13 x 7 gives 0.953 at s = 0.8, 0.993 at s = 0.85,
    0.31 at s = 0.6 and 0.003 at s = 0.3. Candidates are only suspects: `verified_pairs` checks
    each against the threshold before anything is dropped.
    """
    bands, rows = cfg.lsh_params
    if len(signatures) < 2:
        return []
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(bands, rows))
    with lsh.insertion_session() as session:
        for index, signature in enumerate(signatures):
            session.insert(index, signature, check_duplication=False)
    pairs = set()
    for index, signature in enumerate(signatures):
        for other in lsh.query(signature):
            if other != index:
                pairs.add((min(index, other), max(index, other)))
    return sorted(pairs)


def verified_pairs(
    pairs: Iterable[tuple[int, int]], signatures: Sequence[LeanMinHash], threshold: float
) -> list[tuple[int, int, float]]:
    """Candidate pairs whose MinHash-estimated Jaccard reaches `threshold`, with that estimate."""
    verified = []
    for i, j in pairs:
        jaccard = signatures[i].jaccard(signatures[j])
        if jaccard >= threshold:
            verified.append((i, j, jaccard))
    return verified


# ---------------------------------------------------------------------------- numpy backend --
# Why by hand: datasketch hashes one set per call (MinHash.update_batch), so 100k rows cost 100k
# rounds of numpy dispatch, and MinHashLSH hashes every band of every row in Python. The
# functions below apply datasketch's affine32 scheme (its default) to many rows per numpy call.
# They take the permutation parameters from datasketch itself, and a test checks the resulting
# signatures against datasketch's, so a change of scheme upstream fails loudly, not silently.
UINT32_MAX = np.uint32(0xFFFFFFFF)  # datasketch's empty-set value for the affine32 scheme
SHINGLES_PER_PASS = 1 << 16  # bounds the (shingles x num_perm) uint32 temporary: 32 MiB at 128


def shingle_hashes(grams: Sequence[bytes]) -> np.ndarray:
    """datasketch's default 32-bit hash of each shingle: the first 4 bytes of SHA-1, little-endian.

    >>> from datasketch.hashfunc import sha1_hash32
    >>> int(shingle_hashes([b"the cat sat"])[0]) == sha1_hash32(b"the cat sat")
    True
    """
    # Whole 20-byte digests joined, then every fifth 4-byte word: no slice object per shingle.
    return np.frombuffer(b"".join([sha1(gram).digest() for gram in grams]), dtype="<u4")[::5]


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, which datasketch's affine32 scheme applies before permuting."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


@functools.lru_cache(maxsize=8)  # signature_matrix runs once per batch of rows: build them once
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    template = MinHash(num_perm=num_perm, seed=seed)
    if template.scheme != "affine32":
        raise RuntimeError(
            f"datasketch's default MinHash scheme is {template.scheme!r}, not 'affine32': the numpy "
            "backend no longer matches it; set dedup.near.backend: datasketch"
        )
    a, b = template.permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signature_matrix(hashes: Sequence[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """One MinHash signature per row of shingle hashes, as an (n_rows, num_perm) uint32 matrix.

    Row i equals `MinHash(num_perm, seed)` updated with row i's shingles (datasketch's affine32:
    fmix32 the hash, then a*h + b wrapping at 2^32, then the minimum per permutation).
    """
    a, b = _permutations(num_perm, seed)
    signatures = np.full((len(hashes), num_perm), UINT32_MAX, dtype=np.uint32)
    lengths = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=len(hashes))
    ends = np.cumsum(lengths)
    start = 0
    while start < len(hashes):
        # the rows whose shingles fit in one pass (always at least one row)
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - lengths[start] + SHINGLES_PER_PASS, "right")))
        rows = np.flatnonzero(lengths[start:stop]) + start  # empty rows keep the empty-set value
        if len(rows):
            values = _fmix32(np.concatenate([hashes[r] for r in rows]).astype(np.uint32))
            # (num_perm, shingles): each permutation's values are contiguous, which makes the
            # multiply and the per-row minimum about 6x faster than the transposed layout.
            permuted = a[:, None] * values[None, :]  # uint32 arithmetic: wraps at 2^32 like datasketch's
            permuted += b[:, None]
            offsets = np.concatenate(([0], np.cumsum(lengths[rows])[:-1]))
            signatures[rows] = np.minimum.reduceat(permuted, offsets, axis=1).T
        start = stop
    return signatures


def band_candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Row pairs (i < j) equal on all `rows` values of at least one band, as a sorted (k, 2) array.

    The same buckets as MinHashLSH(params=(bands, rows)), which keys band b by the bytes of
    hashvalues[b*rows:(b+1)*rows]: rows with equal slices share a bucket. Here each band is sorted
    and runs of equal slices are the buckets.
    """
    n_rows = len(signatures)
    codes = []
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows]
        order = np.lexsort(block.T[::-1])
        ordered = block[order]
        starts_bucket = np.ones(n_rows, dtype=bool)
        starts_bucket[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
        starts = np.flatnonzero(starts_bucket)
        sizes = np.diff(np.append(starts, n_rows))
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            members = np.sort(order[start : start + size])
            i, j = np.triu_indices(int(size), 1)
            codes.append(members[i] * n_rows + members[j])
    if not codes:
        return np.empty((0, 2), dtype=np.int64)
    unique = np.unique(np.concatenate(codes))
    return np.stack([unique // n_rows, unique % n_rows], axis=1)


def signature_jaccard(signatures: np.ndarray, i: int, j: int) -> float:
    """The estimate LeanMinHash.jaccard computes: the share of equal signature values."""
    return float(np.count_nonzero(signatures[i] == signatures[j])) / float(signatures.shape[1])


def verified_signature_pairs(pairs: np.ndarray, signatures: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """`verified_pairs` for a signature matrix: candidates whose estimate reaches `threshold`."""
    verified = []
    for start in range(0, len(pairs), SHINGLES_PER_PASS):
        chunk = pairs[start : start + SHINGLES_PER_PASS]
        equal = np.count_nonzero(signatures[chunk[:, 0]] == signatures[chunk[:, 1]], axis=1)
        for (i, j), n_equal in zip(chunk.tolist(), equal.tolist()):
            jaccard = float(n_equal) / float(signatures.shape[1])
            if jaccard >= threshold:
                verified.append((i, j, jaccard))
    return verified


# -------------------------------------------------------------------------- representatives --
def greedy_representatives(n_items: int, pairs: Iterable[tuple[int, int, float]]) -> list[tuple[int, float] | None]:
    """For items 0..n-1 visited in that order (the survivor order): None for a representative,
    or (representative, estimate) for an item dropped as its near duplicate.

    An item is dropped only when one of its verified pairs leads to an earlier item that is
    itself a representative; of several, the one with the highest estimate (then the earliest)
    is named. A near copy of a dropped row is therefore never dropped on that row's account:
    there are no chains.

    >>> greedy_representatives(4, [(0, 1, 0.9), (1, 2, 0.85), (2, 3, 0.95), (0, 3, 0.8)])
    [None, (0, 0.9), None, (2, 0.95)]
    """
    earlier: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for i, j, estimate in pairs:
        first, second = min(i, j), max(i, j)
        earlier[second].append((first, estimate))
    assigned: list[tuple[int, float] | None] = [None] * n_items
    for item in range(n_items):
        best: tuple[int, float] | None = None
        for other, estimate in earlier.get(item, ()):
            if assigned[other] is None and (best is None or (-estimate, other) < (-best[1], best[0])):
                best = (other, estimate)
        assigned[item] = best
    return assigned
