"""Toxicity scorers: profanity-check on literal texts; detoxify plumbing on a tiny local checkpoint.

The detoxify checkpoint is built here, offline, in detoxify's layout: its config.arch.args
model_type is a local folder holding a tiny BERT config and a BertTokenizer built from a word
list. Its weights are random, so these tests check shapes, order and loading, not toxicity.
Checkpoint files are unpickled by detoxify, so their sha256 must be pinned: the pin tests use
files of arbitrary bytes and a stand-in for detoxify that fails the test if it is ever reached.
"""

from __future__ import annotations

import hashlib

import pytest

from tasks.core.recipe import RecipeError, ToxicityConfig, parse_recipe
from tasks.core.workspace import PathNotAllowed, Workspace
from tasks.toxicity import (
    CheckpointHashError,
    DetoxifyScorer,
    ProfanityCheckScorer,
    load_toxicity_scorer,
    toxicity_scorer_name,
)

CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = "you are a nice kind person idiot stupid hello the cat sat on mat what is this".split()
TEXTS = [
    "hello",
    "you are a nice kind person and the cat sat on the mat",
    "what is this",
    "stupid idiot",
    "the cat sat on the mat " * 30,  # longer than the tiny model's 64 positions: truncated
    "",
]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("detox")
    folder = root / "tiny-bert"
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=len(CLASSES),
        initializer_range=0.5,  # random but spread-out scores, so a mix-up of rows is visible
    )
    config.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    checkpoint = {
        "config": {
            "arch": {"args": {"model_type": str(folder), "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
            "dataset": {"args": {"classes": CLASSES}},
        },
        "state_dict": model.state_dict(),
    }
    path = root / "tiny.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def pin(tiny_checkpoint) -> str:
    """The tiny checkpoint's sha256, as a recipe pins it."""
    return hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def test_profanity_check_scores_real_wording():
    scorer = ProfanityCheckScorer()
    toxic, clean = scorer.score(["You are a fucking idiot and a piece of shit.", "The capital of France is Paris."])
    assert toxic > 0.99 and clean < 0.1
    assert scorer.score([]) == []
    assert scorer.name.startswith("profanity-check@")


def test_detoxify_checkpoint_scores_one_probability_per_text(tiny_checkpoint, pin):
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=2, checkpoint_sha256=pin)
    scores = scorer.score(TEXTS)
    assert len(scores) == len(TEXTS)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 4) for s in scores}) > 3  # the random model does tell the texts apart
    assert scorer.score([]) == []


def test_detoxify_batches_restore_input_order(tiny_checkpoint, pin):
    batched = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=4, checkpoint_sha256=pin)
    one_by_one = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=1, checkpoint_sha256=pin)
    scores = batched.score(TEXTS)
    # each text alone (no padding) gives the same number as inside a padded, length-sorted batch
    assert scores == pytest.approx(one_by_one.score(TEXTS), abs=1e-5)
    assert batched.score(TEXTS[::-1]) == pytest.approx(scores[::-1], abs=1e-5)


def test_detoxify_batches_group_texts_by_token_count(tiny_checkpoint, pin):
    """Batches hold texts of adjacent token counts, longest first: padding is the least possible."""
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=2, checkpoint_sha256=pin)
    model = scorer._detox.model
    seen: list[tuple[int, int]] = []  # (padded width, real tokens) per forward pass
    forward = model.forward

    def recording(*args, **kwargs):
        mask = kwargs["attention_mask"]
        seen.append((mask.shape[1], int(mask.sum())))
        return forward(*args, **kwargs)

    model.forward = recording
    # Character length misleads here: one long unknown word is a single token, "a a a a a a" six.
    texts = ["supercalifragilisticexpialidocious", "you are a nice kind person", "a a a a a a", "hello",
             "the cat", "what is this"]
    scorer.score(texts)
    lengths = sorted((len(ids) for ids in scorer._detox.tokenizer(texts)["input_ids"]), reverse=True)
    assert [width for width, _ in seen] == lengths[::2]  # each batch as wide as its longest text
    assert sum(real for _, real in seen) == sum(lengths)


def test_detoxify_batches_cap_padded_tokens(tiny_checkpoint, pin):
    """max_batch_tokens bounds rows x width: long texts go in smaller batches, a too-long one alone."""
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=4, max_batch_tokens=12, checkpoint_sha256=pin)
    lengths = [14, 6, 6, 5, 3, 3, 3, 3, 3]  # longest first, as score() orders them
    batches = scorer._batches(list(range(len(lengths))), lengths)
    assert batches == [[0], [1, 2], [3, 4], [5, 6, 7, 8]]
    assert all(len(b) * lengths[b[0]] <= 12 for b in batches[1:])  # the 14-token text is alone
    capped = scorer.score(TEXTS)
    assert capped == pytest.approx(DetoxifyScorer(str(tiny_checkpoint), None, checkpoint_sha256=pin).score(TEXTS),
                                   abs=1e-5)


def test_detoxify_uses_the_toxicity_output(tiny_checkpoint, pin):
    import torch

    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=8, checkpoint_sha256=pin)
    expected = scorer._detox.predict(TEXTS[:3])["toxicity"]  # detoxify's own API, class 0
    assert scorer.score(TEXTS[:3]) == pytest.approx(expected, abs=1e-5)
    assert scorer._column == 0 and isinstance(scorer._detox.model, torch.nn.Module)


def test_detoxify_name_holds_the_checkpoint_sha256(tiny_checkpoint, pin):
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, checkpoint_sha256=pin.upper())  # any case
    assert scorer.name == f"detoxify:checkpoint:sha256={pin}"


def test_detoxify_with_offline_config_folder(tiny_checkpoint, pin):
    folder = tiny_checkpoint.parent / "tiny-bert"
    scorer = DetoxifyScorer(str(tiny_checkpoint), str(folder), batch_size=3, checkpoint_sha256=pin)
    plain = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=3, checkpoint_sha256=pin)
    assert scorer.score(TEXTS) == pytest.approx(plain.score(TEXTS), abs=1e-6)
    assert "+hf_config:sha256=" in scorer.name


def test_load_confines_paths_and_matches_planned_name(tiny_checkpoint, pin):
    ws = Workspace(root=tiny_checkpoint.parent, warehouse=tiny_checkpoint.parent / "wh")
    cfg = ToxicityConfig(backend="detoxify", model="tiny.ckpt", huggingface_config_path="tiny-bert", batch_size=2,
                         checkpoint_sha256=pin)
    scorer = load_toxicity_scorer(cfg, ws.resolve_input)
    assert isinstance(scorer, DetoxifyScorer) and scorer.batch_size == 2
    assert scorer.max_batch_tokens == cfg.max_batch_tokens == ToxicityConfig.model_fields["max_batch_tokens"].default
    assert scorer.name == toxicity_scorer_name(cfg, ws.resolve_input)
    assert len(scorer.score(TEXTS)) == len(TEXTS)

    elsewhere = Workspace(root=tiny_checkpoint.parent / "project", warehouse=tiny_checkpoint.parent / "wh")
    with pytest.raises(PathNotAllowed):
        load_toxicity_scorer(cfg.model_copy(update={"model": str(tiny_checkpoint)}), elsewhere.resolve_input)
    with pytest.raises(FileNotFoundError, match="not a detoxify model type"):
        load_toxicity_scorer(cfg.model_copy(update={"model": "missing.ckpt"}), ws.resolve_input)
    with pytest.raises(FileNotFoundError, match="huggingface_config_path"):
        load_toxicity_scorer(cfg.model_copy(update={"huggingface_config_path": "tiny.ckpt"}), ws.resolve_input)


def test_profanity_backend_and_disabled_names(tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert isinstance(load_toxicity_scorer(ToxicityConfig(), ws.resolve_input), ProfanityCheckScorer)
    assert toxicity_scorer_name(ToxicityConfig(enabled=False), ws.resolve_input) is None


def test_unknown_detoxify_model_refused():
    with pytest.raises(ValueError, match="neither a checkpoint file nor a detoxify model type"):
        DetoxifyScorer("not-a-model", None)


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
