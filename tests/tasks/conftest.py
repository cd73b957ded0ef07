"""Fixtures shared by the tests of tasks/: the model loaders' safety checks (safetensors only, no
remote code), tiny reward models, the packaged token counter and profanity-check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SPIED_CLASSES = ("AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification")


@pytest.fixture
def from_pretrained_calls(monkeypatch) -> list[tuple[str, dict]]:
    """(class name, keyword arguments) of every from_pretrained call on the Auto classes that load
    models and tokenizers; the calls still go through to transformers."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in SPIED_CLASSES:
        cls = getattr(transformers, name)

        def spy(*args, _original=cls.from_pretrained, _name=name, **kwargs):
            calls.append((_name, dict(kwargs)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


@pytest.fixture
def pickled_copy():
    """copy(folder, dest): a copy of a saved model folder whose weights are only a pickle.

    transformers 5 writes safetensors whatever `safe_serialization` says, so the copy's
    model.safetensors (or adapter_model.safetensors) is rewritten with torch.save as the .bin
    file older tools wrote, and removed.
    """
    import torch
    from safetensors.torch import load_file

    def copy(folder: Path, dest: Path) -> Path:
        shutil.copytree(folder, dest)
        for safe, pickled in (("model.safetensors", "pytorch_model.bin"),
                              ("adapter_model.safetensors", "adapter_model.bin")):
            if (dest / safe).is_file():
                torch.save(load_file(dest / safe), dest / pickled)
                (dest / safe).unlink()
        assert not list(dest.glob("*.safetensors")), dest
        return dest

    return copy


@pytest.fixture(scope="module")
def counter():
    """The packaged MiniLM token counter (filter and toxicity tests)."""
    from sftflow.tasks.lib.tokens import load_token_counter

    return load_token_counter("builtin:minilm")


@pytest.fixture(scope="module")
def profanity():
    """profanity-check, the offline toxicity backend."""
    from sftflow.tasks.lib.toxicity import ProfanityCheckScorer

    return ProfanityCheckScorer()


# Words the tiny reward models' tokenizers know (models_root).
REWARD_MODEL_WORDS = (
    "the a of and in to is are why how what sky blue light sun sunlight plants water energy "
    "photosynthesis explain leaves sugar football match team won goal python list sort numbers"
).split()


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    """A project root holding models/bert (1 label, no chat template) and models/llama (3 labels,
    a chat template and no pad token), both written with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertConfig, BertForSequenceClassification, BertTokenizer,
        LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast,
    )

    root = tmp_path_factory.mktemp("project")
    torch.manual_seed(0)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "user", "assistant", ":", "?", "."]
    bert_tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(specials + REWARD_MODEL_WORDS)})
    # A wide initializer so that different texts get clearly different rewards.
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=len(bert_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=1, initializer_range=0.5,
    ))
    bert.save_pretrained(root / "models" / "bert")
    bert_tokenizer.save_pretrained(root / "models" / "bert")

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", *REWARD_MODEL_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    llama_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    llama_tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    llama = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=3,
        initializer_range=0.5,
    ))
    llama.save_pretrained(root / "models" / "llama")
    llama_tokenizer.save_pretrained(root / "models" / "llama")
    return root
