"""Recipe sections of the data stages normalize, dedup, score and mix (filters: recipe_filters.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sftflow.tasks.core import dedup_lsh
from sftflow.tasks.core.recipe_section import Role, Section


# -------------------------------------------------------------------------------- normalize --
class NormalizeConfig(Section):
    """Unicode NFC, whitespace trim and turn-order validation of every conversation."""

    trim_trailing_turns: bool = Field(
        True,
        description="Trim user/tool turns after the last assistant turn (recorded as "
        "kept_trimmed_trailing_turn); when false such rows are dropped as non_alternating.",
    )
    reject_template_tokens: bool = Field(
        True,
        description="Drop rows whose text holds a chat-template control token such as <|im_end|> "
        "(template_token_in_text): rendered by the chat template it would fake a turn boundary. Turn "
        "off for data that discusses chat templates, and check its masks in the train stage's audit.",
    )


# ------------------------------------------------------------------------------------ dedup --
class NearDedupConfig(Section):
    """MinHash + LSH near-duplicate detection over n-gram shingles of the turns that make the example.

    Shingles are n-grams of `tasks/lib/text_units.py` units: words in scripts written with spaces,
    characters in scripts without (Han, kana, Thai, ...). A row is dropped only as a near
    duplicate of a kept representative whose estimated Jaccard with it reaches the threshold
    (docs/data-decisions.md, Dedup).
    """

    enabled: bool = Field(True, description="Run near-duplicate detection after the exact pass.")
    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard at or above which rows are duplicates.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    roles: list[Role] | Literal["all"] = Field(
        default_factory=lambda: ["user", "assistant", "tool"],
        description="Turns compared: their contents, joined. The default leaves system turns out, so "
        "rows that share one long system prompt or tool schema but ask and answer different things "
        "are not near duplicates; `all` compares the whole conversation. Exact dedup always hashes "
        "the whole normalized conversation.",
    )
    ngram: int = Field(5, ge=1, description="Shingle size in words, for text in scripts written with spaces.")
    ngram_unspaced: int = Field(
        3, ge=1,
        description="Shingle size in characters, for rows whose text units are mostly characters of "
        "scripts written without spaces (Chinese, Japanese, Thai, ...): a character carries less "
        "than a word, and with 5-character shingles one changed character in a 45-character row "
        "already falls below Jaccard 0.8.",
    )
    bands: int | None = Field(
        None, ge=2,
        description="LSH bands b (at least 2). Default: derived with `rows` from threshold and num_perm "
        "(b*r <= num_perm, P(candidate | J = threshold) >= 0.95, fewest candidates below it). Set "
        "both or neither; explicit values whose recall at the threshold, 1-(1-t^r)^b, is below 0.9 "
        "are refused.",
    )
    rows: int | None = Field(None, ge=1, description="LSH rows per band r; see `bands`.")
    min_shingles: int = Field(3, ge=1, description="Rows with fewer shingles skip near-dedup (exact path only).")
    seed: int = Field(1, description="MinHash permutation seed.")
    backend: Literal["rensa", "numpy", "datasketch"] = Field(
        "rensa",
        description="`rensa`: 64-bit shingle hashes computed per batch with numpy, signatures by rensa "
        "(only the b*r values the bands read), and candidate pairs verified by their EXACT shingle "
        "Jaccard, which `threshold` and the decision's score then mean; `numpy`: datasketch's hash "
        "and permutations applied to many rows per numpy call, pairs verified by the MinHash estimate; "
        "`datasketch`: MinHash.bulk + MinHashLSH, the reference, decisions identical to `numpy`.",
    )

    @field_validator("roles")
    @classmethod
    def _some_roles(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("dedup.near.roles is empty: list the roles to compare, or `all`")
        return value

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError(
                "dedup.near: set both `bands` and `rows`, or neither (then both are derived from "
                "the threshold)"
            )
        bands, rows = self.lsh_params
        if bands * rows > self.num_perm:
            raise ValueError(f"dedup.near: bands*rows = {bands * rows} exceeds num_perm = {self.num_perm}")
        recall = self.expected_recall
        if self.bands is not None and recall < dedup_lsh.MIN_RECALL:
            derived = dedup_lsh.derive_bands(self.threshold, self.num_perm)
            raise ValueError(
                f"dedup.near.bands = {bands} and dedup.near.rows = {rows} find only {recall:.0%} of "
                f"pairs at the threshold {self.threshold} (P(candidate | J) = 1-(1-J^r)^b; the "
                f"S-curve midpoint (1/b)^(1/r) is {dedup_lsh.s_curve_midpoint(bands, rows):.2f}); "
                f"at least {dedup_lsh.MIN_RECALL:.0%} is needed. Remove bands and rows to derive "
                f"them ({derived[0]} x {derived[1]} here), or choose ones whose midpoint lies just "
                "below the threshold"
            )
        return self

    @property
    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): the recipe's, or derived from threshold and num_perm."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return dedup_lsh.derive_bands(self.threshold, self.num_perm)

    @property
    def expected_recall(self) -> float:
        """P(candidate | J = threshold): the share of pairs at the threshold LSH lets through."""
        return dedup_lsh.candidate_probability(self.threshold, *self.lsh_params)


class DedupConfig(Section):
    """Exact (content_hash) then near-duplicate removal; survivors by source_priority, prefer, example_id."""

    exact: bool = Field(True, description="Drop rows whose normalized messages hash equal.")
    near: NearDedupConfig = Field(default_factory=NearDedupConfig)
    source_priority: list[str] = Field(
        default_factory=list,
        description="Source names whose rows survive a duplicate group first, in this order; "
        "sources not listed come after them, equal to each other.",
    )
    prefer: Literal["longest_response", "example_id"] = Field(
        "longest_response",
        description="Next survivor rule among rows of equal source priority: `longest_response` keeps "
        "the row with the most assistant text (in text units); `example_id` only the last rule. "
        "Ties always go to the smallest example_id, so the survivor never depends on input order.",
    )

    @field_validator("source_priority")
    @classmethod
    def _unique_sources(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"dedup.source_priority names {repeated} more than once")
        return value


# ------------------------------------------------------------------------------------ score --
class ScoreConfig(Section):
    """Quality scoring; keeps the top fraction of each category."""

    enabled: bool = Field(True, description="Score and cut; when false every row is kept unscored.")
    backend: Literal["embedding-relevance", "reward-model"] = Field(
        "embedding-relevance",
        description="reward-model: any AutoModelForSequenceClassification; embedding-relevance: "
        "cosine of prompt and response embeddings from the packaged MiniLM (an offline proxy, "
        "not a reward model).",
    )
    model: str | None = Field(None, description="reward-model: hub id or local folder.")
    revision: str | None = Field(
        None,
        description="reward-model: hub revision (commit hash, tag or branch) of a hub `model`; part of "
        "the score key. Unpinned, a model changed on the hub is not detected; a local folder is keyed "
        "by its files' bytes instead.",
    )
    keep_top_fraction: float = Field(0.8, gt=0, le=1, description="Share of each group kept (ceil).")
    per_category: bool = Field(True, description="Rank within each category instead of globally.")
    batch_size: int = Field(32, ge=1, description="Pairs per forward pass.")
    max_length_tokens: int = Field(
        512, ge=16,
        description="Tokens the scorer reads per pair. A longer pair loses the start of its prompt "
        "first (the request nearest the answer is kept), the end of its response only when the "
        "response alone does not fit; each decision records the tokens dropped from each side. "
        "embedding-relevance embeds prompt and response separately, each capped at 256.",
    )


# -------------------------------------------------------------------------------------- mix --
class MixConfig(Section):
    """Weighted mixing of categories into Parquet shards, with a held-out eval split."""

    shares: dict[str, float] | None = Field(
        None,
        description="Target share of the final train mixture per category, summing to 1. "
        "Default: the categories' natural sizes (tempered by `temperature`).",
    )
    total_rows: int | None = Field(None, ge=1, description="Train rows to produce (default: rows available).")
    total_tokens: int | None = Field(None, ge=1, description="Train tokens to produce instead of rows.")
    max_upsample: float = Field(
        3.0, ge=1,
        description="A category's train rows are at most max_upsample x its available rows "
        "(whole copies first, then a seeded sample), so one example appears at most ceil(max_upsample) times.",
    )
    temperature: float | None = Field(
        None, gt=0, description="Shares become p_c ∝ share_c^(1/T); T>1 flattens, T<1 sharpens."
    )
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Held-out eval split carved before mixing.")
    seed: int = Field(0, description="Seed of the eval split and of sampling.")
    shard_rows: int = Field(1000, ge=1, description="Rows per Parquet shard.")
    short_category: Literal["scale_down", "fail", "fill"] = Field(
        "scale_down",
        description="When a category cannot fill its share under max_upsample: `scale_down` shrinks the "
        "whole train mixture until every share holds; `fail` stops the mix stage naming the category, its "
        "rows and the rows needed; `fill` keeps the total and lets the other categories fill the gap in "
        "proportion to their shares (realized shares then differ from the targets, and are reported).",
    )

    @model_validator(mode="after")
    def _check(self) -> "MixConfig":
        if self.total_rows is not None and self.total_tokens is not None:
            raise ValueError("mix: give total_rows or total_tokens, not both")
        if self.shares is not None:
            if not self.shares:
                raise ValueError("mix.shares is empty")
            if any(v < 0 for v in self.shares.values()):
                raise ValueError("mix.shares must be non-negative")
            total = sum(self.shares.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"mix.shares must sum to 1 (they sum to {total:.6f})")
        return self
