"""Toxicity scorers: profanity-check on literal texts; detoxify plumbing on a tiny local checkpoint.

The detoxify checkpoint is built here, offline, in detoxify's layout: its config.arch.args
model_type is a local folder holding a tiny BERT config and a BertTokenizer built from a word
list. Its weights are random, so these tests check shapes, order and loading, not toxicity.
Checkpoint files are unpickled by detoxify, so their sha256 must be pinned: the pin tests use
files of arbitrary bytes and a stand-in for detoxify that fails the test if it is ever reached.

Windows and scripts (issue 13): insults buried in 150-250-word answers (tests/tasks/lib/toxicity_corpus.py,
generated and from ../shared/data) must be caught by sentence windows without dropping clean long
answers; a turn in a script the backend cannot read is recorded as unjudged, not scored clean;
detoxify cuts an over-long text into token windows instead of truncating it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from sftflow.tasks.core.recipe import FilterConfig, RecipeError, ToxicityConfig, parse_recipe
from tests.stage_helpers import records_from_rows
from sftflow.tasks.core.workspace import PathNotAllowed, Workspace
from sftflow.tasks.filters import filter_records, merge_stats
from sftflow.tasks.lib.model_card import render_data_card
from sftflow.tasks.lib.tokens import load_token_counter
from sftflow.tasks.lib.toxicity import (
    ENGLISH_SCRIPTS,
    PROFANITY_WINDOW_WORDS,
    CheckpointHashError,
    DetoxifyScorer,
    ProfanityCheckScorer,
    load_toxicity_scorer,
    score_turns,
    split_sentences,
    toxicity_scorer_name,
    unjudged_script,
    word_windows,
)
from tests.tasks.lib.toxicity_corpus import (
    INSULTS,
    SHARED_ALPACA,
    alpaca_long_answers,
    buried_insults,
    conversation,
    generated_answers,
)

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


# ------------------------------------------------------------------------ windows (issue 13) --
QUESTION = "Can you explain this topic in some detail?"
CHINESE_INSULT = "你这个白痴，滚开！你真是个废物，什么都不懂。"  # "You idiot, get lost! You are trash, you know nothing."



def filter_cfg(**toxicity) -> FilterConfig:
    return FilterConfig.model_validate({
        "length": {"min_response_tokens": 1, "max_total_tokens": 100_000},
        "toxicity": {"backend": "profanity-check", "threshold": 0.5, **toxicity},
    })


def run_filter(answers: list[str], counter, scorer, **toxicity):
    rows = [conversation(f"r{i:04d}", QUESTION, answer) for i, answer in enumerate(answers)]
    return filter_records(records_from_rows(rows), filter_cfg(**toxicity), counter, scorer, None)


def toxic_share(output) -> float:
    reasons = output.decisions.column("reason").to_pylist()
    return reasons.count("toxic") / len(reasons)


def by_id(output) -> dict[str, dict]:
    return {d["example_id"]: {**d, "detail": json.loads(d["detail"])} for d in output.decisions.to_pylist()}


def test_every_corpus_insult_is_toxic_on_its_own(profanity):
    """The corpus measures burying, not the model's vocabulary: each insult alone is toxic."""
    assert min(profanity.score(INSULTS)) >= 0.9


def test_insults_buried_in_long_generated_answers_are_dropped(counter, profanity):
    clean = generated_answers(200)
    assert all(150 <= len(a.split()) <= 250 for a in clean)
    assert toxic_share(run_filter(buried_insults(clean), counter, profanity)) >= 0.90  # whole-turn scoring: 0.0
    assert toxic_share(run_filter(clean, counter, profanity)) <= 0.04


@pytest.mark.skipif(not SHARED_ALPACA.is_file(), reason="../shared/data/alpaca_en_demo.json is absent")
def test_insults_buried_in_real_long_answers_are_dropped(counter, profanity):
    clean = alpaca_long_answers()  # the 150-250-word outputs of a real Alpaca file
    assert len(clean) >= 150
    assert toxic_share(run_filter(buried_insults(clean), counter, profanity)) >= 0.90  # whole-turn: 3 of 192
    assert toxic_share(run_filter(clean, counter, profanity)) <= 0.04


def test_the_drop_names_the_window_that_scored_highest(counter, profanity):
    answer = buried_insults(generated_answers(1, seed=5), seed=5)[0]
    insult = next(i for i in INSULTS if i in answer)
    decision = by_id(run_filter([answer], counter, profanity))["r0000"]
    assert decision["reason"] == "toxic"
    top = decision["detail"]["toxicity_top_window"]["assistant"]
    assert top["turn"] == 1  # message index: the assistant turn after the question
    assert insult[:40].rstrip(".") in top["excerpt"]
    assert split_sentences(answer)[top["window"]] == insult and top["of"] == len(split_sentences(answer))
    assert decision["detail"]["toxicity_unjudged"] is None


def test_turn_window_still_cuts_profanity_check_windows(counter, profanity):
    """window: turn scores the turn whole up to the backend's limit; profanity-check's is 32 words,
    so an insult at the very end of a long answer is still read (it dilutes more than sentences do:
    see docs/data-decisions.md)."""
    clean = generated_answers(20, seed=7)
    out = run_filter([answer + " " + INSULTS[0] for answer in clean], counter, profanity, window="turn")
    assert toxic_share(out) == 1.0
    tops = [json.loads(d)["toxicity_top_window"]["assistant"] for d in out.decisions.column("detail").to_pylist()]
    # each 150-250-word turn is cut into 32-word windows, half overlapping; the insult is in the last
    assert all(t["of"] >= 2 * 150 // PROFANITY_WINDOW_WORDS - 1 and t["window"] == t["of"] - 1 for t in tops)


def test_word_windows_cover_every_word_with_overlap():
    text = " ".join(f"w{i}" for i in range(100))
    windows = word_windows(text, 32)
    assert all(len(w.split()) <= 32 for w in windows)
    assert set(" ".join(windows).split()) == set(text.split())  # nothing cut off
    # any run of 16 words lies whole inside one window
    assert all(any(" ".join(f"w{i}" for i in range(s, s + 16)) in w for w in windows) for s in range(85))


def test_a_chinese_insult_is_unjudged_not_clean(counter, profanity):
    mixed = "Sure. " + CHINESE_INSULT + " Anything else I can help with today?"
    answers = [CHINESE_INSULT, mixed, "Paris is in France."]
    out = run_filter(answers, counter, profanity)
    decisions = by_id(out)
    chinese = decisions["r0000"]
    assert chinese["detail"]["toxicity_unjudged"] == {"assistant": "script: Han"}
    assert chinese["score"] is None and chinese["detail"]["toxicity_assistant"] is None  # not a clean 0
    assert chinese["reason"] == "kept"  # documented: kept, with the detail
    mixed = decisions["r0001"]["detail"]
    assert mixed["toxicity_unjudged"] == {"assistant": "script: Han (2 of 4 windows)"}
    assert mixed["toxicity_assistant"] is not None  # its English sentences are judged
    assert decisions["r0002"]["detail"]["toxicity_unjudged"] is None
    assert out.stats["toxicity_unjudged_rows"] == 2 and out.stats["toxicity_unjudged_rows_kept"] == 2
    assert out.stats["toxicity_unjudged_by_script"] == {"Han": 2}
    assert out.records.column("toxicity_assistant").to_pylist()[0] is None


def test_declared_scripts_are_judged(counter, profanity):
    """judged_scripts widens what a backend is trusted with (e.g. a multilingual checkpoint)."""
    wide = ProfanityCheckScorer(scripts=frozenset({"Latin", "Han"}))
    decision = by_id(run_filter([CHINESE_INSULT], counter, wide))["r0000"]
    assert decision["detail"]["toxicity_unjudged"] is None and decision["score"] is not None
    ws = Workspace(root=".", warehouse="wh")
    loaded = load_toxicity_scorer(ToxicityConfig(judged_scripts=["Latin", "Cyrillic"]), ws.resolve_input)
    assert loaded.scripts == frozenset({"Latin", "Cyrillic"})
    assert ProfanityCheckScorer().scripts == ENGLISH_SCRIPTS


def test_unjudged_user_turns_are_recorded_but_not_counted_when_not_judged(counter, profanity):
    rows = [conversation("zh", CHINESE_INSULT, "I am sorry, I can only answer in English.")]
    out = filter_records(records_from_rows(rows), filter_cfg(), counter, profanity, None)
    assert json.loads(out.decisions.column("detail")[0].as_py())["toxicity_unjudged"] == {"user": "script: Han"}
    assert out.stats["toxicity_unjudged_rows"] == 0  # only the assistant can drop the row
    judged_user = filter_records(records_from_rows(rows), filter_cfg(roles=["user", "assistant"]), counter,
                                 profanity, None)
    assert judged_user.stats["toxicity_unjudged_rows"] == 1


@pytest.mark.parametrize("text,expected", [
    ("You are an idiot", None), ("Tu es un idiot, vraiment.", None), ("Ты идиот", "Cyrillic"),
    ("バカじゃないの", "Hiragana"), ("멍청이", "Hangul"), ("ไอ้โง่", "Thai"), ("أنت غبي", "Arabic"),
    ("12345 !!!", None), ("Translate 你好 into English please", None), ("ｆｕｃｋ", None),
])
def test_unjudged_script(text, expected):
    assert unjudged_script(text, ENGLISH_SCRIPTS) == expected


def test_unjudged_rows_sum_over_parts_and_reach_the_data_card():
    part = {"n_in": 3, "n_out": 3, "reasons": {"kept": 3}, "rows_with_hits_by_set": {},
            "toxicity_unjudged_rows": 2, "toxicity_unjudged_rows_kept": 2, "toxicity_unjudged_by_script": {"Han": 2}}
    merged = merge_stats([part, {**part, "toxicity_unjudged_by_script": {"Han": 1, "Thai": 1}}])
    assert merged["toxicity_unjudged_rows"] == 4 and merged["toxicity_unjudged_by_script"] == {"Han": 3, "Thai": 1}
    card = render_data_card({"toxicity": {"scorer": "profanity-check@1.9.1", "window": "sentence",
                                          "unjudged_rows": 4, "unjudged_rows_kept": 4,
                                          "unjudged_by_script": {"Han": 3, "Thai": 1}}})
    assert "4 rows" in card and "Han 3, Thai 1" in card and "kept" in card and "multilingual" in card


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
        out = filter_records(records_from_rows(rows), filter_cfg(backend="detoxify", window=window), counter,
                             scorer, None)
        top = json.loads(out.decisions.column("detail")[0].as_py())["toxicity_top_window"]["assistant"]
        assert top["of"] == len(scorer.windows([LONG])[0])  # one sentence: cut by tokens either way
        assert out.decisions.column("score")[0].as_py() == pytest.approx(scorer.score([LONG])[0], abs=1e-6)


def test_score_turns_sends_all_windows_in_one_call():
    class Recording:
        name = "recording"
        calls: list[list[str]] = []

        def score(self, texts):
            self.calls.append(list(texts))
            return [0.9 if "idiot" in t else 0.1 for t in texts]

    scorer = Recording()
    results = score_turns(["One. Two idiot. Three.", "Four.", "五六。"], scorer)
    assert len(scorer.calls) == 1 and scorer.calls[0] == ["One.", "Two idiot.", "Three.", "Four.", "五六。"]
    assert (results[0].score, results[0].top_window, results[0].n_windows) == (0.9, 1, 3)
    assert results[2].unjudged == Counter() and results[2].score == 0.1  # no `scripts`: judges anything


def test_recipe_window_and_scripts_fields():
    assert ToxicityConfig().window == "sentence" and ToxicityConfig().judged_scripts is None
    assert ToxicityConfig(judged_scripts=["latin", " CYRILLIC"]).judged_scripts == ["Cyrillic", "Latin"]
    base = {"name": "r", "sources": [{"name": "s", "format": "alpaca", "path": "x.json"}]}
    with pytest.raises(RecipeError, match=r"filters\.toxicity\.window"):
        parse_recipe({**base, "filters": {"toxicity": {"window": "paragraph"}}})
    with pytest.raises(RecipeError, match=r"filters\.toxicity\.judged_scripts"):
        parse_recipe({**base, "filters": {"toxicity": {"judged_scripts": []}}})
