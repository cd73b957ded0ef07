"""Recipe section of the filter stage: length, toxicity and eval-set decontamination."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from sftflow.tasks.core.recipe_section import Role, Section

SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


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
