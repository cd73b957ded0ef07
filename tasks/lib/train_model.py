"""The model the training process trains: its dtype, its training setup, and what LoRA trains.

`load_training_model` loads the base in `model_dtype` and prepares it (`config.use_cache = False`,
see `prepare_for_training`); with method lora, `peft_config` also trains the rows of the special
tokens the template uses (`trainable_template_tokens`, `template_special_tokens`), and
`expose_output_bias` keeps TRL's fused loss working on the head PEFT wraps for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from sftflow.tasks.lib.train_worker import TrainJob


def template_special_tokens(template: str, candidates: Iterable[str]) -> list[str]:
    """The tokens among `candidates` (a tokenizer's added/special tokens) whose text appears in the
    chat template, in first-seen order without repeats.

    >>> template_special_tokens("{{ '<|im_start|>' ~ role }}{{ text ~ '<|im_end|>' }}",
    ...                         ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|pad|>", "<|im_end|>"])
    ['<|im_end|>', '<|im_start|>']
    """
    seen: list[str] = []
    for token in candidates:
        if token and token in template and token not in seen:
            seen.append(token)
    return seen


def model_dtype(job: TrainJob):
    """Weights dtype: LoRA under bf16 keeps the frozen base in bf16 (half the memory, adapters
    still train in fp32); full fine-tuning keeps fp32 master weights and lets autocast run bf16
    matmuls, because pure-bf16 AdamW updates at lr ~2e-5 round away to nothing."""
    import torch

    return torch.bfloat16 if job.sft.get("bf16") and job.method == "lora" else torch.float32


def prepare_for_training(model):
    """Set the model up for training: `config.use_cache = False`.

    Why it matters beyond memory: with padding-free packing the collator sends no attention mask,
    only `position_ids` restarting at 0 per conversation, and transformers (masking_utils
    `_preprocess_mask_arguments`) derives the per-conversation causal mask from them only when
    there is no cache. A forward with `use_cache` on creates a DynamicCache first, that detection
    is skipped, and on sdpa/eager the packed conversations attend to each other. TRL 1.16's loss
    (its fused LM head forward) happens to pass use_cache=False; this makes every forward of the
    training model safe (tests/tasks/lib/test_packing_isolation.py), whoever calls it. The worker
    sets it back to True before saving: the saved config is for inference.
    """
    model.config.use_cache = False
    return model


def load_training_model(job: TrainJob):
    """(model, tokenizer) for training: the base in `model_dtype(job)`, prepared for training."""
    from sftflow.tasks.lib.tiny_model import load_causal_lm

    model, tokenizer = load_causal_lm(job.base_model, revision=job.revision, trust_remote_code=job.trust_remote_code,
                                      dtype=model_dtype(job), attn_implementation=job.attn_implementation)
    return prepare_for_training(model), tokenizer


def trainable_template_tokens(job: TrainJob, tokenizer) -> dict[str, int]:
    """{token: id} of the special tokens the job's template uses, when LoRA trains them."""
    if job.method != "lora" or not job.lora.train_template_tokens:
        return {}
    candidates = [*tokenizer.get_added_vocab(), *tokenizer.all_special_tokens]
    return {token: tokenizer.convert_tokens_to_ids(token)
            for token in template_special_tokens(job.chat_template, candidates)}


def peft_config(job: TrainJob, model=None, token_ids: list[int] | None = None):
    """LoraConfig for method lora (None otherwise).

    `token_ids` (the template's special tokens) become PEFT trainable tokens: all-linear LoRA
    freezes embed_tokens and lm_head, so tokens new to the base (ChatML on a base without it)
    would keep their untrained rows. With tied embeddings PEFT ties lm_head to the embedding's
    trainable rows itself; an untied lm_head is named too, so its output rows of those tokens
    train as well (peft 0.21 wraps both as TrainableTokensWrapper; only those rows are saved).
    """
    if job.method != "lora":
        return None
    from peft import LoraConfig

    trainable = None
    if token_ids:
        names = {module: name for name, module in model.named_modules()}
        embedding = names[model.get_input_embeddings()]
        trainable = {embedding: list(token_ids)}
        output = model.get_output_embeddings()
        if output is not None and not getattr(model.config, "tie_word_embeddings", False):
            trainable[names[output]] = list(token_ids)
    return LoraConfig(r=job.lora.r, lora_alpha=job.lora.alpha, lora_dropout=job.lora.dropout,
                      target_modules=job.lora.target_modules, task_type="CAUSAL_LM",
                      trainable_token_indices=trainable)


def expose_output_bias(model) -> None:
    """Let TRL's fused LM head read `bias` from an lm_head that PEFT wrapped for trainable tokens.

    TRL 1.16's fused loss reads `lm_head.weight` and `lm_head.bias` directly; PEFT 0.21's
    TrainableTokensWrapper answers `.weight` with the merged (trainable-row) weights but has no
    `.bias`, so training would stop with an AttributeError. The wrapped layer's own bias (None for
    Llama-style heads) is set as a plain attribute: nothing is registered or saved.
    """
    from peft.utils.other import TrainableTokensWrapper

    output = model.get_output_embeddings()
    if isinstance(output, TrainableTokensWrapper) and "bias" not in output.__dict__:
        object.__setattr__(output, "bias", output.original_module.bias)
