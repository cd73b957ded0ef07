"""Fixtures for the model loaders' safety checks (safetensors only, no remote code)."""

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
