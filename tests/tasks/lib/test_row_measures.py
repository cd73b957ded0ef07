"""The filter memo's JSON of a row's measures: whatever they hold (counts are 64-bit integers),
reading it back gives them back."""

from __future__ import annotations

import json
import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.lib.decontaminate import RowMatch
from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.lib.row_measures import RowMeasures, from_json, to_json, turns_hash
from sftflow.tasks.lib.toxicity import RoleToxicity

# Any text, lone surrogates included (a source may spell one as an escape).
texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
scores = st.none() | st.floats(allow_nan=True, allow_infinity=True)
tops = st.none() | st.fixed_dictionaries({"turn": st.integers(0, 50), "window": st.integers(0, 50),
                                          "of": st.integers(1, 50), "excerpt": texts})
roles = st.dictionaries(st.sampled_from(["user", "assistant", "system", "tool"]), st.builds(
    RoleToxicity, score=scores, top=tops, unjudged=st.builds(Counter, st.dictionaries(texts, st.integers(1, 9))),
    n_windows=st.integers(0, 10**6)), max_size=3)
matches = st.builds(RowMatch, hits_by_set=st.dictionaries(texts, st.integers(0, 2**63 - 1), max_size=2),
                    matches=st.lists(st.fixed_dictionaries({"eval_set": texts, "item": texts, "by": texts}),
                                     max_size=2))
measures = st.builds(RowMeasures, n_tokens_prompt=st.integers(0, 10**7), n_tokens_response=st.integers(0, 10**7),
                     toxicity=roles, decon=matches)


def _same(a: RowMeasures, b: RowMeasures) -> bool:
    """Equal, with NaN equal to NaN (a NaN score must come back a NaN, not null)."""
    def scores_of(m: RowMeasures) -> list:
        return [("nan" if t.score is not None and math.isnan(t.score) else t.score) for t in m.toxicity.values()]

    def rest(m: RowMeasures):
        return (m.n_tokens_prompt, m.n_tokens_response, m.decon,
                [(role, t.top, t.unjudged, t.n_windows) for role, t in m.toxicity.items()])

    return scores_of(a) == scores_of(b) and rest(a) == rest(b)


@settings(max_examples=300, deadline=None)
@given(measures)
def test_measures_come_back_from_their_json(m):
    text = to_json(m)
    text.encode("utf-8")  # what the memo's Arrow string column holds (a lone surrogate cannot be)
    back = from_json(text)
    assert _same(back, m)
    assert list(back.toxicity) == list(m.toxicity)  # role order, which the decision detail keeps
    assert _same(from_json(json.dumps(json.loads(text), ensure_ascii=False)), m)  # plain JSON either way


def test_a_nan_score_is_written_as_nan_not_null():
    m = RowMeasures(1, 2, {"assistant": RoleToxicity(float("nan"), None, Counter(), 1)}, RowMatch({}, []))
    assert "NaN" in to_json(m)
    assert math.isnan(from_json(to_json(m)).toxicity["assistant"].score)


# Valid text only: a lone surrogate takes short_hash's own path.
valid_texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)),
                      max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({"role": valid_texts, "content": st.none() | valid_texts}), max_size=4))
def test_turns_hash_is_the_short_hash_of_the_turns(messages):
    # the memo's keys stay those of memos written before turns_hash used orjson
    assert turns_hash(messages) == short_hash([[m["role"], m["content"]] for m in messages])
