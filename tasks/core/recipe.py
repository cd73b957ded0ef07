"""Recipe: the YAML that drives a run, validated by pydantic.

Every model is frozen and forbids unknown keys, so a typo in a recipe is an error that names the
field, never a silently ignored setting. A recipe with only `name` and `sources` is valid: every
other section has the defaults documented on its fields (docs/recipes.md lists them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sftflow.tasks.lib.categories import AUTO, CATEGORIES
from sftflow.tasks.core.hashing import canonical_json, short_hash
from sftflow.tasks.core import dedup_lsh

Role = Literal["system", "user", "assistant", "tool"]
SLUG = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical(self) -> dict[str, Any]:
        """The JSON form that enters cache keys."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------- sources --
class SourceConfig(Section):
    """One input dataset: a local file/folder (`path`) or a Hugging Face dataset id (`hf_dataset`)."""

    name: str = Field(description="Unique slug; part of every example_id from this source.")
    format: Literal["alpaca", "sharegpt", "openai"] = Field(description="Row layout of the source.")
    path: str | None = Field(
        None,
        description="File (.json array, .jsonl, .parquet) or a folder written by "
        "datasets.save_to_disk; relative to the project root.",
    )
    hf_dataset: str | None = Field(None, description="Hub dataset id for datasets.load_dataset.")
    hf_split: str = Field("train", description="Split to read from a dataset id or DatasetDict folder.")
    hf_revision: str | None = Field(
        None, description="Pinned hub revision; without it a changed hub dataset is not detected."
    )
    category: str = Field("auto", description="Fixed mixing category, or `auto` for the rule-based classifier.")
    origin: Literal["human", "synthetic", "mixed"] | None = Field(None, description="Who wrote the data.")
    license: str | None = Field(None, description="License of the source, recorded in the catalog.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Field mapping from the format's names to this source's names, e.g. "
        "{instruction: prompt, output: completion} or {conversations: turns, from: speaker}.",
    )
    role_map: dict[str, Role] = Field(
        default_factory=dict, description="Extra speaker names mapped to roles (added to the built-in map)."
    )
    tool_turns: Literal["keep", "quarantine"] = Field(
        "keep",
        description="ShareGPT function_call/observation turns: keep them as assistant/tool turns, "
        "or quarantine the whole row with reason tool_turn_quarantined.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"source name {value!r} must be a lowercase slug (a-z, 0-9, _ and -)")
        return value

    @field_validator("category")
    @classmethod
    def _category_slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"category {value!r} must be a lowercase slug or 'auto'")
        return value

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError(f"source {self.name!r}: give exactly one of `path` or `hf_dataset`")
        return self


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
    backend: Literal["numpy", "datasketch"] = Field(
        "numpy",
        description="`numpy`: datasketch's hash and permutations applied to many rows per numpy call, "
        "LSH bands bucketed by sorting; `datasketch`: MinHash.bulk + MinHashLSH, the reference. "
        "Both give identical decisions.",
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


# ---------------------------------------------------------------------------------- filters --
class LengthConfig(Section):
    """Token-count limits."""

    min_response_tokens: int = Field(10, ge=0, description="Drop rows whose assistant turns hold fewer tokens.")
    max_total_tokens: int = Field(2048, ge=1, description="Drop rows longer than this in total.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer that counts tokens: a hub id or local folder. Default: the train "
        "model's tokenizer; for builtin models (whose tokenizer is trained after mixing) the "
        "packaged MiniLM WordPiece tokenizer (`builtin:minilm`).",
    )
    tokenizer_revision: str | None = Field(
        None,
        description="Hub revision (commit hash, tag or branch) the `tokenizer` hub id is loaded at; "
        "part of the filter's cache key. Default: `train.revision` when the tokenizer is the train "
        "model's. Unpinned, a tokenizer changed on the hub is not detected; a local folder is keyed "
        "by its files' bytes instead.",
    )


class ToxicityConfig(Section):
    """Toxicity scored per role; drops depend on `roles`."""

    enabled: bool = Field(True, description="Score toxicity at all.")
    backend: Literal["profanity-check", "detoxify"] = Field(
        "profanity-check",
        description="profanity-check: the linear model shipped in alt-profanity-check (offline); "
        "detoxify: a Detoxify hub model or local checkpoint.",
    )
    threshold: float | None = Field(
        None, ge=0, le=1,
        description="Toxicity probability at which a judged window drops the row. Default: 0.9 for "
        "profanity-check with sentence windows, 0.5 otherwise. profanity-check is a linear "
        "bag-of-words model: on one short sentence its probability follows a single word, so poem "
        "lines and code lines of the demo samples scored 0.5-0.86 alone while insults scored "
        "0.99-1.0 (docs/data-decisions.md).",
    )
    roles: list[Role] = Field(
        default_factory=lambda: ["assistant"],
        description="Roles whose turns can drop the row. User and assistant turns are always "
        "scored and recorded; a toxic prompt answered safely is kept unless `user` is listed.",
    )
    model: str = Field(
        "original", description="detoxify: model type (original, unbiased, multilingual) or a checkpoint file."
    )
    checkpoint_sha256: str | None = Field(
        None,
        description="detoxify: sha256 (64 hex digits) of the checkpoint file given as `model`; required "
        "for a checkpoint file, because detoxify unpickles it (which can run code in it). The file "
        "is hashed and compared before it is loaded.",
    )
    huggingface_config_path: str | None = Field(
        None, description="detoxify offline: local folder with the transformer config and tokenizer."
    )
    batch_size: int = Field(32, ge=1, description="Texts per detoxify forward pass, at most.")
    max_batch_tokens: int = Field(
        2048, ge=1,
        description="detoxify: padded token positions per forward pass, at most (texts are batched by "
        "token count, longest first, so long texts go in smaller batches and little is padded). "
        "A text longer than this is scored alone. Raise it on a GPU, where larger batches pay.",
    )
    window: Literal["sentence", "turn"] = Field(
        "sentence",
        description="What one score covers; a turn's toxicity is the max over its windows. sentence: "
        "each sentence (cut at . ! ? and line breaks), so one insult in a long answer is not "
        "diluted by the rest; turn: the whole turn. Either way a window is cut again, with "
        "half-window overlap, where the backend stops reading it whole: profanity-check every 32 "
        "words, detoxify at the model's token limit (nothing is truncated). The top window's index "
        "and an excerpt are recorded in the decision detail.",
    )
    judged_scripts: list[str] | None = Field(
        None,
        description="Scripts the model can judge (Unicode script names: Latin, Cyrillic, Greek, Han, "
        "...). A window whose letters are mostly in other scripts is not scored but recorded as "
        "unjudged (decision detail `toxicity_unjudged`, stage stats, data card); such a row is kept "
        "unless another check drops it. Default: Latin for profanity-check and detoxify "
        "original/unbiased or a checkpoint file (English models), Latin and Cyrillic for detoxify "
        "multilingual (en, fr, es, it, pt, tr, ru), the documented choice for non-English data.",
        min_length=1,
    )

    @property
    def effective_threshold(self) -> float:
        """`threshold`, or its default for this backend and window."""
        if self.threshold is not None:
            return self.threshold
        return 0.9 if self.backend == "profanity-check" and self.window == "sentence" else 0.5

    @field_validator("checkpoint_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_HEX.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a sha256: give the 64 hex digits that `sha256sum FILE` prints"
            )
        return value.lower() if value is not None else None

    @field_validator("judged_scripts")
    @classmethod
    def _script_names(cls, value: list[str] | None) -> list[str] | None:
        # Script names as tasks/lib/toxicity.py derives them from Unicode names: "latin" -> "Latin".
        return None if value is None else sorted({name.strip().title() for name in value})


class EvalSetConfig(Section):
    """A benchmark whose items must not appear in training data."""

    name: str = Field(description="Name recorded with each hit.")
    path: str = Field(
        description="JSONL/JSON/Parquet with a `text` field, or any of the three chat formats; decisions "
        "name a matched item as `path:line`."
    )
    format: Literal["text", "alpaca", "sharegpt", "openai"] = Field("text", description="Row layout of the file.")


class DecontaminateConfig(Section):
    """Eval-set decontamination: unit n-gram overlap, and whole-text matching of short eval prompts."""

    eval_sets: list[EvalSetConfig] = Field(default_factory=list, description="Eval sets to check against.")
    ngram: int = Field(
        13,
        ge=3,
        description="n-gram length in text units (words; one unit per character in Chinese, Japanese, "
        "Thai and other scripts written without spaces); one shared n-gram marks a row contaminated.",
    )
    min_item_units: int = Field(
        3,
        ge=1,
        description="Eval prompts shorter than `ngram` units are matched whole (their unit sequence, "
        "anywhere inside a user or assistant turn) when they have at least this many units; shorter "
        "ones are not used (counted as `items_without_keys`). Set it to `ngram` to match n-grams only.",
    )
    max_ngram_item_fraction: float = Field(
        0.1,
        gt=0,
        le=1,
        description="An n-gram (or short prompt) found in more than this share of an eval set's distinct "
        "items is template text (a shared instruction line) and is not used. A key of one item is "
        "always used; 1.0 with `max_ngram_items: null` uses every key.",
    )
    max_ngram_items: int | None = Field(
        50,
        ge=1,
        description="Also not used: a key found in more than this many distinct items of one eval set "
        "(template lines of large sets, e.g. a per-subject preamble); null for no count limit.",
    )


class FilterConfig(Section):
    """Length, toxicity and contamination filters, applied in that order; the first failure is the reason."""

    length: LengthConfig = Field(default_factory=LengthConfig)
    toxicity: ToxicityConfig = Field(default_factory=ToxicityConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)


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


# ------------------------------------------------------------------------------- train/eval --
class TinyModelConfig(Section):
    """Shape of `builtin:tiny-llama`, the offline model built from a config (no download)."""

    hidden_size: int = Field(128, ge=8, description="Model width (small: it trains on two CPU cores).")
    num_hidden_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_attention_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide).")
    intermediate_size: int = Field(352, ge=8, description="MLP width.")
    vocab_size: int = Field(2048, ge=300, description="Byte-level BPE vocabulary trained on the train split.")
    max_position_embeddings: int = Field(2048, ge=64, description="Longest sequence the model accepts.")


class LoraSettings(Section):
    """LoRA adapter settings (peft), used when method is lora."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (lora_alpha).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )
    train_template_tokens: bool = Field(
        True,
        description="Also train the embedding rows (and the output rows of an untied lm_head) of the "
        "special tokens the chat template uses, e.g. <|im_start|> and <|im_end|> (PEFT "
        "trainable_token_indices): all-linear LoRA freezes embeddings, so a template new to the base "
        "model would keep untrained end-of-turn rows and the model might never learn to stop.",
    )


class TrainConfig(Section):
    """Training with TRL's SFTTrainer on the mixed train shards (assistant-only loss)."""

    model: str = Field("builtin:tiny-llama", description="Hub id, local folder, or builtin:tiny-llama.")
    revision: str | None = Field(None, description="Pinned hub revision of the model.")
    trust_remote_code: bool = Field(
        False, description="Allow the model's own code; refused unless `revision` pins it."
    )
    method: Literal["full", "lora"] = Field("full", description="Full fine-tuning or LoRA adapters.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    chat_template: str | None = Field(
        None,
        description="Training chat template: `chatml` (built in) or a .jinja file with {% generation %} "
        "markers. When set it is always used, also over a tokenizer template that has markers (the "
        "template origin then notes the override); when unset, the tokenizer's own template is used if "
        "it has {% generation %} markers, and a model whose template lacks them is refused.",
    )
    max_length: int = Field(512, ge=16, description="Longest training sequence in tokens (longer rows are truncated).")
    min_content_supervised_share: float = Field(
        0.95, ge=0, le=1,
        description="Mask audit: every assistant turn must have at least this share of its content tokens "
        "supervised (the template's {% generation %} block covers the answer, not only its end-of-turn "
        "token); otherwise the train stage stops before launching. The stage also stops when no turn's "
        "content can be located to check (a slow tokenizer, a template that rewrites content); 0 turns "
        "the check off.",
    )
    packing: bool | Literal["auto"] = Field(
        "auto", description="BFD packing (padding-free); auto packs when the mean row is under half of max_length."
    )
    learning_rate: float | None = Field(None, gt=0, description="Default 2e-5 (full) or 2e-4 (lora).")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    num_train_epochs: float = Field(2.0, gt=0, description="Epochs when max_steps is not set.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides num_train_epochs.")
    per_device_train_batch_size: int = Field(8, ge=1, description="Sequences per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed of initialization and data order.")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 where the hardware supports it.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when installed, sdpa otherwise."
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint interval in steps (resume point).")
    logging_steps: int = Field(5, ge=1, description="Log interval in steps.")
    num_processes: int = Field(1, ge=1, description="Processes for accelerate launch (GPUs).")
    accelerate_config: str | None = Field(
        None, description="An accelerate config file (`accelerate config`: several GPUs or machines, FSDP, "
        "DeepSpeed); replaces num_processes and the launcher's defaults. Its bytes enter the train key. "
        "See docs/scaling.md.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @model_validator(mode="after")
    def _remote_code_needs_pin(self) -> "TrainConfig":
        if self.trust_remote_code and not re.fullmatch(r"[0-9a-f]{40}", self.revision or ""):
            raise ValueError(
                "train.trust_remote_code runs code from the model repository: pin it with "
                "train.revision set to a full 40-character commit hash (not a branch) or turn it off"
            )
        return self


class JudgeConfig(Section):
    """Optional LLM judge through an OpenAI-compatible endpoint (off by default)."""

    enabled: bool = Field(False, description="Ask the judge to grade generations.")
    base_url: str | None = Field(None, description="Endpoint, e.g. http://localhost:8000/v1.")
    model: str | None = Field(None, description="Judge model name at the endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key (never logged).")
    timeout_seconds: float = Field(30.0, gt=0, description="Per-request timeout.")


class EvalConfig(Section):
    """Evaluation of the tuned model against its base."""

    general_text: str | None = Field(None, description="JSONL of {text} for the perplexity (forgetting) check.")
    regression_tolerance: float = Field(
        0.05, ge=0,
        description="The gate trips when the tuned model's general perplexity, or its held-out perplexity "
        "(exp of the held-out loss), exceeds the base model's by more than this fraction.",
    )
    on_regression: Literal["fail", "report"] = Field(
        "fail",
        description="`fail`: a tripped gate ends the run failed (the model artifact is kept and marked "
        "gated in the catalog); `report`: the run completes and the report says REGRESSED.",
    )
    prompts: str | None = Field(None, description="JSONL of {prompt} for saved generations (default: built-in).")
    max_new_tokens: int = Field(
        256, ge=1,
        description="Greedy generation length bound; an answer that reaches it without an end-of-turn "
        "token counts as truncated and fails every instruction check.",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    max_general_texts: int = Field(200, ge=1, description="Texts of general_text used.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


# ----------------------------------------------------------------------------------- recipe --
class RunnerConfig(Section):
    """Where per-part work runs: normalize and filter compute each records part (<= 50,000 rows)
    of their input as its own task. Not part of any cache key: artifacts are byte-identical on
    every runner."""

    kind: Literal["sequential", "processes", "dask"] = Field(
        "sequential",
        description="`sequential`: in the stage's process; `processes`: Prefect's ProcessPoolTaskRunner; "
        "`dask`: prefect-dask's DaskTaskRunner (install the `dask` extra).",
    )
    workers: int = Field(2, ge=1, description="Processes for `processes`, and for `dask` without an address (a LocalCluster).")
    address: str | None = Field(
        None, description="Dask scheduler address (e.g. tcp://10.0.0.5:8786); the warehouse must be on a "
        "filesystem the workers share.")


class Recipe(Section):
    """A whole run: where the data comes from and how each stage treats it."""

    name: str = Field(description="Recipe name, recorded in runs.recipe_name.")
    description: str = Field("", description="Free text for people.")
    sources: list[SourceConfig] = Field(min_length=1, description="Input datasets (see sources[]).")
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources

    @model_validator(mode="after")
    def _mix_shares_name_producible_categories(self) -> "Recipe":
        """A `mix.shares` name no source can produce is a typo: refuse it before anything runs.

        Every source's category is known here: a fixed slug, or `auto`, whose labels are the closed
        set of tasks/lib/categories.py. (Whether such a category ends up with rows is checked at mix.)"""
        if not self.mix.shares:
            return self
        producible = {s.category for s in self.sources if s.category != AUTO}
        if any(s.category == AUTO for s in self.sources):
            producible |= set(CATEGORIES)
        unknown = sorted(set(self.mix.shares) - producible)
        if unknown:
            raise ValueError(
                f"mix.shares names {', '.join(repr(c) for c in unknown)}, which no source can produce; the "
                f"sources' categories are {', '.join(sorted(producible))} (a fixed `category`, or `auto`: "
                f"{', '.join(CATEGORIES)})")
        return self

    @model_validator(mode="after")
    def _source_priority_names_sources(self) -> "Recipe":
        """`dedup.source_priority` names sources of this recipe: a typo would silently rank nothing."""
        unknown = sorted(set(self.dedup.source_priority) - {s.name for s in self.sources})
        if unknown:
            raise ValueError(
                f"dedup.source_priority names {', '.join(repr(n) for n in unknown)}, which is not a source of "
                f"this recipe; the sources are {', '.join(s.name for s in self.sources)}")
        return self

    def recipe_hash(self) -> str:
        return short_hash(self.canonical())


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the message says where and what to do."""


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML.

    >>> d = {"filters": {"toxicity": {"threshold": 0.5}}, "sources": [{"name": "a"}]}
    >>> apply_override(d, "filters.toxicity.threshold=0.3"); d["filters"]["toxicity"]["threshold"]
    0.3
    >>> apply_override(d, "sources.0.name=b"); d["sources"][0]["name"]
    'b'
    """
    if "=" not in assignment:
        raise RecipeError(f"override {assignment!r} must look like dotted.key=value")
    dotted, raw_value = assignment.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"override {assignment!r} has an empty key")
    value = yaml.safe_load(raw_value) if raw_value.strip() else None
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        node = _child(node, key, dotted, create=True)
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {dotted!r}: cannot set a key inside a {type(node).__name__}")


def _index(node: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise RecipeError(f"override {dotted!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _child(node: Any, key: str, dotted: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, dotted)]
    if isinstance(node, dict):
        if key not in node or node[key] is None:
            node[key] = {}
        return node[key]
    raise RecipeError(f"override {dotted!r}: {key!r} is inside a {type(node).__name__}, not a section")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML, apply `--set` overrides, validate. Errors name the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with at least `name` and `sources`")
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_recipe(data, origin=str(path))


def parse_recipe(data: dict[str, Any], origin: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise RecipeError(f"{origin}: invalid recipe: {problems}") from None


def recipe_canonical_json(recipe: Recipe) -> str:
    return canonical_json(recipe.canonical())
