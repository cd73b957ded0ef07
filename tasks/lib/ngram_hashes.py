"""Near-dedup shingles as 64-bit integers, computed for a batch of rows per numpy call: what the
`rensa` backend (tasks/lib/minhash_rensa.py) hashes into signatures and compares exactly.

The n-grams are those of tasks/lib/shingles.py's `row_features`: the same text units
(tasks/lib/text_units.py), the turns in `dedup.near.roles` joined, `ngram` units per shingle, or
`ngram_unspaced` for rows whose units are mostly characters of scripts without spaces. Only the
representation differs: a shingle is one 64-bit hash instead of its UTF-8 string, so no string
is built, joined, encoded or SHA-1 hashed per shingle.

How. Each turn becomes its units' UTF-8 bytes separated by spaces: an ASCII turn by one
`bytes.translate` (lowercase letters, digits and `_` kept, every other byte a space; `\\w+` on
ASCII text is exactly the runs of those bytes), any other turn by `text_units` itself. The turns
of a batch are joined into one byte string; numpy then finds the units (runs of non-space bytes),
hashes each unit (a sum of its bytes times per-position random odd 64-bit multipliers, with its
length, through MurmurHash3's 64-bit finalizer), and combines `n` consecutive unit hashes into
one n-gram hash (position-weighted sum, finalized again: order-dependent, never across rows).
Equal shingles get equal hashes; two distinct shingles collide with probability about 2^-57
(a differing byte times a random odd multiplier), which over the shingles of two rows changes
an exact Jaccard by nothing measurable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sftflow.tasks.core.recipe_data import NearDedupConfig
from sftflow.tasks.lib.text_units import text_units, unspaced_char_count

_SPACE = 0x20
# ASCII bytes -> themselves for [a-z0-9_], lowercase for [A-Z], a space for everything else
_ASCII_UNITS = bytes(
    c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or 48 <= c <= 57 or c == 95) else _SPACE for c in range(256)
)
_LENGTH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_UNIT_STREAM, _NGRAM_STREAM = 1, 2  # independent multiplier tables for unit bytes and n-gram positions


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (uint64 arithmetic wraps): every input bit reaches every output bit."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


@functools.lru_cache(maxsize=16)  # one table per power of two: units longer than any before grow it
def _multiplier_table(stream: int, size: int) -> np.ndarray:
    """`size` random odd 64-bit multipliers, a fixed function of (stream, index) (splitmix64)."""
    index = np.arange(size, dtype=np.uint64) + np.uint64(stream << 40)
    return fmix64(index * _LENGTH_MULTIPLIER + np.uint64(0x632BE59BD9B4E019)) | np.uint64(1)


def _multipliers(stream: int, count: int) -> np.ndarray:
    return _multiplier_table(stream, 1 << max(6, int(count - 1).bit_length()))[:count]


def turn_unit_bytes(content: str) -> bytes:
    """The text units of one turn as UTF-8, separated by spaces (runs of spaces where an ASCII
    turn had punctuation). Units never contain a space.

    >>> turn_unit_bytes("Hello, WORLD! it's 42").split()
    [b'hello', b'world', b'it', b's', b'42']
    >>> turn_unit_bytes("请写诗 ok")
    b'\\xe8\\xaf\\xb7 \\xe5\\x86\\x99 \\xe8\\xaf\\x97 ok'
    """
    if content.isascii():  # most turns: one C pass instead of a regex and a list of strings
        return content.encode("ascii").translate(_ASCII_UNITS)
    return " ".join(text_units(content)).encode("utf-8")


def unit_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of each space-separated unit of `data`, the unit's start offset in bytes).

    >>> hashes, starts = unit_hashes(b"  ab cd ab ")
    >>> starts.tolist(), bool(hashes[0] == hashes[2]), bool(hashes[0] != hashes[1])
    ([2, 5, 8], True, True)
    """
    codes = np.frombuffer(data, dtype=np.uint8)
    inside = np.zeros(len(codes) + 2, dtype=bool)
    inside[1:-1] = codes != _SPACE
    edges = np.flatnonzero(inside[1:] != inside[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return np.empty(0, dtype=np.uint64), starts
    lengths = ends - starts
    chars = codes[inside[1:-1]].astype(np.uint64)  # the units' bytes, back to back
    first = np.zeros(len(starts), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    position = np.arange(len(chars), dtype=np.int64) - np.repeat(first, lengths)
    weighted = chars * _multipliers(_UNIT_STREAM, int(lengths.max()))[position]
    sums = np.add.reduceat(weighted, first)
    return fmix64(sums + lengths.astype(np.uint64) * _LENGTH_MULTIPLIER), starts


def ngram_hashes(units: np.ndarray, row_of_unit: np.ndarray, n_rows: int, n_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n-gram hashes of every row, back to back in row order; row offsets, n_rows + 1).

    `units` are unit hashes in row order, `row_of_unit` their (non-decreasing) rows; row r's
    n-grams are its runs of `n_of_row[r]` consecutive units, in order (repeats kept), none for a
    row with fewer units.
    """
    counts = np.bincount(row_of_unit, minlength=n_rows)
    row_start = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(counts[:-1], out=row_start[1:])
    n_of_unit = n_of_row[row_of_unit]
    starts_ngram = np.arange(len(units), dtype=np.int64) - row_start[row_of_unit] + n_of_unit <= counts[row_of_unit]
    grams = np.zeros(len(units), dtype=np.uint64)
    for n in np.unique(n_of_unit[starts_ngram]).tolist():
        at = np.flatnonzero(starts_ngram & (n_of_unit == n))
        weights = _multipliers(_NGRAM_STREAM, n)
        total = units[at] * weights[0]
        for offset in range(1, n):
            total += units[at + offset] * weights[offset]
        grams[at] = fmix64(total)
    per_row = np.bincount(row_of_unit[starts_ngram], minlength=n_rows)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(per_row, out=offsets[1:])
    return grams[starts_ngram], offsets


@dataclass
class BatchNgrams:
    """The n-gram hashes of a batch of rows: row r's are `hashes[offsets[r]:offsets[r + 1]]`
    (repeats kept); `response_units[r]` is its assistant text units (`response_units`)."""

    hashes: np.ndarray
    offsets: np.ndarray
    response_units: np.ndarray

    def row(self, r: int) -> np.ndarray:
        return self.hashes[self.offsets[r] : self.offsets[r + 1]]


def batch_ngrams(batch: Sequence[Any], wanted: np.ndarray, cfg: NearDedupConfig) -> BatchNgrams:
    """`BatchNgrams` of a batch of conversations; rows not `wanted` get none and 0 units."""
    every = cfg.roles == "all"
    pieces: list[bytes] = []
    piece_row: list[int] = []
    piece_kind: list[int] = []  # 1: compared, 2: assistant, 3: both
    n_unspaced = np.zeros(len(batch), dtype=np.int64)
    for r, messages in enumerate(batch):
        if not wanted[r]:
            continue
        for turn in messages or []:
            role, content = turn.get("role"), turn.get("content") or ""
            kind = (every or role in cfg.roles) | (role == "assistant") << 1
            if not kind:
                continue
            pieces.append(turn_unit_bytes(content))
            piece_row.append(r)
            piece_kind.append(kind)
            if kind & 1 and not content.isascii():
                n_unspaced[r] += unspaced_char_count(content)
    units, starts = unit_hashes(b" ".join(pieces))
    piece_starts = np.zeros(len(pieces), dtype=np.int64)
    np.cumsum(np.fromiter((len(p) + 1 for p in pieces), dtype=np.int64, count=len(pieces))[:-1], out=piece_starts[1:])
    piece_of_unit = np.searchsorted(piece_starts, starts, side="right") - 1
    rows, kinds = np.array(piece_row, dtype=np.int64), np.array(piece_kind, dtype=np.int64)
    units_per_piece = np.bincount(piece_of_unit, minlength=len(pieces))
    assistant = (kinds & 2) > 0
    response = np.bincount(rows[assistant], weights=units_per_piece[assistant], minlength=len(batch)).astype(np.int64)
    compared = (kinds[piece_of_unit] & 1) > 0
    row_of_unit = rows[piece_of_unit[compared]]
    n_compared = np.bincount(row_of_unit, minlength=len(batch))
    n_of_row = np.where(2 * n_unspaced > n_compared, cfg.ngram_unspaced, cfg.ngram)
    hashes, offsets = ngram_hashes(units[compared], row_of_unit, len(batch), n_of_row)
    return BatchNgrams(hashes, offsets, response)


def distinct_counts(ngrams: BatchNgrams, minimum: int) -> np.ndarray:
    """Distinct n-grams per row, exact where below `minimum`; elsewhere a number >= `minimum`
    (the row's total), which is all the eligibility test needs.

    A row with fewer than `minimum` n-grams in all is short for sure; a row whose first `minimum`
    n-grams are pairwise distinct is long enough for sure. Only rows in neither case (repetitive
    text) are counted exactly.

    >>> grams = BatchNgrams(np.array([1, 1, 1, 1, 5, 6, 7, 2], dtype=np.uint64), np.array([0, 4, 7, 8]), None)
    >>> distinct_counts(grams, 3).tolist()
    [1, 3, 1]
    """
    totals = np.diff(ngrams.offsets)
    counts = totals.copy()
    long_rows = np.flatnonzero(totals >= minimum)
    window = np.sort(ngrams.hashes[ngrams.offsets[long_rows][:, None] + np.arange(minimum)], axis=1)
    unsure = long_rows[(window[:, 1:] == window[:, :-1]).any(axis=1)]
    for r in np.concatenate((np.flatnonzero(totals < minimum), unsure)).tolist():
        counts[r] = len(np.unique(ngrams.row(r)))
    return counts
