"""Training settings: the recipe's train section as trl.SFTConfig keyword arguments, and the
defaults behind its `auto` values.

- Learning rate 2e-5 (full) or 2e-4 (LoRA) unless the recipe sets one.
- Packing `auto` packs (BFD, padding-free) when the mean conversation is under half of
  max_length. Packed (padding-free) conversations stay isolated on sdpa/eager because
  transformers builds the per-conversation mask from the restarting `position_ids` whenever a
  forward runs without a cache; the worker sets `config.use_cache = False` on the model it trains,
  so that holds for every forward (flash-attention uses the collator's `cu_seq_lens`).
- bf16 `auto` means CUDA with bf16 support; attention `auto` is flash_attention_2 on CUDA when
  `flash_attn` imports, else sdpa.
"""

from __future__ import annotations

from typing import Any

from sftflow.tasks.core.recipe_training import TrainConfig
from sftflow.tasks.lib.tiny_model import BUILTIN_TINY_LLAMA

DEFAULT_LEARNING_RATE = {"full": 2e-5, "lora": 2e-4}
SAVE_TOTAL_LIMIT = 2  # the newest checkpoint is the resume point; one more survives a crash mid-save


def wants_packing(packing: bool | str, mean_tokens: float, max_length: int) -> bool:
    """Packing decision: explicit True/False, or auto = the mean row fills under half of max_length.

    >>> wants_packing("auto", 100.0, 512), wants_packing("auto", 300.0, 512), wants_packing(False, 1.0, 512)
    (True, False, False)
    """
    if packing == "auto":
        return mean_tokens < max_length / 2
    return bool(packing)


def use_bf16(setting: bool | str, device: str, bf16_supported: bool) -> bool:
    """bf16 as the recipe says; `auto` = CUDA that supports it (CPU autocast bf16 is slow).

    >>> use_bf16("auto", "cuda", True), use_bf16("auto", "cpu", True), use_bf16(True, "cpu", False)
    (True, False, True)
    """
    if setting == "auto":
        return device == "cuda" and bf16_supported
    return bool(setting)


def sft_kwargs(cfg: TrainConfig, device: str, mean_tokens: float, *, bf16_supported: bool | None = None,
               has_eval: bool = False) -> dict[str, Any]:
    """Keyword arguments of trl.SFTConfig for this recipe (output_dir and assistant_only_loss are
    added by the worker). `device` is "cuda" or "cpu"; `mean_tokens` is the mean untruncated
    conversation length under the training template (from the mask audit)."""
    if bf16_supported is None:
        bf16_supported = device == "cuda" and _cuda_bf16_supported()
    packing = wants_packing(cfg.packing, mean_tokens, cfg.max_length)
    on_cpu = device == "cpu"
    kwargs: dict[str, Any] = {
        "learning_rate": cfg.learning_rate or DEFAULT_LEARNING_RATE[cfg.method],
        "lr_scheduler_type": cfg.lr_scheduler_type,
        # transformers 5 dropped warmup_ratio: a float in [0, 1) here is a ratio of the total steps
        "warmup_steps": cfg.warmup_ratio,
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "max_length": cfg.max_length,
        "packing": packing,
        "bf16": use_bf16(cfg.bf16, device, bf16_supported),
        "use_cpu": on_cpu,
        # TRL turns checkpointing on by default; it buys memory with ~20% more compute, worth it
        # on a GPU with a real model, not for the builtin model or on CPU (RAM is rarely the limit)
        "activation_checkpointing": not on_cpu and cfg.model != BUILTIN_TINY_LLAMA,
        "logging_steps": cfg.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": SAVE_TOTAL_LIMIT,
        # rows are tokenized up front, so loader workers would only add fork overhead on CPU
        "dataloader_num_workers": 0 if on_cpu else 2,
        "dataloader_pin_memory": not on_cpu,
        "eval_strategy": "steps" if has_eval else "no",
        "report_to": [],
    }
    if has_eval:
        kwargs["eval_steps"] = cfg.save_steps
    if packing:
        # padding-free: examples are isolated by the mask transformers derives from the restarting
        # position_ids in cache-less forwards (the worker's model has use_cache=False)
        kwargs["packing_strategy"] = "bfd"
    if cfg.max_steps is not None:
        kwargs["max_steps"] = cfg.max_steps
    else:
        kwargs["num_train_epochs"] = cfg.num_train_epochs
    return kwargs


def attn_implementation(cfg: TrainConfig, device: str) -> str:
    """The recipe's choice, or auto: flash_attention_2 on CUDA when flash_attn imports, else sdpa."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if device == "cuda" and use_bf16(cfg.bf16, device, _cuda_bf16_supported()):  # FA2 needs bf16 weights
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def _cuda_bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
