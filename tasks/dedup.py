"""Dedup stage: drop exact duplicates (same content_hash) and near duplicates (MinHash + LSH).

Every input row gets exactly one decision: kept, exact_duplicate or near_duplicate, the last two
with `dup_of` naming the row that stays. Representatives are always the smallest example_id of
their group, and all work happens in example_id order, so the outcome never depends on the order
in which upstream artifacts happened to list the rows.

The near path is split into small functions (`shingles`, signatures, candidate pairs, verified
pairs, `clusters`) with two interchangeable backends for the middle three (`dedup.near.backend`):

- `datasketch`, the reference: `MinHash.bulk`, `MinHashLSH`, `LeanMinHash.jaccard`.
- `numpy` (default): datasketch's own hash function and permutation parameters, applied to
  thousands of rows per numpy call instead of one row per call, and LSH buckets found by sorting
  each band. It computes the same signature values, the same buckets and the same estimates,
  so its decisions are identical (tests/tasks/test_dedup.py compares both; bench/dedup.py
  measures both on 100k documents).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from hashlib import sha1
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.recipe import DedupConfig, NearDedupConfig
from tasks.core.reasons import Reason
from tasks.core.records import DecisionLog, PartedOutput, StageOutput
from tasks.core.stage import StageCall, records_paths, stage_task

if TYPE_CHECKING:
    from datasketch import LeanMinHash

# datasketch is imported where it is used: importing it pulls in scipy (about 0.9 s), which
# every `sftflow` command would pay for while only planning a run.

LIBRARIES = ("datasketch", "numpy")
KEY_COLUMNS = ("example_id", "content_hash")
DECIDING_COLUMNS = (*KEY_COLUMNS, "messages")  # numpy: datasketch's hash values and permutations

# Unicode word characters: punctuation and case never separate two texts that say the same words.
WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------- near: text --
def conversation_text(messages: Iterable[dict[str, Any]] | None) -> str:
    """All turns' contents joined; roles are left out so a reformatted dialogue still matches.

    >>> conversation_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    'Hi\\nHello!'
    """
    return "\n".join(turn.get("content") or "" for turn in (messages or []))


def shingles(text: str, n: int) -> list[bytes]:
    """Distinct word n-grams of `text` (lowercased, punctuation-insensitive), as UTF-8 bytes.

    Bytes because datasketch's default hash (SHA-1) takes bytes; order of first appearance keeps
    the output deterministic (MinHash itself does not care about order).

    >>> shingles("The cat sat. The cat sat!", 3)
    [b'the cat sat', b'cat sat the', b'sat the cat']
    >>> shingles("too short", 3)
    []
    """
    words = WORD.findall(text.lower())
    grams = map(" ".join, zip(*(words[i:] for i in range(n))))  # every run of n consecutive words
    return [gram.encode("utf-8") for gram in dict.fromkeys(grams)]


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

    The bands are set explicitly (params=(b, r)) rather than derived from the threshold, so the
    recall curve is the recipe's and not an optimizer's choice. Two sets with Jaccard s collide
    in one band of r rows with probability s^r, so they become candidates with
        P(candidate | s) = 1 - (1 - s^r)^b.
    For b=16, r=8 this S-curve is steepest near (1/b)^(1/r) = 0.707: P = 0.947 at s = 0.8,
    0.9999 at s = 0.9, but 0.61 at s = 0.7, 0.061 at s = 0.5 and 0.010 at s = 0.4 — pairs
    below ~0.5 are rarely even candidates. Candidates are only suspects: `verified_pairs`
    checks each against the threshold before anything is dropped.
    """
    _check_bands(cfg)
    if len(signatures) < 2:
        return []
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
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


def clusters(n_items: int, pairs: Iterable[tuple[int, ...]]) -> list[list[int]]:
    """Connected components (size >= 2) of the graph with `pairs` as edges; each sorted, by minimum.

    Components can chain: A~B and B~C put A and C together even when A and C alone fall below
    the threshold. That is the usual choice for dedup (a near-copy of a near-copy is still
    redundant training data), and it is deterministic: components do not depend on edge order.

    >>> clusters(5, [(3, 4), (0, 1), (1, 3)])
    [[0, 1, 3, 4]]
    """
    parent = list(range(n_items))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for i, j, *_ in pairs:
        root_i, root_j = find(i), find(j)
        if root_i != root_j:  # the smaller index becomes the root: roots are component minima
            parent[max(root_i, root_j)] = min(root_i, root_j)
    members: dict[int, list[int]] = defaultdict(list)
    for x in range(n_items):
        members[find(x)].append(x)
    return sorted(group for group in members.values() if len(group) > 1)


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


def exact_groups(example_ids: Sequence[str], content_hashes: Sequence[str | None]) -> list[list[int]]:
    """Row positions grouped by content_hash, each group sorted by example_id (representative first).

    >>> exact_groups(["b", "a", "c"], ["h1", "h1", "h2"])
    [[1, 0], [2]]
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for position in sorted(range(len(example_ids)), key=example_ids.__getitem__):
        content_hash = content_hashes[position]
        if content_hash is None:
            raise ValueError(
                f"dedup: example_id {example_ids[position]!r} has no content_hash; dedup reads "
                "normalize's output, run normalize on this source first"
            )
        groups[content_hash].append(position)
    return sorted(groups.values(), key=lambda group: example_ids[group[0]])


# ----------------------------------------------------------------------------- near: glue --
def _check_bands(cfg: NearDedupConfig) -> None:
    if cfg.bands < 2:  # datasketch's MinHashLSH refuses a single band; both backends agree
        raise ValueError(
            f"dedup.near.bands = {cfg.bands}: MinHashLSH needs at least 2 bands; set "
            "dedup.near.bands >= 2 in the recipe (bands * rows must stay <= num_perm)"
        )


def _shingles_of(records: pa.Table, positions: Sequence[int], ngram: int) -> Iterator[list[bytes]]:
    """Shingles of each row at `positions`, in that order; messages become Python objects a
    batch at a time, so memory holds one batch of conversations, not the corpus."""
    column = records.column("messages")
    for start in range(0, len(positions), ROWS_PER_TEXT_BATCH):
        batch = pa.array(positions[start : start + ROWS_PER_TEXT_BATCH], type=pa.int64())
        for messages in column.take(batch).to_pylist():
            yield shingles(conversation_text(messages), ngram)


def _message_batches(column: pa.ChunkedArray) -> Iterator[list[Any]]:
    for start in range(0, len(column), ROWS_PER_TEXT_BATCH):
        yield column.slice(start, ROWS_PER_TEXT_BATCH).to_pylist()


def signatures_in_order(batches: Iterable[list[Any]], n_rows: int, cfg: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(shingle count per row, signature matrix) of all rows, in input order, a batch at a time:
    only one batch of conversations and shingle hashes is ever held."""
    n_shingles = np.zeros(n_rows, dtype=np.int64)
    signatures = np.empty((n_rows, cfg.num_perm), dtype=np.uint32)
    start = 0
    for batch in batches:
        hashes = [shingle_hashes(shingles(conversation_text(m), cfg.ngram)) for m in batch]
        n_shingles[start : start + len(batch)] = [len(h) for h in hashes]
        signatures[start : start + len(batch)] = signature_matrix(hashes, cfg.num_perm, cfg.seed)
        start += len(batch)
    if start != n_rows:
        raise ValueError(f"dedup: {start} conversations for {n_rows} rows")
    return n_shingles, signatures


def _near_pairs(
    rows: np.ndarray | Sequence[Sequence[bytes]], cfg: NearDedupConfig
) -> tuple[list[tuple[int, int, float]], int, Callable[[int, int], float]]:
    """(verified pairs, number of candidate pairs, estimated Jaccard of two rows) for one backend:
    `rows` is the signature matrix (numpy) or every row's shingles (datasketch)."""
    if cfg.backend == "numpy":
        signatures = rows
        pairs = band_candidate_pairs(signatures, cfg.bands, cfg.rows)
        return (verified_signature_pairs(pairs, signatures, cfg.threshold), len(pairs),
                lambda i, j: signature_jaccard(signatures, i, j))
    sketches = minhashes(rows, cfg.num_perm, cfg.seed)
    candidates = candidate_pairs(sketches, cfg)
    return (verified_pairs(candidates, sketches, cfg.threshold), len(candidates),
            lambda i, j: sketches[i].jaccard(sketches[j]))


# ------------------------------------------------------------------------------------ stage --
def deduplicate(records: pa.Table, cfg: DedupConfig) -> StageOutput:
    """Exact dedup on content_hash, then MinHash-LSH near dedup over the exact representatives."""
    decisions, kept, stats = dedup_decisions(records, cfg)
    return StageOutput(records=records.filter(pa.array(kept, pa.bool_())), decisions=decisions, stats=stats)


def dedup_decisions(
    records: pa.Table, cfg: DedupConfig, messages: Callable[[], Iterable[list[Any]]] | None = None
) -> tuple[pa.Table, list[bool], dict[str, Any]]:
    """(decisions in example_id order, kept flag per input row, stats) of `deduplicate`.

    Reads the example_id and content_hash columns of `records`; `messages()` yields the rows'
    conversations in input order, in batches (default: from the table's messages column). The
    datasketch backend reads the messages column of `records` itself."""
    if messages is None:
        messages = lambda: _message_batches(records.column("messages"))  # noqa: E731
    example_ids = records.column("example_id").to_pylist()
    _check_ids(example_ids)
    n_rows = len(example_ids)
    # decision per row position: (reason, score, detail, dup_of)
    outcome: dict[int, tuple[Reason, float | None, dict[str, Any] | None, str | None]] = {}

    if cfg.exact:
        groups = exact_groups(example_ids, records.column("content_hash").to_pylist())
    else:
        groups = [[p] for p in sorted(range(n_rows), key=example_ids.__getitem__)]
    for representative, *duplicates in groups:
        for position in duplicates:
            outcome[position] = (
                Reason.EXACT_DUPLICATE, 1.0, {"group_size": len(duplicates) + 1},
                example_ids[representative],
            )
    representatives = [group[0] for group in groups]  # already in example_id order

    near = cfg.near
    n_skipped = n_candidates = 0
    near_clusters: list[list[int]] = []
    if near.enabled and representatives:
        _check_bands(near)
        if near.backend == "numpy":
            # Every row's shingle count and signature in input order, from batches of messages
            # (the stage streams them from its input parts), then the eligible representatives'.
            n_shingles, row_signatures = signatures_in_order(messages(), n_rows, near)
            eligible = [p for p in representatives if n_shingles[p] >= near.min_shingles]
            signatures = row_signatures[np.array(eligible, dtype=np.int64)]
            del row_signatures
            skipped = [p for p in representatives if n_shingles[p] < near.min_shingles]
            verified, n_candidates, similarity = _near_pairs(signatures, near)
        else:  # the reference: every representative's shingles, hashed by datasketch
            eligible, shingled, skipped, n_shingles = [], [], [], {}
            for position, grams in zip(representatives, _shingles_of(records, representatives, near.ngram)):
                n_shingles[position] = len(grams)
                if len(grams) < near.min_shingles:
                    skipped.append(position)
                else:
                    eligible.append(position)
                    shingled.append(grams)
            verified, n_candidates, similarity = _near_pairs(shingled, near)
        for position in skipped:  # too little text for a meaningful Jaccard
            outcome[position] = (Reason.KEPT, None, {"near_skipped_n_shingles": int(n_shingles[position])}, None)
        n_skipped = len(skipped)
        near_clusters = clusters(len(eligible), verified)
        for representative, *members in near_clusters:  # indices into `eligible`, sorted
            rep_position = eligible[representative]
            outcome[rep_position] = (Reason.KEPT, None, {"cluster_size": len(members) + 1}, None)
            for member in members:
                jaccard = similarity(member, representative)
                outcome[eligible[member]] = (
                    Reason.NEAR_DUPLICATE, jaccard,
                    {"jaccard_to_representative": jaccard, "cluster_size": len(members) + 1},
                    example_ids[rep_position],
                )

    # An exact duplicate whose representative was itself dropped as a near duplicate points at
    # the row that survives (the near cluster's representative); its exact twin stays in detail.
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
        "clusters": len(near_clusters),
        "candidate_pairs": n_candidates,
    }
    return log.to_table(), [reason is Reason.KEPT for reason in reasons], stats


@stage_task("dedup")
def dedup_stage(call: StageCall) -> PartedOutput:
    """Decide over the whole input (duplicates cross parts), from the three columns that needs;
    then write the kept rows part by part: the other columns are never all in memory at once."""
    cfg = DedupConfig.model_validate(call.config)
    paths = records_paths(call.inputs)
    # The datasketch reference shingles representatives in example_id order: it needs every
    # conversation at hand. The numpy backend reads them part by part, in input order.
    columns = list(DECIDING_COLUMNS if cfg.near.enabled and cfg.near.backend == "datasketch" else KEY_COLUMNS)
    needed = pa.concat_tables([pq.read_table(path, columns=columns) for path in paths])

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
