"""Recipe sections of the train and evaluate stages: the model, LoRA, training and evaluation settings."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from sftflow.tasks.core.recipe_section import Section


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
