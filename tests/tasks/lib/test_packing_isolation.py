"""Packed conversations stay isolated in a plain forward of the model the worker trains.

BFD packing is padding-free: TRL's collator sends one flattened row with `position_ids` that
restart at 0 per conversation and no attention mask. transformers builds the per-conversation
causal mask from those position ids only when the forward has no cache (masking_utils,
`find_packed_sequence_indices` is called under `cache is None`); a forward with `use_cache` on
creates a DynamicCache first and the conversations attend to each other on sdpa/eager. The worker
sets `config.use_cache = False` on its training model (`prepare_for_training`), so isolation does
not depend on TRL passing use_cache=False in its own loss.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sftflow.tasks.lib.train_model import prepare_for_training

LENGTHS = (7, 12, 5)  # three conversations of different lengths
VOCAB = 128
TOLERANCE = {"sdpa": 1e-4, "eager": 1e-4, "flash_attention_2": 2e-2}  # FA2 runs in bf16
LEAK_THRESHOLD = 1e-3


def _has_flash_attention() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def tiny_llama(attn_implementation: str, prepared: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         pad_token_id=0, attn_implementation=attn_implementation)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if attn_implementation == "flash_attention_2":
        model = model.to("cuda", torch.bfloat16)
    return (prepare_for_training(model) if prepared else model).eval()


def sequences() -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in LENGTHS]


def packed_batch(seqs: list[list[int]], device) -> dict:
    """One BFD-packed row (input_ids + seq_lengths, as TRL's packing writes it) collated by TRL's own
    padding-free collator, the one SFTTrainer builds for packing_strategy="bfd"."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    row = {"input_ids": [t for s in seqs for t in s], "seq_lengths": [len(s) for s in seqs]}
    batch = collator([row])
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist() == [
        p for n in LENGTHS for p in range(n)]
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def max_leak(model, **forward_kwargs) -> float:
    """Max |logit| difference between each conversation inside the packed row and run alone."""
    device = next(model.parameters()).device
    seqs = sequences()
    with torch.no_grad():
        packed = model(**packed_batch(seqs, device), **forward_kwargs).logits[0].float()
        start, worst = 0, 0.0
        for seq in seqs:
            alone = model(input_ids=torch.tensor([seq], device=device)).logits[0].float()
            worst = max(worst, (packed[start:start + len(seq)] - alone).abs().max().item())
            start += len(seq)
    return worst


@pytest.mark.parametrize("attn_implementation", [
    "sdpa",
    "eager",
    pytest.param("flash_attention_2", marks=pytest.mark.skipif(
        not _has_flash_attention(), reason="flash_attention_2 needs CUDA and the flash_attn package, not both available here")),
])
def test_packed_conversations_do_not_attend_to_each_other(attn_implementation):
    model = tiny_llama(attn_implementation, prepared=True)
    assert model.config.use_cache is False
    leak = max_leak(model)
    print(f"{attn_implementation}: max |packed - alone| logit difference {leak:.2e}")
    assert leak < TOLERANCE[attn_implementation]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_the_comparison_catches_a_leak(attn_implementation):
    """Not vacuous: with a cache (the model as loaded, or use_cache forced) the packed-sequence
    detection is skipped and the same comparison sees the conversations mixing."""
    unprepared = tiny_llama(attn_implementation, prepared=False)  # config.use_cache as loaded: True
    leak_unprepared = max_leak(unprepared)
    leak_forced = max_leak(tiny_llama(attn_implementation, prepared=True), use_cache=True)
    print(f"{attn_implementation}: unprepared {leak_unprepared:.2e}, use_cache=True {leak_forced:.2e}")
    assert leak_unprepared > LEAK_THRESHOLD and leak_forced > LEAK_THRESHOLD
