"""A tiny Llama (hidden 32, 2 layers) and a ~300-token BPE tokenizer built in-process with a ChatML
template: the models of the evaluation tests, on CPU and offline."""

from __future__ import annotations

import pytest
import torch

from sftflow.tasks.lib.chat_tokens import conversation_labels

# ChatML with generation markers: the assistant content and its <|im_end|> are supervised.
TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
CORPUS = [
    "the cat sat on the mat and looked at the moon.",
    "what is the capital of france? the capital of france is paris.",
    "write a short poem about rain. rain falls soft on the quiet town.",
    "hello world, the quick brown fox jumps over the lazy dog.",
]
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
OTHER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Write about rain."},
    {"role": "assistant", "content": "Rain falls soft."},
    {"role": "user", "content": "And the moon?"},
    {"role": "assistant", "content": "The moon looked at the cat."},
]
GENERAL_TEXTS = ["the quick brown fox jumps over the lazy dog.", "a short poem about the quiet town at night."]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|pad|>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def fine_tune(model, tokenizer, messages, steps: int, lr: float = 1e-2):
    """Plain torch: a few Adam steps on the assistant tokens of one conversation."""
    ids, labels = conversation_labels(tokenizer, TEMPLATE, messages, max_length=128)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Fixtures of the modules that use these models; a module imports them to use them (an imported
# autouse fixture is autouse there only).
@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    # the tensors here are tiny: with several threads, synchronisation costs more than the math
    # (up to 40x slower on a busy 2-core machine), so the module runs torch on one thread
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()
