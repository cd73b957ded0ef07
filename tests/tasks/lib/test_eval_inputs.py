"""Loading what evaluate measures: the precision, safetensors-only models at their revision, prompt files."""

from __future__ import annotations

import pytest
import torch

from sftflow.tasks.lib.eval_inputs import base_then_tuned, eval_precision, load_prompts
from tests.tasks.lib.tiny_chat_lm import build_model, build_tokenizer, save


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """base/ and tuned/: two tiny models saved with their tokenizer."""
    tokenizer = build_tokenizer()
    root = tmp_path_factory.mktemp("models")
    save(build_model(tokenizer), tokenizer, root / "base")
    save(build_model(tokenizer, seed=1), tokenizer, root / "tuned")
    return root


@pytest.mark.parametrize("device, bf16, expected", [
    ("cpu", True, ("float32", "cpu")), ("cuda", True, ("bfloat16", "cuda")), ("cuda", False, ("float32", "cuda")),
])
def test_eval_precision_is_bf16_only_on_a_cuda_device_that_supports_it(monkeypatch, device, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert eval_precision(device) == expected


def test_models_and_tokenizer_load_as_safetensors_without_remote_code(folders, from_pretrained_calls):
    labels = [label for label, _model, _tokenizer in base_then_tuned(folders / "tuned", folders / "base")]
    assert labels == ["base", "tuned"]
    assert [name for name, _ in from_pretrained_calls] == ["AutoTokenizer", "AutoModelForCausalLM", "AutoModelForCausalLM"]
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in from_pretrained_calls)
    assert all(kwargs["use_safetensors"] is True for name, kwargs in from_pretrained_calls if name != "AutoTokenizer")


def test_a_hub_base_is_loaded_at_the_revision_it_was_trained_from(folders, from_pretrained_calls):
    revision = "0123456789abcdef0123456789abcdef01234567"
    for _label, _model, _tokenizer in base_then_tuned(folders / "tuned", folders / "base", base_revision=revision):
        pass
    models = [kwargs for name, kwargs in from_pretrained_calls if name == "AutoModelForCausalLM"]
    assert [kwargs.get("revision") for kwargs in models] == [revision, None]  # base pinned; tuned is a folder


def test_load_prompts_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.jsonl:2: needs a non-empty string field"):
        load_prompts(path)
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert load_prompts(path) == ["a", "b"]
