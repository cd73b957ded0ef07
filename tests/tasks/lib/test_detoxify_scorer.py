"""The detoxify backend on a tiny local checkpoint.

The detoxify checkpoint is built here, offline, in detoxify's layout: its config.arch.args
model_type is a local folder holding a tiny BERT config and a BertTokenizer built from a word
list. Its weights are random, so these tests check shapes, order and loading, not toxicity.
Windows (issue 13): detoxify cuts an over-long text into token windows instead of truncating it.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from sftflow.tasks.core.recipe_filters import FilterConfig, ToxicityConfig
from tests.stage_helpers import records_from_rows
from sftflow.tasks.core.workspace import PathNotAllowed, Workspace
from sftflow.tasks.filters import filter_records
from sftflow.tasks.lib.detoxify_scorer import DetoxifyScorer
from sftflow.tasks.lib.toxicity_loader import load_toxicity_scorer, toxicity_scorer_name
from tests.tasks.lib.toxicity_corpus import conversation

CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = "you are a nice kind person idiot stupid hello the cat sat on mat what is this".split()
TEXTS = [
    "hello",
    "you are a nice kind person and the cat sat on the mat",
    "what is this",
    "stupid idiot",
    "the cat sat on the mat " * 30,  # longer than the tiny model's 64 positions: cut into windows
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


def test_unknown_detoxify_model_refused():
    with pytest.raises(ValueError, match="neither a checkpoint file nor a detoxify model type"):
        DetoxifyScorer("not-a-model", None)


# ------------------------------------------------------------------- detoxify token windows --
LONG = " ".join(["the cat sat on the mat"] * 40) + " you are a stupid idiot"  # 245 tokens > 64 positions


def test_detoxify_cuts_long_texts_into_windows_within_the_limit(tiny_checkpoint, pin):
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=4, checkpoint_sha256=pin)
    tokenizer = scorer._detox.tokenizer
    (windows,) = scorer.windows([LONG])
    assert all(len(tokenizer(w)["input_ids"]) <= 64 for w in windows)
    assert windows[-1].endswith("you are a stupid idiot")  # the tail is read, not truncated
    assert all(w in LONG for w in windows)  # windows are the text's own substrings
    # 245 tokens in windows of at most 62 (+[CLS], [SEP]): 4 would do without overlap; each window
    # starts half-way into the one before, so there are about twice as many
    assert len(windows) >= 7
    assert scorer.score([LONG]) == pytest.approx([max(scorer.score(windows))], abs=1e-6)
    assert scorer.windows(["hello"]) == [["hello"]]


def test_detoxify_reads_the_tail_of_a_long_text(tiny_checkpoint, pin):
    """Two texts that differ only after the 64-token limit: truncation scores them the same."""
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=4, checkpoint_sha256=pin)
    head = " ".join(["the cat sat on the mat"] * 15)
    a, b = scorer.score([head + " you are a stupid idiot " * 10, head + " hello kind person " * 10])
    assert abs(a - b) > 1e-4


def test_detoxify_cuts_a_single_overlong_word(tiny_checkpoint, pin):
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, checkpoint_sha256=pin)
    blob = "a" * 5000  # one "word", hundreds of WordPiece tokens
    (windows,) = scorer.windows([blob])
    assert "".join(windows) == blob and all(len(scorer._detox.tokenizer(w)["input_ids"]) <= 64 for w in windows)


def test_filter_with_detoxify_scores_every_window_of_a_long_turn(tiny_checkpoint, pin, counter):
    scorer = DetoxifyScorer(str(tiny_checkpoint), None, batch_size=8, checkpoint_sha256=pin)
    rows = [conversation("long", "what is this", LONG)]
    for window in ("sentence", "turn"):
        cfg = FilterConfig.model_validate({
            "length": {"min_response_tokens": 1, "max_total_tokens": 100_000},
            "toxicity": {"backend": "detoxify", "threshold": 0.5, "window": window},
        })
        out = filter_records(records_from_rows(rows), cfg, counter, scorer, None)
        top = json.loads(out.decisions.column("detail")[0].as_py())["toxicity_top_window"]["assistant"]
        assert top["of"] == len(scorer.windows([LONG])[0])  # one sentence: cut by tokens either way
        assert out.decisions.column("score")[0].as_py() == pytest.approx(scorer.score([LONG])[0], abs=1e-6)

