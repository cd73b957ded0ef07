"""Toxicity scoring: profanity-check on literal texts, and the windows and scripts the filter judges.

Windows and scripts (issue 13): insults buried in 150-250-word answers (tests/tasks/lib/toxicity_corpus.py,
generated and from ../shared/data) must be caught by sentence windows without dropping clean long
answers; a turn in a script the backend cannot read is recorded as unjudged, not scored clean.
The detoxify backend's own token windows: test_detoxify_scorer.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.core.recipe import RecipeError, parse_recipe
from sftflow.tasks.core.recipe_filters import FilterConfig, ToxicityConfig
from tests.stage_helpers import records_from_rows
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.filters import filter_records, merge_stats
from sftflow.tasks.lib.model_card import render_data_card
from sftflow.tasks.lib.toxicity import (
    ENGLISH_SCRIPTS,
    PROFANITY_WINDOW_WORDS,
    ProfanityCheckScorer,
    score_turns,
    split_sentences,
    unjudged_script,
    word_windows,
)
from sftflow.tasks.lib.toxicity_loader import load_toxicity_scorer
from tests.tasks.lib.toxicity_corpus import (
    INSULTS,
    SHARED_ALPACA,
    alpaca_long_answers,
    buried_insults,
    conversation,
    generated_answers,
)


def test_profanity_check_scores_real_wording():
    scorer = ProfanityCheckScorer()
    toxic, clean = scorer.score(["You are a fucking idiot and a piece of shit.", "The capital of France is Paris."])
    assert toxic > 0.99 and clean < 0.1
    assert scorer.score([]) == []
    assert scorer.name.startswith("profanity-check@")


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
    part = {"n_in": 3, "n_out": 3, "n_measured": 1, "n_reused": 2, "reasons": {"kept": 3}, "rows_with_hits_by_set": {},
            "toxicity_unjudged_rows": 2, "toxicity_unjudged_rows_kept": 2, "toxicity_unjudged_by_script": {"Han": 2}}
    merged = merge_stats([part, {**part, "toxicity_unjudged_by_script": {"Han": 1, "Thai": 1}}])
    assert merged["toxicity_unjudged_rows"] == 4 and merged["toxicity_unjudged_by_script"] == {"Han": 3, "Thai": 1}
    assert (merged["n_measured"], merged["n_reused"]) == (2, 4)
    card = render_data_card({"toxicity": {"scorer": "profanity-check@1.9.1", "window": "sentence",
                                          "unjudged_rows": 4, "unjudged_rows_kept": 4,
                                          "unjudged_by_script": {"Han": 3, "Thai": 1}}})
    assert "4 rows" in card and "Han 3, Thai 1" in card and "kept" in card and "multilingual" in card


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



# ------------------------------------------------------- fast cuts equal the reference cuts --
_REFERENCE_SENTENCE_END = re.compile(r"(?<=[.!?…][\"'”’)\]])\s+|(?<=[.!?…])\s+|(?<=[。！？])|\s*\n\s*")


def reference_split_sentences(text: str) -> list[str]:
    """The sentence split as one regex states it (split_sentences skips to white space when it can)."""
    return [piece.strip() for piece in _REFERENCE_SENTENCE_END.split(text) if piece and piece.strip()]


def reference_word_windows(text: str, max_words: int) -> list[str]:
    """Word windows from `\\S+` match spans (word_windows uses str.split instead)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if len(spans) <= max_words:
        return [text]
    stride = max(1, max_words // 2)
    windows = []
    for start in range(0, len(spans), stride):
        end = min(start + max_words, len(spans))
        windows.append(text[spans[start][0]: spans[end - 1][1]])
        if end == len(spans):
            break
    return windows


def test_python_white_space_is_the_regex_white_space():
    """str.split()/strip() and `\\s` agree on every code point, so word counts and cuts agree."""
    for code in range(0x110000):
        char = chr(code)
        assert (re.fullmatch(r"\s", char) is not None) == char.isspace() == (char.strip() == ""), hex(code)


_CUT_CHARS = list("ab .!?…\"'”’)]。！？\n\t") + ["\xa0", "\u2003", "\u2028", "\x1c", "\r\n", "x y", "Hi. "]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_CUT_CHARS), max_size=60).map("".join), st.integers(min_value=1, max_value=9))
def test_fast_cuts_equal_reference_cuts(text, max_words):
    assert split_sentences(text) == reference_split_sentences(text)
    assert word_windows(text, max_words) == reference_word_windows(text, max_words)


def test_fast_cuts_equal_reference_cuts_on_the_corpus():
    clean = generated_answers(100)
    texts = clean + buried_insults(clean) + [CHINESE_INSULT, "Sure. " + CHINESE_INSULT + " OK?"]
    for text in texts:
        assert split_sentences(text) == reference_split_sentences(text)
        for piece in [text] + split_sentences(text):
            assert word_windows(piece, PROFANITY_WINDOW_WORDS) == reference_word_windows(piece, PROFANITY_WINDOW_WORDS)


def test_windows_cut_by_score_turns_are_scored_without_a_second_cut():
    class Cutting:
        name = "cutting"
        scored: list[list[str]] = []

        def windows(self, texts):
            return [word_windows(text, 2) for text in texts]

        def score(self, texts):
            raise AssertionError("score() cuts again: score_turns must use score_windows")

        def score_windows(self, windows):
            self.scored.append(list(windows))
            return [0.9 if "idiot" in w else 0.1 for w in windows]

    scorer = Cutting()
    results = score_turns(["One two three. You idiot."], scorer)
    assert scorer.scored == [["One two", "two three.", "You idiot."]]
    assert (results[0].score, results[0].top_window, results[0].n_windows, results[0].excerpt) == (0.9, 2, 3, "You idiot.")


def test_profanity_scorer_scores_windows_as_predict_prob_does(profanity):
    from profanity_check import predict_prob

    windows = [w for a in buried_insults(generated_answers(30)) for s in split_sentences(a)
               for w in word_windows(s, PROFANITY_WINDOW_WORDS)]
    assert profanity.score_windows(windows) == [float(p) for p in predict_prob(windows)]
    assert profanity.score(windows[:50]) == profanity.score_windows(windows[:50])  # none is cut again


# ------------------------------------------------ score_turns equals the window-by-window loop --
def reference_score_turns(texts, scorer, mode="sentence"):
    """score_turns as one loop over the windows: the first highest-scoring judged window wins."""
    from sftflow.tasks.lib.toxicity import TurnToxicity, _excerpt, turn_windows

    per_text = [[w for piece in turn_windows(text, mode) for w in scorer.windows([piece])[0]] for text in texts]
    results = [TurnToxicity(score=None, n_windows=len(windows)) for windows in per_text]
    for t, windows in enumerate(per_text):
        for w, window in enumerate(windows):
            script = unjudged_script(window, scorer.scripts)
            if script is not None:
                results[t].unjudged[script] += 1
                continue
            value = scorer.score_windows([window])[0]
            if results[t].score is None or value > results[t].score:
                results[t].score, results[t].top_window, results[t].excerpt = float(value), w, _excerpt(window)
    return results


class _Coarse:
    """Few distinct scores (ties between windows), NaN for one word, two-word windows."""

    name = "coarse"
    scripts = ENGLISH_SCRIPTS

    def windows(self, texts):
        return [word_windows(text, 2) for text in texts]

    def score_windows(self, windows):
        return [float("nan") if "nan" in w else (len(w) % 3) / 2 for w in windows]

    score = score_windows


_TURN_PIECES = ["one", "two", "idiot", "nan", "Ты", "白痴", "。", ". ", "! ", "\n", " ", "x y z"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_TURN_PIECES), min_size=1, max_size=25).map("".join)
                .filter(str.strip), max_size=6), st.sampled_from(["sentence", "turn"]))
def test_score_turns_equals_the_window_by_window_loop(texts, mode):
    def key(results):
        return [(r.score if r.score == r.score else "nan", r.n_windows, r.top_window, r.excerpt, r.unjudged)
                for r in results]

    assert key(score_turns(texts, _Coarse(), mode)) == key(reference_score_turns(texts, _Coarse(), mode))
