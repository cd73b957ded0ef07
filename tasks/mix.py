"""Mix: carve the eval split, then sample each category to its share of the train mixture.

The stage reads the scored records of all sources and writes Parquet shards
`shards/<split>/<category>-<part>.parquet` (the input columns plus `split`); its `records` output
is empty because the shards are the data. Every input row gets one decision: `held_out_eval`,
`selected` (detail: how many copies the train split holds) or `not_sampled`; every detail names
the row's `prompt_group`.

The rules it runs are in tasks/lib/mixture.py, whose docstring has them in full: the eval split
by prompt group, target shares and rows, `temperature`, the short-category policy and the seeded
copies. tasks/lib/shards.py writes the shards. What the stage itself decides (and why):

- **Every row, once.** Rows are put in example_id order before anything is counted or drawn, so
  no step depends on input order. Eval rows of every category are kept, including categories
  whose train share is 0: a `held_out_eval` decision always points at a shard row.
- **Shares name the data.** A positive share naming a category without a single input row is an
  error that lists the categories present (the recipe already refuses names no source can
  produce). Categories in the data but not in `shares` are not sampled: their rows are
  `not_sampled` with detail "category not in mix.shares", and stats list them
  (`categories_not_in_shares`). A short-category policy that leaves the train mixture empty (a
  shared category whose rows are all eval) is an error naming the category.
- **What happened, said.** Realized shares are reported in the targets' unit (`share_unit`) and
  in both rows and tokens. Stats (`short_category`, each mixture row's `outcome`), the Prefect
  artifact and the run summary say what the short-category policy did.
- **Shard order.** The train mixture (categories by name, rows by id, copies together) is
  shuffled with a seeded rng and written per category in that shuffled order.
- **data_hash.** sha256 over the output rows in shard order (split, category, then each row's
  example_id, copy number and content_hash), independent of `shard_rows`: a key for the train
  stage under which cutting the same rows into other files does not force a retrain.
"""


from __future__ import annotations

import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sftflow.tasks.core.recipe import SLUG, Recipe
from sftflow.tasks.core.recipe_data import MixConfig
from sftflow.tasks.core.records import DecisionLog, PartedOutput, StageOutput
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.artifacts import Manifest, TMP_PREFIX
from sftflow.tasks.core.stage import StageCall, plan_call, records_paths, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.mixture import (FittedCounts, apportion, derived_seed, eval_assignment, fit_counts, prompt_group,
                               row_quotas, sample_copies, short_category_error, target_shares, upsample_cap)
from sftflow.tasks.core.mix_shards import EVAL, TRAIN, ShardEntry
from sftflow.tasks.lib.shards import TOKENS_COLUMN, Tables, data_hash, gather_shards, sum_tokens

LIBRARIES = ("numpy", "pyarrow")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({Reason.SELECTED, Reason.HELD_OUT_EVAL, Reason.NOT_SAMPLED})

SCORE_COLUMN = "score"
MESSAGES_COLUMN = "messages"


# ------------------------------------------------------------------------------------ input --
@dataclass(frozen=True)
class InputRows:
    """The columns the plan needs, one entry per input row in input order."""

    ids: list[str]
    categories: list[str]
    hashes: list[str | None]  # content_hash
    tokens: list[int | None] | None  # n_tokens_total; None when the input has no such column
    scores: list[float | None]
    groups: list[str]  # prompt groups, from the messages (which are not kept)


def _plan_columns(schema: pa.Schema, tables: Tables) -> InputRows:
    """The columns the plan needs, read part by part: ids, categories, content hashes, tokens,
    scores, and each row's prompt group (from its messages, which are not kept)."""
    names = schema.names
    missing = {"example_id", "category"} - set(names)
    if missing:
        raise ValueError(f"mix: the input has no {sorted(missing)} column; mix needs the records of the score "
                         "(or filter) stage, which carry example_id and category")
    wanted = ("example_id", "category", "content_hash", TOKENS_COLUMN, SCORE_COLUMN, MESSAGES_COLUMN)
    plan: dict[str, list] = {"ids": [], "categories": [], "hashes": [], "tokens": [], "scores": [], "groups": []}
    for part in tables([c for c in wanted if c in names]):
        ids = part["example_id"].to_pylist()
        hashes = part["content_hash"].to_pylist() if "content_hash" in names else [None] * len(ids)
        messages = part[MESSAGES_COLUMN].to_pylist() if MESSAGES_COLUMN in names else [None] * len(ids)
        plan["ids"] += ids
        plan["categories"] += part["category"].to_pylist()
        plan["hashes"] += hashes
        plan["tokens"] += part[TOKENS_COLUMN].to_pylist() if TOKENS_COLUMN in names else [None] * len(ids)
        plan["scores"] += part[SCORE_COLUMN].to_pylist() if SCORE_COLUMN in names else [None] * len(ids)
        plan["groups"] += [prompt_group(m, h or i) for m, h, i in zip(messages, hashes, ids)]
        del messages
    if TOKENS_COLUMN not in names:
        plan["tokens"] = None
    return InputRows(**plan)


def _check_rows(ids: list[str | None], categories: list[str | None], tokens: list[int | None] | None,
                cfg: MixConfig, column_names: list[str]) -> None:
    for row, (example_id, category) in enumerate(zip(ids, categories)):
        if example_id is None:
            raise ValueError(f"mix: input row {row} has no example_id; mix needs the records of the "
                             "score (or filter) stage")
        if category is None:
            raise ValueError(f"mix: example {example_id!r} has no category; run the normalize stage "
                             "(it assigns categories) before mix")
        if not SLUG.match(category):
            raise ValueError(f"mix: example {example_id!r} has category {category!r}, which is not a "
                             "lowercase slug ([a-z0-9_-]); categories name the shard files, so fix the "
                             "source's `category` in the recipe")
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    if duplicated:
        raise ValueError(f"mix: example_id {duplicated[0]!r} occurs {Counter(ids)[duplicated[0]]} times "
                         f"({len(duplicated)} duplicated ids); every input row needs its own id — "
                         "check that the input artifacts do not overlap")
    if cfg.total_tokens is not None:
        if tokens is None:
            raise ValueError(f"mix.total_tokens needs the `{TOKENS_COLUMN}` column, which the filter "
                             f"stage adds; the input has {column_names}. Run the filter stage before "
                             "mix, or set mix.total_rows instead")
        for example_id, n_tokens in zip(ids, tokens):
            if n_tokens is None:
                raise ValueError(f"mix.total_tokens: example {example_id!r} has a null {TOKENS_COLUMN}; "
                                 "re-run the filter stage, or set mix.total_rows instead")


def _check_shares_exist(cfg: MixConfig, in_data: Counter) -> None:
    """A positive share for a category without a single input row is an error (a typo, or a
    category an earlier stage removed entirely), naming the categories that exist."""
    absent = sorted(c for c, share in (cfg.shares or {}).items() if share > 0 and c not in in_data)
    if absent:
        present = ", ".join(f"{c} ({n} rows)" for c, n in sorted(in_data.items())) or "none"
        raise ValueError(f"mix.shares names {', '.join(repr(c) for c in absent)}, which has no rows in the "
                         f"mix input; the categories in the input are: {present}")


# ------------------------------------------------------------------------------------ steps --
@dataclass(frozen=True)
class Split:
    """Each input row's eval verdict, and the rows of each split by category, in example_id order."""

    is_eval: list[bool]
    order: list[int]  # every input row, by example_id
    train: dict[str, list[int]]
    eval: dict[str, list[int]]


def split_rows(rows: InputRows, cfg: MixConfig) -> Split:
    """Eval by prompt group; then canonical order (by example_id) makes every step after it
    independent of the input order."""
    is_eval = eval_assignment(rows.groups, cfg.eval_fraction, cfg.seed)
    order = sorted(range(len(rows.ids)), key=lambda i: rows.ids[i])
    train_rows: dict[str, list[int]] = {}
    eval_rows: dict[str, list[int]] = {}
    for i in order:
        (eval_rows if is_eval[i] else train_rows).setdefault(rows.categories[i], []).append(i)
    return Split(is_eval, order, train_rows, eval_rows)


@dataclass(frozen=True)
class Targets:
    """Train rows per category: what the recipe asks for, and what the short-category policy gives."""

    shares: dict[str, float]  # target share per category, sorted by name
    available: dict[str, int]  # train rows per input category
    total_rows: int  # train rows the recipe asks for
    wanted: dict[str, int]  # train rows per category the recipe asks for, before the policy
    caps: dict[str, int]  # most rows max_upsample allows
    fitted: FittedCounts  # after the policy


def fit_targets(rows: InputRows, split: Split, in_data: Counter, cfg: MixConfig) -> Targets:
    """Shares, integer row targets (in token mode from each category's mean tokens) and the
    short-category policy. Errors: a short category under `fail`, or an empty train mixture."""
    train_rows, tokens = split.train, rows.tokens
    available = {c: len(train_rows.get(c, [])) for c in sorted(in_data)}
    shares = target_shares(available, cfg)
    mean_tokens = None
    if cfg.total_tokens is not None:
        all_train = [i for members in train_rows.values() for i in members]
        mean_tokens = {c: sum(tokens[i] for i in members) / len(members) for c, members in train_rows.items()}
        mean_tokens["*"] = sum(tokens[i] for i in all_train) / len(all_train) if all_train else 0.0
    total_rows_target, quotas = row_quotas(shares, available, cfg, mean_tokens)
    wanted = apportion(quotas, total_rows_target)
    caps = {c: upsample_cap(available.get(c, 0), cfg.max_upsample) for c in shares}
    short = sorted(c for c in shares if wanted[c] > caps[c])
    if short and cfg.short_category == "fail":
        c = short[0]
        raise short_category_error(c, available.get(c, 0), caps[c], wanted[c], shares[c], total_rows_target, cfg)
    fitted = fit_counts(quotas, total_rows_target, caps, cfg.short_category)
    if fitted.total == 0 and total_rows_target > 0:
        c = next((c for c in short if caps[c] == 0), short[0])
        raise ValueError(f"mix: category {c!r} has a share of {shares[c]:.4g} but no train rows (its "
                         f"{in_data[c]} rows are all in the eval split), so mix.short_category "
                         f"'{cfg.short_category}' leaves an empty train mixture; lower eval_fraction or remove "
                         "the category from mix.shares" + ("" if cfg.short_category == "fill" else
                                                          ", or use short_category: fill"))
    return Targets(shares, available, total_rows_target, wanted, caps, fitted)


def sample(train_rows: dict[str, list[int]], counts: dict[str, int], categories: list[str],
           cfg: MixConfig) -> tuple[dict[int, int], list[int], dict[str, list[int]]]:
    """Each train row's copies; the train mixture in canonical order (categories by name, rows by
    id, copies together); and its rows per category after one seeded shuffle, the shards' order."""
    copies: dict[int, int] = {}
    for category, rows in train_rows.items():
        for i, k in zip(rows, sample_copies(len(rows), counts[category], cfg.seed, category)):
            copies[i] = k

    # The train mixture in canonical order, then one seeded shuffle; shards keep that order.
    mixture = [i for c in sorted(train_rows) for i in train_rows[c] for _ in range(copies[i])]
    shuffled = np.random.default_rng(derived_seed("mix-shuffle", cfg.seed)).permutation(len(mixture))
    train_order: dict[str, list[int]] = {}
    for position in shuffled.tolist():
        i = mixture[position]
        train_order.setdefault(categories[i], []).append(i)
    return copies, mixture, train_order


def decide(rows: InputRows, split: Split, copies: dict[int, int], targets: Targets,
           not_in_shares: list[str]) -> DecisionLog:
    """One decision per input row, in example_id order, each naming the row's prompt group."""
    ids, categories, scores = rows.ids, rows.categories, rows.scores
    counts, available = targets.fitted.counts, targets.available
    decisions = DecisionLog()
    for i in split.order:
        in_group = {"prompt_group": rows.groups[i]}
        if split.is_eval[i]:
            decisions.add(ids[i], Reason.HELD_OUT_EVAL, score=scores[i], detail=in_group)
        elif copies[i] > 0:
            decisions.add(ids[i], Reason.SELECTED, score=scores[i], detail={"copies": copies[i], **in_group})
        elif categories[i] in not_in_shares:
            decisions.add(ids[i], Reason.NOT_SAMPLED, score=scores[i],
                          detail={"category": categories[i], "why": "category not in mix.shares", **in_group})
        else:
            category = categories[i]
            decisions.add(ids[i], Reason.NOT_SAMPLED, score=scores[i],
                          detail={"category_target_rows": counts[category],
                                  "category_available_rows": available[category], **in_group})
    return decisions


def mix_stats(rows: InputRows, split: Split, targets: Targets, copies: dict[int, int], mixture: list[int],
              not_in_shares: list[str], cfg: MixConfig, output_hash: str,
              shard_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's stats: counts, targets, what the short-category policy did, the eval split,
    the data hash, the shards (`shard_stats`, filled as they are written) and one row per category."""
    tokens, train_rows, eval_rows = rows.tokens, split.train, split.eval
    shares, available, wanted, caps, fitted = (targets.shares, targets.available, targets.wanted, targets.caps,
                                               targets.fitted)
    total_rows_target, prompt_groups, is_eval = targets.total_rows, rows.groups, split.is_eval
    n_train = len(mixture)
    train_tokens = None if tokens is None else sum(tokens[i] or 0 for i in mixture)
    share_unit = "tokens" if cfg.total_tokens is not None else "rows"
    mixture_stats = []
    for category in shares:
        members = train_rows.get(category, [])
        n_rows = sum(copies[i] for i in members)
        n_tokens = None if tokens is None else sum((tokens[i] or 0) * copies[i] for i in members)
        share_rows = n_rows / n_train if n_train else 0.0
        share_tokens = None if n_tokens is None else (n_tokens / train_tokens if train_tokens else 0.0)
        mixture_stats.append({
            "category": category,
            "target_share": shares[category],
            # in `share_unit`, the unit of the targets: tokens with total_tokens, else rows
            "realized_share": share_tokens if share_unit == "tokens" else share_rows,
            "realized_share_rows": share_rows,
            "realized_share_tokens": share_tokens,
            "share_unit": share_unit,
            "n_available": available.get(category, 0),
            "n_rows": n_rows,
            "n_unique": sum(1 for i in members if copies[i] > 0),
            "n_eval": len(eval_rows.get(category, [])),
            "n_tokens": n_tokens,
            "n_target": wanted[category],  # train rows the recipe asked for, before the policy
            "n_cap": caps[category],  # most rows max_upsample allows
            "n_shortfall": max(0, wanted[category] - caps[category]),  # rows the category could not supply
            "outcome": _outcome(category, cfg, targets, not_in_shares),
        })
    n_eval = sum(len(members) for members in eval_rows.values())
    stats = {
        "n_in": len(rows.ids),
        "n_out": n_train + n_eval,
        "n_train_rows": n_train,
        "n_eval_rows": n_eval,
        "n_train_tokens": train_tokens,
        "total_rows_target": total_rows_target,
        "total_tokens_target": cfg.total_tokens,
        "share_unit": share_unit,
        "shortfall_rows": sum(m["n_shortfall"] for m in mixture_stats),
        "short_category": {
            "policy": cfg.short_category,
            "outcome": fitted.outcome,
            "short_categories": [{"category": c, "n_available": available.get(c, 0), "n_cap": caps[c],
                                  "n_needed": wanted[c]} for c in fitted.short],
            "n_train_rows_target": total_rows_target,
            "n_train_rows": n_train,
        },
        "categories_not_in_shares": not_in_shares,
        "eval_split": {"by": "prompt", "n_groups": len(set(prompt_groups)),
                       "n_eval_groups": len({g for g, e in zip(prompt_groups, is_eval) if e})},
        "data_hash": output_hash,
        "shards": shard_stats,
        "mixture": mixture_stats,
    }
    return stats


def _outcome(category: str, cfg: MixConfig, targets: Targets, not_in_shares: list[str]) -> str:
    """What happened to one category: not_in_shares, zero_share, short (limited by max_upsample),
    scaled_down (held its share in a smaller mixture), filled (took rows of a short category),
    or held (got what the recipe asked)."""
    fitted, wanted, counts = targets.fitted, targets.wanted, targets.fitted.counts
    if category in not_in_shares:
        return "not_in_shares"
    if cfg.shares is not None and cfg.shares.get(category, 0.0) == 0:
        return "zero_share"
    if category in fitted.short:
        return "short"
    if fitted.outcome == "scaled_down":
        return "scaled_down"
    return "filled" if counts[category] > wanted[category] else "held"


# ------------------------------------------------------------------------------------- main --
def mix_parts(schema: pa.Schema, tables: Tables, cfg: MixConfig, spool_dir: Path) -> PartedOutput:
    """Eval split, target shares and counts, deterministic sampling, shards, one decision per row.

    `tables(columns)` yields the input's records parts in order (only `columns`, or all columns
    for None); `schema` is theirs. The plan needs only ids, categories, hashes, tokens, scores and
    prompt groups, read first. The shards are then written in two streaming steps
    (`gather_shards`: spool, then cut), so memory holds one input part or one spool file of rows,
    never the whole input."""
    rows = _plan_columns(schema, tables)
    _check_rows(rows.ids, rows.categories, rows.tokens, cfg, schema.names)
    split = split_rows(rows, cfg)
    in_data = Counter(rows.categories)
    _check_shares_exist(cfg, in_data)
    targets = fit_targets(rows, split, in_data, cfg)
    copies, mixture, train_order = sample(split.train, targets.fitted.counts, rows.categories, cfg)
    # The output rows in shard order: (split, category) blocks, each in its sampled order.
    blocks = [(name, category, by_category[category])
              for name, by_category in ((TRAIN, train_order), (EVAL, split.eval)) for category in sorted(by_category)]
    not_in_shares = sorted(c for c in in_data if cfg.shares is not None and c not in cfg.shares)
    decisions = decide(rows, split, copies, targets, not_in_shares)
    shard_stats: list[dict[str, Any]] = []
    stats = mix_stats(rows, split, targets, copies, mixture, not_in_shares, cfg,
                      data_hash(blocks, rows.ids, rows.hashes), shard_stats)

    def shards() -> Iterator[StageOutput]:
        """One part per spool file: its shards are written before the next is read."""
        no_rows, no_decisions = schema.empty_table(), DecisionLog().to_table()
        for group, extra in gather_shards(tables, blocks, cfg.shard_rows, spool_dir):
            shard_stats.extend(ShardEntry(name, group.split, group.category, part.num_rows, sum_tokens(part)).to_stats()
                               for name, part in extra.items())
            yield StageOutput(records=no_rows, decisions=no_decisions, extra=extra)
        yield StageOutput(records=no_rows, decisions=decisions.to_table())

    return PartedOutput(shards(), lambda: stats)


# ------------------------------------------------------------------------------------ plan --
def plan(recipe: Recipe, inputs: list[Manifest], ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    """The call on the score artifact."""
    return plan_call(sys.modules[__name__], recipe.mix.canonical(), inputs, ws)


@stage_task("mix")
def mix_stage(call: StageCall) -> PartedOutput:
    paths = records_paths(call.inputs)
    if not paths:
        raise ValueError("mix: the input artifacts hold no records parts")
    schema = pq.read_schema(paths[0])

    def tables(columns: list[str] | None) -> Iterator[pa.Table]:
        for path in paths:
            yield pq.read_table(path, columns=columns)

    # Spool files live beside the artifact (same disk, swept like any unfinished folder).
    spool_dir = call.store.stage_dir(call.stage) / f"{TMP_PREFIX}spool-{call.key}"
    output = mix_parts(schema, tables, MixConfig.model_validate(call.config), spool_dir)

    def parts() -> Iterator[StageOutput]:
        try:
            yield from output.parts
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)

    return PartedOutput(parts(), output.stats)
