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
verified pair (Jaccard >= threshold: exact, or the MinHash estimate, by backend) to an already kept
representative is dropped as a
duplicate of the best-matching one, otherwise it becomes a representative itself. So every
near-duplicate drop reaches the threshold with its own `dup_of`; a near copy of a near copy that
is far from the representative stays. (Connected components would drop a sliding-window chain
down to rows with Jaccard 0.4 to the survivor.)

Which library does what. This module holds the exact pass and the stage: it reads the key columns
and the conversations a batch at a time, and writes one decision per row. The near path runs
small functions from libraries, by `dedup.near.backend`:

- `rensa` (default): `tasks/lib/ngram_hashes.py` hashes each row's shingles to 64-bit integers
  and `tasks/lib/minhash_rensa.py` computes signatures with rensa, LSH candidate pairs, and
  verifies each pair by its exact shingle Jaccard, re-reading the conversations of candidate
  rows only (a second pass), so `score` and `jaccard_to_representative` are exact.
- `numpy` and `datasketch`, the reference: `tasks/lib/shingles.py` (each row's shingle strings and
  assistant text units, `row_features`) and `tasks/lib/minhash.py` (signatures, LSH candidate
  pairs, pairs verified by the MinHash estimate). `numpy` computes datasketch's signature values,
  buckets and estimates for thousands of rows per numpy call, so their decisions are identical
  (tests/tasks/test_dedup.py compares them; bench/dedup.py measures every backend on 100k documents).

All then run `greedy_representatives` (tasks/lib/minhash.py).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# dedup_lsh derives the bands that decide which pairs are compared: imported here (not only
# through the recipe models, which cache keys do not follow) so its source is in this stage's key.
from sftflow.tasks.core import dedup_lsh
from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_data import DedupConfig, NearDedupConfig
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DecisionLog, PartedOutput, StageOutput
from sftflow.tasks.core.stage import StageCall, plan_call, records_paths, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib import minhash_rensa
from sftflow.tasks.lib.minhash import (
    band_candidate_pairs, candidate_pairs, greedy_representatives, minhashes, shingle_hashes, signature_matrix,
    verified_pairs, verified_signature_pairs,
)
from sftflow.tasks.lib.shingles import row_features

LIBRARIES = ("datasketch", "numpy", "rensa")
# What decides besides the messages (read part by part): ids, exact hashes, survivor priority.
KEY_COLUMNS = ("example_id", "content_hash", "source")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({Reason.KEPT, Reason.EXACT_DUPLICATE, Reason.NEAR_DUPLICATE})


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
ROWS_PER_TEXT_BATCH = 4096  # rows whose messages are turned into Python objects at a time


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


def _exact_near_pairs(
    row_signatures: np.ndarray, eligible: np.ndarray, n_total: np.ndarray, cfg: NearDedupConfig,
    messages: Callable[[], Iterable[list[Any]]],
) -> tuple[list[tuple[int, int, float]], int]:
    """(pairs verified by exact Jaccard, number of candidate pairs) of the rensa backend:
    `eligible` are the row positions in survivor order, the pairs index into it."""
    pairs = minhash_rensa.band_pairs(row_signatures[eligible], *cfg.lsh_params)
    verified = minhash_rensa.exact_verified_pairs(
        pairs, eligible, n_total, cfg.threshold, lambda needed: minhash_rensa.row_ngram_sets(messages(), needed, cfg))
    return verified, len(pairs)


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
        if near.backend == "rensa":
            n_shingles, n_units, row_signatures, n_total = minhash_rensa.near_inputs(messages(), wanted, near)
            row_grams: dict[int, list[bytes]] = {}
        else:
            n_shingles, n_units, row_signatures, row_grams = near_inputs(messages(), wanted, near, keep_shingles=reference)
        longest = cfg.prefer == "longest_response"
        order = sorted(representatives, key=lambda p: (source_rank[p], -int(n_units[p]) if longest else 0, example_ids[p]))
        eligible = [p for p in order if n_shingles[p] >= near.min_shingles]
        skipped = [p for p in order if n_shingles[p] < near.min_shingles]
        if reference:
            verified, n_candidates = _near_pairs([row_grams[p] for p in eligible], near)
        elif near.backend == "rensa":
            verified, n_candidates = _exact_near_pairs(row_signatures, np.array(eligible, dtype=np.int64), n_total, near, messages)
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
        # what a verified pair reached the threshold with: the exact shingle Jaccard (rensa) or the
        # MinHash estimate (numpy, datasketch)
        "near_verification": "exact_jaccard" if near.backend == "rensa" else "minhash_estimate",
        # the LSH banding used and P(candidate | J = threshold): the recall ceiling at the threshold
        "bands": bands,
        "rows": rows,
        "expected_recall_at_threshold": round(dedup_lsh.candidate_probability(near.threshold, bands, rows), 4),
    }
    return log.to_table(), [reason is Reason.KEPT for reason in reasons], stats


# ------------------------------------------------------------------------------------ plan --
# The backend itself is read, not keyed: `numpy` and `datasketch` compute the same candidate pairs
# and decisions (tests/tasks/lib/test_minhash.py, tests/tasks/test_dedup.py), so switching between
# them re-runs nothing. What is keyed is the backend's family, which decides the output: `rensa`
# hashes shingles and permutes differently and verifies by exact Jaccard, so a switch between it
# and the others re-runs dedup (docs/caching.md, "Fields that are not in a key").
UNKEYED = ("near.backend",)
NEAR_FAMILIES = {"numpy": "datasketch-sha1-affine32-estimate", "datasketch": "datasketch-sha1-affine32-estimate",
                 "rensa": "ngram64-rensa-exact-jaccard"}


def plan(recipe: Recipe, inputs: list[Manifest], ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    """The call over every source's normalize artifact."""
    family = f"dedup.near family: {NEAR_FAMILIES[recipe.dedup.near.backend]}"
    # Inputs in data-hash order: listing the sources in another order changes nothing.
    return plan_call(sys.modules[__name__], recipe.dedup.canonical(), sorted(inputs, key=lambda m: m.data_hash), ws,
                     extra_input_hashes=[family])


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
