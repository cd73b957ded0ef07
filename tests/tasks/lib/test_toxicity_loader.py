"""Loading the toxicity backend a recipe names, and the checkpoint sha256 pin on every way there.

Checkpoint files are unpickled by detoxify, so their sha256 must be pinned: the pin tests use
files of arbitrary bytes and a stand-in for detoxify that fails the test if it is ever reached.
"""

from __future__ import annotations

import hashlib

import pytest

from sftflow.tasks.core.recipe import RecipeError, parse_recipe
from sftflow.tasks.core.recipe_filters import ToxicityConfig
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.detoxify_scorer import CheckpointHashError, DetoxifyScorer
from sftflow.tasks.lib.toxicity import ProfanityCheckScorer
from sftflow.tasks.lib.toxicity_loader import load_toxicity_scorer, toxicity_scorer_name


def test_profanity_backend_and_disabled_names(tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert isinstance(load_toxicity_scorer(ToxicityConfig(), ws.resolve_input), ProfanityCheckScorer)
    assert toxicity_scorer_name(ToxicityConfig(enabled=False), ws.resolve_input) is None


# --------------------------------------------------------------------- checkpoint sha256 pin --
@pytest.fixture
def never_unpickle(monkeypatch):
    """detoxify's Detoxify and torch.load replaced by stand-ins that record being reached."""
    import detoxify.detoxify
    import torch

    reached: list[str] = []

    def refuse(name):
        def stand_in(*args, **kwargs):
            reached.append(name)
            raise AssertionError(f"{name} was reached although the checkpoint was not verified")
        return stand_in

    monkeypatch.setattr(detoxify.detoxify, "Detoxify", refuse("Detoxify"))
    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    return reached


@pytest.fixture
def arbitrary_checkpoint(tmp_path):
    """A checkpoint file of arbitrary bytes (never loaded), its sha256 and a workspace holding it."""
    path = tmp_path / "models" / "toxic.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"not really a checkpoint \x80\x04 " * 100)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), Workspace(root=tmp_path, warehouse=tmp_path / "wh")


def _callers(cfg, ws):
    """Every way the stage reaches a detoxify checkpoint: planning (the name) and loading."""
    return {
        "toxicity_scorer_name": lambda: toxicity_scorer_name(cfg, ws.resolve_input),
        "load_toxicity_scorer": lambda: load_toxicity_scorer(cfg, ws.resolve_input),
        "DetoxifyScorer": lambda: DetoxifyScorer(str(ws.resolve_input(cfg.model)), None,
                                                 checkpoint_sha256=cfg.checkpoint_sha256),
    }


def test_unpinned_checkpoint_is_refused_and_its_sha256_printed(arbitrary_checkpoint, never_unpickle):
    path, actual, ws = arbitrary_checkpoint
    cfg = ToxicityConfig(backend="detoxify", model="models/toxic.ckpt")
    for caller, call in _callers(cfg, ws).items():
        with pytest.raises(CheckpointHashError) as caught:
            call()
        message = str(caught.value)
        assert str(path) in message, caller  # the file
        assert "filters.toxicity.checkpoint_sha256" in message, caller  # the field to set
        assert f"checkpoint_sha256: {actual}" in message, caller  # the value, ready to paste
        assert "trust" in message, caller  # and why: check the file before pinning it
    assert never_unpickle == []


def test_checkpoint_with_another_sha256_is_refused(arbitrary_checkpoint, never_unpickle):
    path, actual, ws = arbitrary_checkpoint
    expected = hashlib.sha256(b"the file that was checked").hexdigest()
    cfg = ToxicityConfig(backend="detoxify", model="models/toxic.ckpt", checkpoint_sha256=expected)
    for caller, call in _callers(cfg, ws).items():
        with pytest.raises(CheckpointHashError) as caught:
            call()
        message = str(caught.value)
        assert str(path) in message and expected in message and actual in message, caller
        assert message.index(actual) < message.index(expected), caller  # "has <actual> ... pins <expected>"
    assert never_unpickle == []


def test_a_changed_checkpoint_is_refused_after_it_was_pinned(arbitrary_checkpoint, never_unpickle):
    path, actual, ws = arbitrary_checkpoint
    cfg = ToxicityConfig(backend="detoxify", model="models/toxic.ckpt", checkpoint_sha256=actual)
    assert toxicity_scorer_name(cfg, ws.resolve_input) == f"detoxify:checkpoint:sha256={actual}"
    path.write_bytes(path.read_bytes() + b"import os")  # swapped after the recipe was written
    with pytest.raises(CheckpointHashError, match=f"pins {actual}"):
        load_toxicity_scorer(cfg, ws.resolve_input)
    assert never_unpickle == []


def test_a_matching_pin_lets_detoxify_load_the_file(arbitrary_checkpoint, never_unpickle):
    path, actual, ws = arbitrary_checkpoint
    cfg = ToxicityConfig(backend="detoxify", model="models/toxic.ckpt", checkpoint_sha256=actual.upper())
    with pytest.raises(AssertionError, match="Detoxify was reached"):
        load_toxicity_scorer(cfg, ws.resolve_input)
    assert never_unpickle == ["Detoxify"]  # verified, then handed to detoxify (stubbed here)


def test_pin_is_refused_for_a_detoxify_model_type(tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    cfg = ToxicityConfig(backend="detoxify", model="original", checkpoint_sha256="a" * 64)
    with pytest.raises(ValueError, match="remove checkpoint_sha256, or set model to the checkpoint file"):
        toxicity_scorer_name(cfg, ws.resolve_input)


@pytest.mark.parametrize("value", ["abc", "g" * 64, "a" * 63, "a" * 65, "sha256:" + "a" * 64])
def test_recipe_refuses_a_malformed_checkpoint_sha256(value):
    data = {"name": "r", "sources": [{"name": "s", "format": "alpaca", "path": "x.json"}],
            "filters": {"toxicity": {"backend": "detoxify", "model": "m.ckpt", "checkpoint_sha256": value}}}
    with pytest.raises(RecipeError, match=r"filters\.toxicity\.checkpoint_sha256: .*64 hex digits"):
        parse_recipe(data)


def test_recipe_checkpoint_sha256_is_stored_lowercase():
    assert ToxicityConfig(checkpoint_sha256="AB" * 32).checkpoint_sha256 == "ab" * 32
    assert ToxicityConfig().checkpoint_sha256 is None

