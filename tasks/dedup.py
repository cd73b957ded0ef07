"""Dedup stage: drop exact duplicates (same content_hash) and near duplicates (MinHash + LSH).

Every input row gets exactly one decision: kept, exact_duplicate or near_duplicate, the last two
with `dup_of` naming the row that stays.

Which row survives. Rows are ranked by the survivor rule (`DedupConfig`): the position of the
row's source in `dedup.source_priority` (unlisted sources after the listed ones), then, with
`prefer: longest_response` (default), the most assistant text in text units, then the smallest
example_id. The rank is a total order over example_ids, so the outcome never depends on the
order in which upstream artifacts list the rows. An exact-duplicate group keeps its best-ranked
row; exact groups share their messages, so the same rule decides near duplicates.

What near-dedup compares. The contents of the turns in `dedup.near.roles` (default user,
assistant and tool: a system prompt or tool schema shared by many rows says nothing about
whether two rows are the same example), shingled into n-grams of `tasks/lib/text_units.py` units:
`ngram` words, or `ngram_unspaced` characters for rows written mostly in scripts without spaces.

No chains. Representatives are chosen greedily: rows are visited in survivor order; a row with a
verified pair (MinHash estimate >= threshold) to an already kept representative is dropped as a
duplicate of the best-matching one, otherwise it becomes a representative itself. So every
near-duplicate drop reaches the threshold with its own `dup_of`; a near copy of a near copy that
is far from the representative stays. (Connected components would drop a sliding-window chain
down to rows with Jaccard 0.4 to the survivor.)

The near path is split into small functions (`shingles`, signatures, candidate pairs, verified
pairs, `greedy_representatives`) with two interchangeable backends for the middle three
(`dedup.near.backend`):

- `datasketch`, the reference: `MinHash.bulk`, `MinHashLSH`, `LeanMinHash.jaccard`.
- `numpy` (default): datasketch's own hash function and permutation parameters, applied to
  thousands of rows per numpy call instead of one row per call, and LSH buckets found by sorting
  each band. It computes the same signature values, the same buckets and the same estimates,
  so its decisions are identical (tests/tasks/test_dedup.py compares both; bench/dedup.py
  measures both on 100k documents).
"""

from __future__ import annotations

import functools
import sys
from collections import defaultdict
from hashlib import sha1
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# dedup_lsh derives the bands that decide which pairs are compared: imported here (not only
# through the recipe models, which cache keys do not follow) so its source is in this stage's key.
from sftflow.tasks.core import dedup_lsh
from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.recipe import DedupConfig, NearDedupConfig, Recipe
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DecisionLog, PartedOutput, StageOutput
from sftflow.tasks.core.stage import StageCall, plan_call, records_paths, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.text_units import text_units, unspaced_char_count

if TYPE_CHECKING:
    from datasketch import LeanMinHash

# datasketch is imported where it is used: importing it pulls in scipy (about 0.9 s), which
# every `sftflow` command would pay for while only planning a run.

LIBRARIES = ("datasketch", "numpy")
# What decides besides the messages (read part by part): ids, exact hashes, survivor priority.
KEY_COLUMNS = ("example_id", "content_hash", "source")


# ------------------------------------------------------------------------------- near: text --
def conversation_text(messages: Iterable[dict[str, Any]] | None, roles: Sequence[str] | str = "all") -> str:
    """The contents of the turns whose role is in `roles` (`all`: every turn), joined.

    Roles themselves are left out, so a reformatted dialogue still matches.

    >>> turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    ...          {"role": "assistant", "content": "Hello!"}]
    >>> conversation_text(turns)
    'Be brief.\\nHi\\nHello!'
    >>> conversation_text(turns, ["user", "assistant", "tool"])
    'Hi\\nHello!'
    """
    every = roles == "all"
    return "\n".join(turn.get("content") or "" for turn in (messages or []) if every or turn.get("role") in roles)


def response_units(messages: Iterable[dict[str, Any]] | None) -> int:
    """Text units in the assistant turns: the `longest_response` survivor rule's measure.

    >>> response_units([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there! 你好"}])
    4
    """
    return sum(len(text_units(t.get("content") or "")) for t in (messages or []) if t.get("role") == "assistant")


def shingles(text: str, n: int, n_unspaced: int | None = None) -> list[bytes]:
    """Distinct n-grams of the text units of `text` (tasks/lib/text_units.py), as UTF-8 bytes.

    Units are lowercase words, or single characters in scripts written without spaces; when
    `n_unspaced` is given and most units are such characters, the n-grams are `n_unspaced`
    long instead of `n`. Bytes because datasketch's default hash (SHA-1) takes bytes; order of
    first appearance keeps the output deterministic (MinHash itself does not care about order).

    >>> shingles("The cat sat. The cat sat!", 3)
    [b'the cat sat', b'cat sat the', b'sat the cat']
    >>> shingles("too short", 3)
    []
    >>> [gram.decode() for gram in shingles("请写一首诗", 5, n_unspaced=3)]
    ['请 写 一', '写 一 首', '一 首 诗']
    """
    units = text_units(text)
    unspaced = unspaced_char_count(text) if n_unspaced is not None else 0
    return unit_shingles(units, n_unspaced if n_unspaced is not None and 2 * unspaced > len(units) else n)


def unit_shingles(units: Sequence[str], n: int) -> list[bytes]:
    """Distinct runs of `n` consecutive units, joined by spaces, in order of first appearance."""
    grams = map(" ".join, zip(*(units[i:] for i in range(n))))
    return [gram.encode("utf-8") for gram in dict.fromkeys(grams)]


def row_features(messages: Iterable[dict[str, Any]] | None, cfg: NearDedupConfig) -> tuple[list[bytes], int]:
    """(the shingles near-dedup compares, assistant text units) of one row, each turn split into
    units once: the shingles are those of `conversation_text(messages, cfg.roles)` (units never
    span the newline between turns), the count is `response_units`."""
    every = cfg.roles == "all"
    units: list[str] = []
    n_unspaced = n_response = 0
    for turn in messages or []:
        role, content = turn.get("role"), turn.get("content") or ""
        compared = every or role in cfg.roles
        if not compared and role != "assistant":
            continue
        turn_units = text_units(content)
        if role == "assistant":
            n_response += len(turn_units)
        if compared:
            units += turn_units
            n_unspaced += unspaced_char_count(content)
    n = cfg.ngram_unspaced if 2 * n_unspaced > len(units) else cfg.ngram
    return unit_shingles(units, n), n_response


def row_shingles(messages: Iterable[dict[str, Any]] | None, cfg: NearDedupConfig) -> list[bytes]:
    """The shingles near-dedup compares for one row under `cfg` (roles, ngram, ngram_unspaced).

    >>> from sftflow.tasks.core.recipe import NearDedupConfig
    >>> turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi twice."},
    ...          {"role": "assistant", "content": "Hi! Hi!"}]
    >>> row_shingles(turns, NearDedupConfig(ngram=4)) == shingles("Say hi twice. Hi! Hi!", 4)
    True
    """
    return row_features(messages, cfg)[0]


# ------------------------------------------------------------------------- near: signatures --
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


# ------------------------------------------------------------------- near: numpy backend --
# Why by hand: datasketch hashes one set per call (MinHash.update_batch), so 100k rows cost 100k
# rounds of numpy dispatch, and MinHashLSH hashes every band of every row in Python. The
# functions below apply datasketch's affine32 scheme (its default) to many rows per numpy call.
# They take the permutation parameters from datasketch itself, and a test checks the resulting
# signatures against datasketch's, so a change of scheme upstream fails loudly, not silently.
UINT32_MAX = np.uint32(0xFFFFFFFF)  # datasketch's empty-set value for the affine32 scheme
SHINGLES_PER_PASS = 1 << 16  # bounds the (shingles x num_perm) uint32 temporary: 32 MiB at 128
ROWS_PER_TEXT_BATCH = 4096  # rows whose messages are turned into Python objects at a time


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


# ------------------------------------------------------------------------------------ exact --
def _check_ids(example_ids: list[Any]) -> None:
    seen: set[str] = set()
    for position, example_id in enumerate(example_ids):
        if example_id is None:
            raise ValueError(f"dedup: row {position} has no example_id; records must come from ingest")
        if example_id in seen:
            raise ValueError(
                f"dedup: example_id {example_id!r} appears more than once in the input; ids must be "
                "unique (hash of source name and row locator): check that no source artifact is "
                "passed to dedup twice"
            )
        seen.add(example_id)


def exact_groups(
    example_ids: Sequence[str], content_hashes: Sequence[str | None], rank: Callable[[int], Any] | None = None
) -> list[list[int]]:
    """Row positions grouped by content_hash, each group in survivor order (representative first),
    groups in their representatives' order. `rank(position)` is the survivor sort key (default:
    the example_id).

    >>> exact_groups(["b", "a", "c"], ["h1", "h1", "h2"])
    [[1, 0], [2]]
    >>> exact_groups(["b", "a", "c"], ["h1", "h1", "h2"], rank=lambda p: (p != 0, ["b", "a", "c"][p]))
    [[0, 1], [2]]
    """
    key = rank or example_ids.__getitem__
    groups: dict[str, list[int]] = defaultdict(list)
    for position in sorted(range(len(example_ids)), key=key):
        content_hash = content_hashes[position]
        if content_hash is None:
            raise ValueError(
                f"dedup: example_id {example_ids[position]!r} has no content_hash; dedup reads "
                "normalize's output, run normalize on this source first"
            )
        groups[content_hash].append(position)
    return sorted(groups.values(), key=lambda group: key(group[0]))


def source_ranks(sources: Sequence[str | None], priority: Sequence[str]) -> list[int]:
    """Each row's place in `dedup.source_priority`; unlisted sources share the place after it.

    >>> source_ranks(["web", "curated", "other"], ["curated", "web"])
    [1, 0, 2]
    """
    place = {name: index for index, name in enumerate(priority)}
    return [place.get(source, len(priority)) for source in sources]  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- near: glue --
def _message_batches(column: pa.ChunkedArray) -> Iterator[list[Any]]:
    for start in range(0, len(column), ROWS_PER_TEXT_BATCH):
        yield column.slice(start, ROWS_PER_TEXT_BATCH).to_pylist()


def near_inputs(
    batches: Iterable[list[Any]], wanted: np.ndarray, cfg: NearDedupConfig, keep_shingles: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[int, list[bytes]]]:
    """What the near pass needs of each row, from its conversations in input order, a batch at a
    time (only one batch of conversations and shingle hashes is ever held): (shingle count,
    assistant text units, signature matrix or None, {position: shingles} when `keep_shingles`).

    Rows not `wanted` (exact duplicates) are not shingled: they count 0 and keep the empty-set
    signature. `keep_shingles` (the datasketch reference) keeps shingle lists instead of
    computing signatures here.
    """
    n_rows = len(wanted)
    n_shingles = np.zeros(n_rows, dtype=np.int64)
    n_units = np.zeros(n_rows, dtype=np.int64)
    signatures = None if keep_shingles else np.empty((n_rows, cfg.num_perm), dtype=np.uint32)
    kept: dict[int, list[bytes]] = {}
    start = 0
    for batch in batches:
        if start + len(batch) > n_rows:
            raise ValueError(f"dedup: more conversations than the {n_rows} rows")
        grams: list[list[bytes]] = []
        for position, messages in enumerate(batch, start):
            if wanted[position]:
                row_grams, n_units[position] = row_features(messages, cfg)
                grams.append(row_grams)
            else:
                grams.append([])
        n_shingles[start : start + len(batch)] = [len(g) for g in grams]
        if signatures is not None:
            signatures[start : start + len(batch)] = signature_matrix(
                [shingle_hashes(g) for g in grams], cfg.num_perm, cfg.seed)
        else:
            kept.update((position, g) for position, g in enumerate(grams, start) if wanted[position])
        start += len(batch)
    if start != n_rows:
        raise ValueError(f"dedup: {start} conversations for {n_rows} rows")
    return n_shingles, n_units, signatures, kept


def _near_pairs(rows: np.ndarray | Sequence[Sequence[bytes]], cfg: NearDedupConfig) -> tuple[list[tuple[int, int, float]], int]:
    """(verified pairs, number of candidate pairs) for one backend: `rows` is the signature
    matrix (numpy) or every row's shingles (datasketch), in survivor order."""
    if cfg.backend == "numpy":
        pairs = band_candidate_pairs(rows, *cfg.lsh_params)
        return verified_signature_pairs(pairs, rows, cfg.threshold), len(pairs)
    sketches = minhashes(rows, cfg.num_perm, cfg.seed)
    candidates = candidate_pairs(sketches, cfg)
    return verified_pairs(candidates, sketches, cfg.threshold), len(candidates)


# ------------------------------------------------------------------------------------ stage --
def deduplicate(records: pa.Table, cfg: DedupConfig) -> StageOutput:
    """Exact dedup on content_hash, then MinHash-LSH near dedup over the exact representatives."""
    decisions, kept, stats = dedup_decisions(records, cfg)
    return StageOutput(records=records.filter(pa.array(kept, pa.bool_())), decisions=decisions, stats=stats)


def dedup_decisions(
    records: pa.Table, cfg: DedupConfig, messages: Callable[[], Iterable[list[Any]]] | None = None
) -> tuple[pa.Table, list[bool], dict[str, Any]]:
    """(decisions in example_id order, kept flag per input row, stats) of `deduplicate`.

    Reads the example_id, content_hash and (when present) source columns of `records`;
    `messages()` yields the rows' conversations in input order, in batches (default: from the
    table's messages column)."""
    if messages is None:
        messages = lambda: _message_batches(records.column("messages"))  # noqa: E731
    example_ids = records.column("example_id").to_pylist()
    _check_ids(example_ids)
    n_rows = len(example_ids)
    if "source" in records.column_names:
        sources = records.column("source").to_pylist()
    elif cfg.source_priority:
        raise ValueError("dedup: dedup.source_priority is set but the records have no source column")
    else:
        sources = [None] * n_rows
    source_rank = source_ranks(sources, cfg.source_priority)
    # decision per row position: (reason, score, detail, dup_of)
    outcome: dict[int, tuple[Reason, float | None, dict[str, Any] | None, str | None]] = {}

    def base_rank(position: int) -> tuple[int, str]:  # exact twins share their response length
        return source_rank[position], example_ids[position]

    if cfg.exact:
        groups = exact_groups(example_ids, records.column("content_hash").to_pylist(), base_rank)
    else:
        groups = [[p] for p in sorted(range(n_rows), key=base_rank)]
    for representative, *duplicates in groups:
        for position in duplicates:
            outcome[position] = (
                Reason.EXACT_DUPLICATE, 1.0, {"group_size": len(duplicates) + 1},
                example_ids[representative],
            )
    representatives = [group[0] for group in groups]

    near = cfg.near
    bands, rows = near.lsh_params
    n_skipped = n_candidates = n_verified = 0
    members: dict[int, list[tuple[int, float]]] = defaultdict(list)  # representative -> dropped
    if near.enabled and representatives:
        wanted = np.zeros(n_rows, dtype=bool)
        wanted[representatives] = True
        reference = near.backend == "datasketch"
        n_shingles, n_units, row_signatures, row_grams = near_inputs(messages(), wanted, near, keep_shingles=reference)
        longest = cfg.prefer == "longest_response"
        order = sorted(representatives, key=lambda p: (source_rank[p], -int(n_units[p]) if longest else 0, example_ids[p]))
        eligible = [p for p in order if n_shingles[p] >= near.min_shingles]
        skipped = [p for p in order if n_shingles[p] < near.min_shingles]
        if reference:
            verified, n_candidates = _near_pairs([row_grams[p] for p in eligible], near)
        else:
            verified, n_candidates = _near_pairs(row_signatures[np.array(eligible, dtype=np.int64)], near)
        del row_signatures, row_grams
        n_verified = len(verified)
        for position in skipped:  # too little text for a meaningful Jaccard
            outcome[position] = (Reason.KEPT, None, {"near_skipped_n_shingles": int(n_shingles[position])}, None)
        n_skipped = len(skipped)
        for item, assignment in enumerate(greedy_representatives(len(eligible), verified)):
            if assignment is not None:
                members[assignment[0]].append((item, assignment[1]))
        for representative, dropped in members.items():  # indices into `eligible`
            rep_position = eligible[representative]
            size = len(dropped) + 1
            outcome[rep_position] = (Reason.KEPT, None, {"cluster_size": size}, None)
            for item, estimate in dropped:
                outcome[eligible[item]] = (
                    Reason.NEAR_DUPLICATE, estimate,
                    {"jaccard_to_representative": estimate, "cluster_size": size},
                    example_ids[rep_position],
                )

    # An exact duplicate whose representative was itself dropped as a near duplicate points at
    # the row that survives (that row's near representative); its exact twin stays in detail.
    survivor = {example_ids[p]: dup_of for p, (r, _, _, dup_of) in outcome.items() if r is Reason.NEAR_DUPLICATE}
    for position, (reason, score, detail, dup_of) in list(outcome.items()):
        if reason is Reason.EXACT_DUPLICATE and dup_of in survivor:
            outcome[position] = (reason, score, {**(detail or {}), "exact_of": dup_of}, survivor[dup_of])

    log = DecisionLog()
    for position in sorted(range(n_rows), key=example_ids.__getitem__):  # one canonical order
        reason, score, detail, dup_of = outcome.get(position, (Reason.KEPT, None, None, None))
        log.add(example_ids[position], reason, score=score, detail=detail, dup_of=dup_of)
    reasons = [outcome[p][0] if p in outcome else Reason.KEPT for p in range(n_rows)]
    stats = {
        "n_in": n_rows,
        "exact_duplicates": reasons.count(Reason.EXACT_DUPLICATE),
        "near_duplicates": reasons.count(Reason.NEAR_DUPLICATE),
        "near_skipped_few_shingles": n_skipped,
        "clusters": len(members),
        "candidate_pairs": n_candidates,
        "verified_pairs": n_verified,
        # the LSH banding used and P(candidate | J = threshold): the recall ceiling at the threshold
        "bands": bands,
        "rows": rows,
        "expected_recall_at_threshold": round(dedup_lsh.candidate_probability(near.threshold, bands, rows), 4),
    }
    return log.to_table(), [reason is Reason.KEPT for reason in reasons], stats


# ------------------------------------------------------------------------------------ plan --
# Both backends compute the same candidate pairs and decisions (tests/tasks/test_dedup.py): the
# backend is read, not keyed (docs/caching.md, "Fields that are not in a key").
UNKEYED = ("near.backend",)


def plan(recipe: Recipe, inputs: list[Manifest], ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    """The call over every source's normalize artifact."""
    # Inputs in data-hash order: listing the sources in another order changes nothing.
    return plan_call(sys.modules[__name__], recipe.dedup.canonical(), sorted(inputs, key=lambda m: m.data_hash), ws)


@stage_task("dedup")
def dedup_stage(call: StageCall) -> PartedOutput:
    """Decide over the whole input (duplicates cross parts), from the key columns that needs and
    the conversations read part by part; then write the kept rows part by part: the other
    columns are never all in memory at once."""
    cfg = DedupConfig.model_validate(call.config)
    paths = records_paths(call.inputs)
    needed = pa.concat_tables([pq.read_table(path, columns=list(KEY_COLUMNS)) for path in paths])

    def messages() -> Iterator[list[Any]]:
        for path in paths:
            yield from _message_batches(pq.read_table(path, columns=["messages"]).column("messages"))

    decisions, kept, stats = dedup_decisions(needed, cfg, messages)
    del needed

    def parts() -> Iterator[StageOutput]:
        offset = 0
        for index, path in enumerate(paths):
            table = pq.read_table(path)
            mask = pa.array(kept[offset : offset + table.num_rows], pa.bool_())
            offset += table.num_rows
            yield StageOutput(records=table.filter(mask),
                              decisions=decisions if index == 0 else decisions.slice(0, 0))

    return PartedOutput(parts(), lambda: stats)
