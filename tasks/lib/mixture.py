"""Mixture arithmetic: the prompt-grouped eval split, target shares and row counts, the
short-category policy, and each row's copies. Every draw is seeded from a hash of the recipe's
seed and names, never from input order. tasks/mix.py is the stage that runs it.

- **Eval first, by prompt.** A row's group is a hash of its normalized prompt: the user turns'
  text units (tasks/lib/text_units.py: lowercase words, one unit per character in scripts without
  spaces), so case, punctuation and whitespace do not separate copies of one question. A group
  is eval when sha256(seed, group) mapped to [0, 1) is below `eval_fraction`, so every row of a
  group lands in the same split: the same prompt with two answers, or copies of a prompt that
  differ only in case, punctuation or whitespace, are never in both. (Prompts reworded by a few
  words are different groups; near-dedup, before mix, is what removes those near copies.) The
  verdict depends on the prompt alone, not on example_id (which is hash(source, row position)),
  so inserting, removing or reordering rows of a source moves no other row between splits.
  System prompts are left out: a system prompt shared by many rows would otherwise separate
  copies of one user question (the stricter grouping is the safe one for leakage). A prompt with
  no text units at all (only emoji or punctuation) is grouped by the row's content_hash instead.
  (datasets' `train_test_split` splits by row; grouping by prompt is what keeps such an eval
  honest.)
- **Target shares.** `mix.shares` when given; categories in the data but not in `shares` get 0.
  Without `shares`, each category's share is its number of train-available rows. `temperature` T
  then reshapes either kind of share: p_c ∝ p_c^(1/T), renormalized (T>1 flattens towards
  uniform, T<1 sharpens; zero shares stay zero).
- **Target rows.** `total_rows` as given; with `total_tokens` the shares are token shares:
  category c wants share_c * total_tokens / mean_tokens_c rows (mean over its train-available
  rows; a category without rows uses the mean of all train-available rows) and the total is the
  rounded sum of those; by default the total is the number of train-available rows (all
  categories, also those whose share is 0). Real-valued quotas become integers by the
  largest-remainder method (ties by category name), so the counts sum exactly to the total.
- **Short categories (`short_category`).** A category gets at most floor(max_upsample *
  n_available) rows. When its target is above that, `scale_down` (default) shrinks the whole
  mixture to the largest total at which every category fits, so every share holds (to rounding,
  at most 1 / total rows; in token mode also the token counts of the rows drawn); a smaller
  train set with the recipe's proportions is the least surprising outcome. `fail` stops with an
  error naming the category, its rows and the rows needed. `fill` keeps the total and hands the
  gap to the other categories in proportion to their shares (their realized shares then differ
  from the targets).
- **Sampling.** Per category, rows sorted by example_id; a target t over n rows gives every row
  t // n copies, and t % n further rows are drawn without replacement by
  numpy.random.default_rng(sha256(seed, category)). Sorting first makes the draw independent of
  input order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from sftflow.tasks.core.recipe_data import MixConfig
from sftflow.tasks.lib.text_units import text_units

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

