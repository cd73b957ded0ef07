"""Mix: carve the eval split, then sample each category to its share of the train mixture.

The stage reads the scored records of all sources and writes Parquet shards
`shards/<split>/<category>-<part>.parquet` (the input columns plus `split`); its `records` output
is empty because the shards are the data. Every input row gets one decision: `held_out_eval`,
`selected` (detail: how many copies the train split holds) or `not_sampled`; every detail names
the row's `prompt_group`.

Choices this stage makes (and why):

- **Eval first, by prompt.** A row's group is a hash of its normalized prompt: the user turns'
  text units (tasks/lib/text_units.py: lowercase words, one unit per character in scripts without
  spaces), so case, punctuation and whitespace do not separate copies of one question. A group
  is eval when sha256(seed, group) mapped to [0, 1) is below `eval_fraction`, so every row of a
  group lands in the same split: the same prompt with two answers, or copies of a prompt that
  differ only in case, punctuation or whitespace, are never in both. (Prompts reworded by a few
  words are different groups; near-dedup, before mix, is what removes those near copies.) The verdict depends on the prompt alone, not on example_id (which
  is hash(source, row position)), so inserting, removing or reordering rows of a source moves no
  other row between splits. System prompts are left out: a system prompt shared by many rows
  would otherwise separate copies of one user question (the stricter grouping is the safe one
  for leakage). A prompt with no text units at all (only emoji or punctuation) is grouped by the
  row's content_hash instead. Eval rows of every category are kept, including categories whose
  train share is 0: a `held_out_eval` decision always points at a shard row. (datasets'
  `train_test_split` splits by row; grouping by prompt is what keeps such an eval honest.)
- **Target shares.** `mix.shares` when given: a positive share naming a category without a
  single input row is an error that lists the categories present (the recipe already refuses
  names no source can produce). Categories in the data but not in `shares` get 0 and are not
  sampled: their rows are `not_sampled` with detail "category not in mix.shares", and stats list
  them (`categories_not_in_shares`). Without `shares`, each category's share is its number of
  train-available rows. `temperature` T then reshapes either kind of share: p_c ∝ p_c^(1/T),
  renormalized (T>1 flattens towards uniform, T<1 sharpens; zero shares stay zero).
- **Target rows.** `total_rows` as given; with `total_tokens` the shares are token shares:
  category c wants share_c * total_tokens / mean_tokens_c rows (mean over its train-available
  rows; a category without rows uses the mean of all train-available rows) and the total is the
  rounded sum of those; by default the total is the number of train-available rows (all
  categories, also those whose share is 0). Real-valued quotas become integers by the
  largest-remainder method (ties by category name), so the counts sum exactly to the total.
  Realized shares are reported in the targets' unit (`share_unit`) and in both rows and tokens.
- **Short categories (`short_category`).** A category gets at most floor(max_upsample *
  n_available) rows. When its target is above that, `scale_down` (default) shrinks the whole
  mixture to the largest total at which every category fits, so every share holds (to rounding,
  at most 1 / total rows; in token mode also the token counts of the rows drawn); a smaller
  train set with the recipe's proportions is the least surprising outcome. `fail` stops with an
  error naming the category, its rows and the rows needed. `fill` keeps the total and hands the
  gap to the other categories in proportion to their shares (their realized shares then differ
  from the targets). Stats (`short_category`, each mixture row's `outcome`), the Prefect
  artifact and the run summary say which happened.
- **Sampling.** Per category, rows sorted by example_id; a target t over n rows gives every row
  t // n copies, and t % n further rows are drawn without replacement by
  numpy.random.default_rng(sha256(seed, category)). Sorting first makes the draw independent of
  input order. The train mixture (categories by name, rows by id, copies together) is then
  shuffled with a seeded rng and written per category in that shuffled order.
- **data_hash.** sha256 over the output rows in shard order (split, category, then each row's
  example_id, copy number and content_hash), independent of `shard_rows`: a key for the train
  stage under which cutting the same rows into other files does not force a retrain.
"""


from __future__ import annotations

import hashlib
import math
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.recipe import SLUG, MixConfig, Recipe
from tasks.core.records import DecisionLog, PartedOutput, StageOutput
from tasks.core.reasons import Reason
from tasks.core.artifacts import Manifest, TMP_PREFIX
from tasks.core.stage import PART_ROWS, StageCall, plan_call, records_paths, stage_task
from tasks.core.workspace import Workspace
from tasks.lib.text_units import text_units

LIBRARIES = ("numpy", "pyarrow")

TOKENS_COLUMN = "n_tokens_total"
SCORE_COLUMN = "score"
SPLIT_COLUMN = "split"
MESSAGES_COLUMN = "messages"
TRAIN, EVAL = "train", "eval"
# Float products such as 1.15 * 100 land just below the integer they mean (114.999…); quotas
# and caps are nudged by this much before flooring so they mean what the recipe says.
FLOAT_SLACK = 1e-9


# ---------------------------------------------------------------------------------- hashing --
def _digest(*parts: Any) -> bytes:
    # "\x1f" cannot occur in a seed and is not a slug character, so parts never run together.
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).digest()


def unit_interval(*parts: Any) -> float:
    """A deterministic number in [0, 1) from a hash of `parts` (53 bits: exact as a float).

    >>> unit_interval("mix-eval", 0, "abc") == unit_interval("mix-eval", 0, "abc")
    True
    >>> 0.0 <= unit_interval("x") < 1.0
    True
    """
    return (int.from_bytes(_digest(*parts)[:8], "big") >> 11) / float(1 << 53)


def derived_seed(*parts: Any) -> int:
    """A 64-bit numpy seed from a hash of `parts` (Python's hash() is salted per process)."""
    return int.from_bytes(_digest(*parts)[:8], "big")


PROMPT_ROLES = ("user",)
TURN_SEPARATOR = "\x1e"  # between turns; text_units never yields it (it is not \w)


def normalized_prompt(messages: Iterable[dict[str, Any]] | None) -> str:
    """The prompt as the eval split compares it: the user turns' text units (tasks/lib/text_units.py:
    lowercase words, one unit per character in scripts without spaces), so case, punctuation and
    whitespace never separate two copies of one question.

    >>> normalized_prompt([{"role": "system", "content": "Be brief."},
    ...                    {"role": "user", "content": "What's  the CAPITAL of France?"},
    ...                    {"role": "assistant", "content": "Paris."}])
    'what s the capital of france'
    """
    return TURN_SEPARATOR.join(" ".join(text_units(m.get("content") or "")) for m in messages or ()
                               if m.get("role") in PROMPT_ROLES)


def prompt_group(messages: Iterable[dict[str, Any]] | None, fallback: str) -> str:
    """The row's eval-split group: a 64-bit hex hash of its normalized prompt, or of `fallback`
    (the row's content_hash) when the prompt has no text units at all (a prompt of only emoji or
    punctuation), so that such rows do not all fall into one group.

    >>> hi = prompt_group([{"role": "user", "content": "Hi!"}], "x")
    >>> hi == prompt_group([{"role": "user", "content": "  hi"}], "y")
    True
    """
    prompt = normalized_prompt(messages)
    key = ("prompt", prompt) if prompt.replace(TURN_SEPARATOR, "") else ("row", fallback)
    return _digest("mix-prompt-group", *key)[:8].hex()


def eval_assignment(group_keys: Iterable[str], eval_fraction: float, seed: int) -> list[bool]:
    """True for the rows that go to the eval split: hash(seed, group key) in [0, 1) < eval_fraction.

    Each verdict depends only on that row's group key (its prompt group) and the seed, never on
    other rows, their order or their ids, so rows of one group always share a split.

    >>> eval_assignment(["a", "b"], 0.0, 0)
    [False, False]
    """
    return [unit_interval("mix-eval", seed, key) < eval_fraction for key in group_keys]


# ----------------------------------------------------------------------------- target sizes --
def apply_temperature(shares: dict[str, float], temperature: float | None) -> dict[str, float]:
    """p_c ∝ p_c^(1/T), renormalized; zero shares stay zero. Computed in log space so a small T
    cannot underflow every share to 0.

    >>> apply_temperature({"a": 0.8, "b": 0.2}, 2.0)
    {'a': 0.6666666666666666, 'b': 0.3333333333333333}
    """
    if temperature is None:
        return dict(shares)
    positive = {c: p for c, p in shares.items() if p > 0}
    if not positive:
        return dict(shares)
    top = max(math.log(p) for p in positive.values())
    weights = {c: math.exp((math.log(p) - top) / temperature) for c, p in positive.items()}
    total = sum(weights.values())
    return {c: weights[c] / total if c in weights else 0.0 for c in shares}


def target_shares(available: dict[str, int], cfg: MixConfig) -> dict[str, float]:
    """Target share of the train mixture per category (see the module docstring for the rules).

    Keys: every category of `available` (the categories in the input, with their train-available
    rows) and of `cfg.shares`, sorted.

    >>> target_shares({"qa": 30, "code": 10}, MixConfig())
    {'code': 0.25, 'qa': 0.75}
    >>> target_shares({"qa": 30, "code": 10}, MixConfig(shares={"qa": 0.5, "math": 0.5}))
    {'code': 0.0, 'math': 0.5, 'qa': 0.5}
    """
    categories = sorted(set(available) | set(cfg.shares or {}))
    if cfg.shares is not None:
        base = {c: float(cfg.shares.get(c, 0.0)) for c in categories}
    else:
        n_total = sum(available.values())
        base = {c: (available.get(c, 0) / n_total if n_total else 0.0) for c in categories}
    return apply_temperature(base, cfg.temperature)


def apportion(quotas: dict[str, float], total: int) -> dict[str, int]:
    """Integers summing exactly to `total`, proportional to `quotas` (largest-remainder method).

    Each category gets the floor of its (rescaled) quota; the units left over go to the largest
    fractional remainders, ties broken by category name. All zero quotas give all zeros.

    >>> apportion({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10)
    {'a': 4, 'b': 3, 'c': 3}
    """
    quota_sum = sum(quotas.values())
    if quota_sum <= 0 or total <= 0:
        return {c: 0 for c in quotas}
    scaled = {c: q * total / quota_sum for c, q in quotas.items()}
    counts = {c: math.floor(q + FLOAT_SLACK) for c, q in scaled.items()}
    left = total - sum(counts.values())
    by_remainder = sorted(scaled, key=lambda c: (-(scaled[c] - counts[c]), c))
    for category in by_remainder[:left]:
        counts[category] += 1
    return counts


def row_quotas(
    shares: dict[str, float],
    available: dict[str, int],
    cfg: MixConfig,
    mean_tokens: dict[str, float] | None = None,
) -> tuple[int, dict[str, float]]:
    """(total train rows wanted, real-valued rows wanted per category) before rounding."""
    if cfg.total_tokens is not None:
        if mean_tokens is None:
            raise ValueError("mix.total_tokens needs the mean tokens per category (n_tokens_total)")
        overall = mean_tokens.get("*")
        quotas = {}
        for category, share in shares.items():
            mean = mean_tokens.get(category) or overall
            quotas[category] = share * cfg.total_tokens / mean if share > 0 and mean else 0.0
        return round(sum(quotas.values())), quotas
    total = cfg.total_rows if cfg.total_rows is not None else sum(available.values())
    return total, {c: s * total for c, s in shares.items()}


def target_counts(
    shares: dict[str, float],
    available: dict[str, int],
    cfg: MixConfig,
    mean_tokens: dict[str, float] | None = None,
) -> tuple[int, dict[str, int]]:
    """(total train rows, train rows per category before the upsampling cap), summing exactly.

    `mean_tokens` (token mode only) maps category → mean n_tokens_total of its train-available
    rows, plus "*" → the mean over all of them (used for categories without rows).

    >>> target_counts({"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 9, "b": 9, "c": 9}, MixConfig(total_rows=11))
    (11, {'a': 6, 'b': 3, 'c': 2})
    """
    total, quotas = row_quotas(shares, available, cfg, mean_tokens)
    return total, apportion(quotas, total)


def upsample_cap(n_available: int, max_upsample: float) -> int:
    """Most train rows a category of `n_available` rows can fill: floor(max_upsample * n).

    >>> upsample_cap(10, 1.15), upsample_cap(7, 3.0)
    (11, 21)
    """
    return math.floor(max_upsample * n_available + FLOAT_SLACK)


@dataclass(frozen=True)
class FittedCounts:
    """Train rows per category after the short-category policy, and what the policy did."""

    counts: dict[str, int]
    total: int  # sum of counts
    short: list[str]  # categories whose target exceeded their upsampling cap (sorted)
    outcome: str  # "held" (no category short), "scaled_down", "filled", or "short" (fill could not)


def short_category_error(category: str, n_available: int, cap: int, needed: int, share: float,
                         total: int, cfg: MixConfig) -> ValueError:
    return ValueError(
        f"mix: category {category!r} cannot fill its share: it has {n_available} train rows, so at most "
        f"{cap} under max_upsample {cfg.max_upsample:g}, and its share {share:.4g} of {total} train rows needs "
        f"{needed} rows. mix.short_category is 'fail'; set it to scale_down (shrink the whole mixture so "
        "every share holds) or fill (let the other categories fill the gap), lower the share, or raise "
        "max_upsample")


def fit_counts(quotas: dict[str, float], total: int, caps: dict[str, int], policy: str) -> FittedCounts:
    """Integer train rows per category from real-valued `quotas` (summing to about `total`), each at
    most its cap, by the short-category `policy` (`fail` is checked by the caller, which can name
    the rows; here it behaves like no policy: counts are capped and the rest is shortfall).

    scale_down: the largest total T' <= total whose apportioned counts all fit their caps
    (starting from total * min(cap/quota), stepping down while rounding overshoots a cap).
    fill: categories that overshoot are pinned at their caps and the rest of the total is
    apportioned among the others by their quotas, repeated until nothing overshoots.

    >>> fit_counts({"qa": 50.0, "code": 50.0}, 100, {"qa": 300, "code": 25}, "scale_down").counts
    {'qa': 25, 'code': 25}
    >>> fit_counts({"qa": 50.0, "code": 50.0}, 100, {"qa": 300, "code": 25}, "fill").counts
    {'qa': 75, 'code': 25}
    """
    counts = apportion(quotas, total)
    short = sorted(c for c in quotas if counts[c] > caps[c])
    if not short:
        return FittedCounts(counts, total, [], "held")
    if policy == "scale_down":
        quota_sum = sum(quotas.values())
        factor = min(caps[c] * quota_sum / (quotas[c] * total) for c in quotas if quotas[c] > 0)
        scaled_total = min(total, math.floor(total * factor + FLOAT_SLACK))
        while scaled_total > 0:
            counts = apportion(quotas, scaled_total)
            if all(counts[c] <= caps[c] for c in quotas):
                break
            scaled_total -= 1
        else:
            counts = {c: 0 for c in quotas}
        return FittedCounts(counts, scaled_total, short, "scaled_down")
    if policy == "fill":
        pinned: set[str] = set()
        while True:
            open_quotas = {c: q for c, q in quotas.items() if c not in pinned}
            left = total - sum(caps[c] for c in pinned)
            if not any(q > 0 for q in open_quotas.values()):
                counts = {c: caps[c] if c in pinned else 0 for c in quotas}
                break
            counts = {**apportion(open_quotas, left), **{c: caps[c] for c in pinned}}
            over = {c for c in open_quotas if counts[c] > caps[c]}
            if not over:
                break
            pinned |= over
        n_rows = sum(counts.values())
        return FittedCounts(counts, n_rows, short, "filled" if n_rows == total else "short")
    counts = {c: min(n, caps[c]) for c, n in counts.items()}
    return FittedCounts(counts, sum(counts.values()), short, "short")


# --------------------------------------------------------------------------------- sampling --
def sample_copies(n_rows: int, target_rows: int, seed: int, category: str) -> list[int]:
    """Copies of each of `n_rows` rows (in example_id order) so that they sum to `target_rows`.

    Every row gets target // n copies; target % n rows, drawn without replacement by an rng
    seeded from (seed, category), get one more.

    >>> sample_copies(4, 9, 0, "qa").count(3), sum(sample_copies(4, 9, 0, "qa"))
    (1, 9)
    """
    if n_rows == 0:
        return []
    full, remainder = divmod(target_rows, n_rows)
    copies = np.full(n_rows, full, dtype=np.int64)
    if remainder:
        rng = np.random.default_rng(derived_seed("mix-sample", seed, category))
        copies[rng.choice(n_rows, size=remainder, replace=False)] += 1
    return copies.tolist()


def shard_name(split: str, category: str, part: int) -> str:
    return f"shards/{split}/{category}-{part:05d}.parquet"


def _with_split(table: pa.Table, split: str) -> pa.Table:
    if SPLIT_COLUMN in table.column_names:  # re-mixing mixed shards: the new split wins
        table = table.drop_columns([SPLIT_COLUMN])
    return table.append_column(SPLIT_COLUMN, pa.array([split] * table.num_rows, pa.string()))


def _sum_tokens(table: pa.Table) -> int | None:
    if TOKENS_COLUMN not in table.column_names:
        return None
    return int(pc.sum(table[TOKENS_COLUMN]).as_py() or 0)


# ------------------------------------------------------------------------------- validation --
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


# ---------------------------------------------------------------------------------- spooling --
# Shards hold rows in sampled (shuffled) order, which is unrelated to input order, and upsampled
# rows appear several times. Rather than hold the input in memory to `take` from it, mix routes
# every input part's rows to spool files (Arrow IPC) of at most SPOOL_ROWS output rows each,
# then reads one spool file at a time, puts its rows in shard order and cuts its shards. No
# library does this two-step external gather for Arrow tables, so it is written here.
SPOOL_ROWS = PART_ROWS
ORDER_COLUMN = "__mix_output_position"


@dataclass(frozen=True)
class SpoolGroup:
    """Consecutive shards of one (split, category) block, spooled to one file."""

    index: int
    split: str
    category: str
    start: int  # first output position (over all blocks, in shard order)
    stop: int
    first_shard: int  # shard number, within the block, of the group's first shard

    @property
    def file_name(self) -> str:
        return f"spool-{self.index:05d}.arrow"


def _spool_groups(blocks: list[tuple[str, str, list[int]]], shard_rows: int) -> list[SpoolGroup]:
    """Cut every block into groups of whole shards holding at most max(SPOOL_ROWS, shard_rows) rows."""
    shards_per_group = max(1, SPOOL_ROWS // shard_rows)
    groups, start = [], 0
    for split, category, rows in blocks:
        n_shards = math.ceil(len(rows) / shard_rows)
        for first in range(0, n_shards, shards_per_group):
            n_rows = min(len(rows), (first + shards_per_group) * shard_rows) - first * shard_rows
            groups.append(SpoolGroup(len(groups), split, category, start, start + n_rows, first))
            start += n_rows
    return groups


def _spool(tables: Callable[[list[str] | None], Iterable[pa.Table]], blocks: list[tuple[str, str, list[int]]],
           groups: list[SpoolGroup], spool_dir: Path) -> None:
    """One pass over the input parts: every output row's input row, with its output position,
    appended to its group's spool file."""
    shutil.rmtree(spool_dir, ignore_errors=True)
    spool_dir.mkdir(parents=True)
    sources = np.fromiter((i for _, _, rows in blocks for i in rows), dtype=np.int64)
    by_source = np.argsort(sources, kind="stable")  # output positions, by input row
    sorted_sources = sources[by_source]
    group_starts = np.array([g.start for g in groups], dtype=np.int64)
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    try:
        offset = 0
        for table in tables(None):
            lo, hi = np.searchsorted(sorted_sources, [offset, offset + table.num_rows])
            positions = by_source[lo:hi]  # the output positions this part feeds
            group_ids = np.searchsorted(group_starts, positions, side="right") - 1
            order = np.argsort(group_ids, kind="stable")
            positions, group_ids = positions[order], group_ids[order]
            rows = table.take(pa.array(sources[positions] - offset)).append_column(
                ORDER_COLUMN, pa.array(positions, pa.int64()))
            bounds = np.flatnonzero(np.diff(group_ids)) + 1
            for start, stop in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(group_ids)]))):
                if stop > start:
                    group = int(group_ids[start])
                    if group not in writers:
                        writers[group] = pa.ipc.new_file(spool_dir / groups[group].file_name, rows.schema)
                    writers[group].write_table(rows.slice(int(start), int(stop - start)))
            offset += table.num_rows
    finally:
        for writer in writers.values():
            writer.close()


def _cut(group: SpoolGroup, spool_dir: Path, shard_rows: int) -> Iterator[tuple[str, pa.Table]]:
    """The group's shards, named and in shard order, from its spool file."""
    with pa.OSFile(str(spool_dir / group.file_name)) as source:
        spooled = pa.ipc.open_file(source).read_all()
    table = _with_split(spooled.take(pc.sort_indices(spooled[ORDER_COLUMN])).drop_columns([ORDER_COLUMN]), group.split)
    del spooled
    for k, start in enumerate(range(0, table.num_rows, shard_rows)):
        yield shard_name(group.split, group.category, group.first_shard + k), table.slice(start, shard_rows)


# ------------------------------------------------------------------------------------- main --
def _plan_columns(schema: pa.Schema, tables: Callable[[list[str] | None], Iterable[pa.Table]]) -> dict[str, list]:
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
    return plan


def data_hash(blocks: list[tuple[str, str, list[int]]], ids: list[str], hashes: list[str | None]) -> str:
    """sha256 of the output rows in shard order: split and category of each block, then each row's
    example_id, copy number and content_hash. Shard boundaries (`shard_rows`) do not enter it, so
    two mixes that differ only in how the same rows are cut into files hash the same.

    >>> data_hash([("train", "qa", [0, 0])], ["a"], ["h"]) == data_hash([("train", "qa", [0])], ["a"], ["h"])
    False
    """
    digest = hashlib.sha256()
    for split, category, rows in blocks:
        digest.update(f"block\x1f{split}\x1f{category}\n".encode())
        seen: Counter[int] = Counter()
        for i in rows:
            digest.update(f"{ids[i]}\x1f{seen[i]}\x1f{hashes[i] or ''}\n".encode())
            seen[i] += 1
    return digest.hexdigest()


def mix_parts(schema: pa.Schema, tables: Callable[[list[str] | None], Iterable[pa.Table]], cfg: MixConfig,
              spool_dir: Path) -> PartedOutput:
    """Eval split, target shares and counts, deterministic sampling, shards, one decision per row.

    `tables(columns)` yields the input's records parts in order (only `columns`, or all columns
    for None); `schema` is theirs. The plan needs only ids, categories, hashes, tokens, scores and
    prompt groups, read first. The shards are then written in two streaming steps (`_spool`,
    `_cut`), so memory holds one input part or one spool file of rows, never the whole input."""
    names = schema.names
    plan = _plan_columns(schema, tables)
    ids, categories, hashes, tokens, scores, prompt_groups = (
        plan["ids"], plan["categories"], plan["hashes"], plan["tokens"], plan["scores"], plan["groups"])
    del plan
    n_in = len(ids)
    _check_rows(ids, categories, tokens, cfg, names)

    # Eval by prompt group; then canonical order (by example_id) makes every step below
    # independent of the input order.
    is_eval = eval_assignment(prompt_groups, cfg.eval_fraction, cfg.seed)
    order = sorted(range(n_in), key=lambda i: ids[i])
    train_rows: dict[str, list[int]] = {}
    eval_rows: dict[str, list[int]] = {}
    for i in order:
        (eval_rows if is_eval[i] else train_rows).setdefault(categories[i], []).append(i)

    in_data = Counter(categories)
    _check_shares_exist(cfg, in_data)
    available = {c: len(train_rows.get(c, [])) for c in sorted(in_data)}
    shares = target_shares(available, cfg)
    mean_tokens = None
    if cfg.total_tokens is not None:
        all_train = [i for rows in train_rows.values() for i in rows]
        mean_tokens = {c: sum(tokens[i] for i in rows) / len(rows) for c, rows in train_rows.items()}
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
    counts = fitted.counts

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

    shard_stats: list[dict[str, Any]] = []
    no_rows, no_decisions = schema.empty_table(), DecisionLog().to_table()
    # The output rows in shard order: (split, category) blocks, each in its sampled order.
    blocks = [(split, category, by_category[category])
              for split, by_category in ((TRAIN, train_order), (EVAL, eval_rows)) for category in sorted(by_category)]

    def shards() -> Iterator[StageOutput]:
        """One part per spool file: its shards are written before the next is read."""
        groups = _spool_groups(blocks, cfg.shard_rows)
        _spool(tables, blocks, groups, spool_dir)
        for group in groups:
            extra = dict(_cut(group, spool_dir, cfg.shard_rows))
            for name, part in extra.items():
                shard_stats.append({"name": name, "split": group.split, "category": group.category,
                                    "n_rows": part.num_rows, "n_tokens": _sum_tokens(part)})
            yield StageOutput(records=no_rows, decisions=no_decisions, extra=extra)
        yield StageOutput(records=no_rows, decisions=decisions.to_table())

    not_in_shares = sorted(c for c in in_data if cfg.shares is not None and c not in cfg.shares)
    decisions = DecisionLog()
    for i in order:
        in_group = {"prompt_group": prompt_groups[i]}
        if is_eval[i]:
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

    n_train = len(mixture)
    train_tokens = None if tokens is None else sum(tokens[i] or 0 for i in mixture)
    share_unit = "tokens" if cfg.total_tokens is not None else "rows"
    mixture_stats = []
    for category in shares:
        rows = train_rows.get(category, [])
        n_rows = sum(copies[i] for i in rows)
        n_tokens = None if tokens is None else sum((tokens[i] or 0) * copies[i] for i in rows)
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
            "n_unique": sum(1 for i in rows if copies[i] > 0),
            "n_eval": len(eval_rows.get(category, [])),
            "n_tokens": n_tokens,
            "n_target": wanted[category],  # train rows the recipe asked for, before the policy
            "n_cap": caps[category],  # most rows max_upsample allows
            "n_shortfall": max(0, wanted[category] - caps[category]),  # rows the category could not supply
            "outcome": _outcome(category, cfg, fitted, wanted, counts, not_in_shares),
        })
    n_eval = sum(len(rows) for rows in eval_rows.values())
    stats = {
        "n_in": n_in,
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
        "data_hash": data_hash(blocks, ids, hashes),
        "shards": shard_stats,
        "mixture": mixture_stats,
    }
    return PartedOutput(shards(), lambda: stats)


def _check_shares_exist(cfg: MixConfig, in_data: Counter) -> None:
    """A positive share for a category without a single input row is an error (a typo, or a
    category an earlier stage removed entirely), naming the categories that exist."""
    absent = sorted(c for c, share in (cfg.shares or {}).items() if share > 0 and c not in in_data)
    if absent:
        present = ", ".join(f"{c} ({n} rows)" for c, n in sorted(in_data.items())) or "none"
        raise ValueError(f"mix.shares names {', '.join(repr(c) for c in absent)}, which has no rows in the "
                         f"mix input; the categories in the input are: {present}")


def _outcome(category: str, cfg: MixConfig, fitted: FittedCounts, wanted: dict[str, int],
             counts: dict[str, int], not_in_shares: list[str]) -> str:
    """What happened to one category: not_in_shares, zero_share, short (limited by max_upsample),
    scaled_down (held its share in a smaller mixture), filled (took rows of a short category),
    or held (got what the recipe asked)."""
    if category in not_in_shares:
        return "not_in_shares"
    if cfg.shares is not None and cfg.shares.get(category, 0.0) == 0:
        return "zero_share"
    if category in fitted.short:
        return "short"
    if fitted.outcome == "scaled_down":
        return "scaled_down"
    return "filled" if counts[category] > wanted[category] else "held"


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
