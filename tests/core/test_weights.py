"""Safetensors-only loading: which folders are refused, and how a hub refusal is explained."""

import pytest

from sftflow.tasks.core.weights import (
    UnsafeWeightsError,
    missing_safetensors_error,
    pickled_weight_files,
    require_safetensors,
)


def test_a_folder_with_only_pickled_weights_is_refused_with_its_files_named(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (tmp_path / "extra.pt").write_bytes(b"\x80\x04")
    (tmp_path / "config.json").write_text("{}")
    assert pickled_weight_files(tmp_path) == ["extra.pt", "pytorch_model.bin"]
    with pytest.raises(UnsafeWeightsError) as caught:
        require_safetensors(tmp_path, "score.model 'm'")
    message = str(caught.value)
    assert message.startswith(f"score.model 'm': the model folder {tmp_path} holds its weights only in")
    assert "(extra.pt, pytorch_model.bin)" in message and "save_pretrained" in message


def test_safetensors_beside_a_pickle_and_folders_without_weights_pass(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04")  # written by Trainer, not weights
    require_safetensors(tmp_path, "x")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "training_args.bin").unlink()
    require_safetensors(tmp_path, "x")  # empty: from_pretrained gives its own error
    require_safetensors("org/model", "x")  # hub id: from_pretrained(use_safetensors=True) decides


def test_a_hub_refusal_for_want_of_safetensors_is_explained():
    refused = OSError("org/model does not appear to have a file named model.safetensors")
    explained = missing_safetensors_error(refused, "org/model", "train.model")
    assert isinstance(explained, UnsafeWeightsError)
    assert str(explained).startswith("train.model: org/model has no safetensors weights")
    assert "Convert org/model" in str(explained) and "hub revision" in str(explained)
    assert missing_safetensors_error(OSError("connection refused"), "org/model", "train.model") is None
