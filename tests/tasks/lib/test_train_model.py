"""The model the training process trains: which template tokens LoRA trains, and its LoRA config."""

from __future__ import annotations

import pytest

from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.lib.train_model import peft_config, template_special_tokens
from sftflow.tasks.lib.train_worker import TrainJob


def test_template_special_tokens_are_the_added_tokens_the_template_names():
    assert template_special_tokens(CHATML_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) \
        == ["<|im_start|>", "<|im_end|>"]
    assert template_special_tokens("{{ messages }}", ["<|im_end|>"]) == []


@pytest.mark.parametrize("tied", [True, False])
def test_lora_trains_template_token_rows_of_the_embedding_and_an_untied_head(tied):
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    job = TrainJob(base_model="m", chat_template="t", train_files=["a.parquet"], checkpoint_dir="c", output_dir="o",
                   method="lora")
    lora = peft_config(job, model, [3, 5])
    expected = {"model.embed_tokens": [3, 5]} if tied else {"model.embed_tokens": [3, 5], "lm_head": [3, 5]}
    assert lora.trainable_token_indices == expected
    trainable = {n for n, p in get_peft_model(model, lora).named_parameters() if p.requires_grad and "lora_" not in n}
    # tied: PEFT ties lm_head to the embedding's trainable rows, so one delta serves both
    assert {n.split(".token_adapter")[0].rsplit(".", 1)[-1] for n in trainable} == (
        {"embed_tokens"} if tied else {"embed_tokens", "lm_head"})
    assert peft_config(job, model, []).trainable_token_indices is None
