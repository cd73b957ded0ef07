"""Row reading helpers: the fast paths of raw_preview and decode_row equal the plain ones."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.lib.rows import _PREVIEW_ENCODER, ROW_DECODER, decode_row, escape_surrogates, raw_preview

_TEXT = st.text(max_size=20) | st.sampled_from(["\ud800", "a\udfffb", '"', "\\", "\n\r\t\x00\x1f\x7f", "é\u2028😀"])
_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _TEXT,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                       max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_TEXT, _TEXT, max_size=4) | st.dictionaries(_TEXT, _VALUES, max_size=4) | _VALUES)
def test_raw_preview_is_the_json_encoders_text(value):
    assert raw_preview(value) == escape_surrogates(_PREVIEW_ENCODER.encode(value)[:2000])


def test_raw_preview_cuts_long_rows():
    assert raw_preview({"a": "x" * 5000}) == '{"a": "' + "x" * 1993


_JSON_PIECES = ['{"a": 1}', ' {"a": 1}', '{"a": 1} ', '{"a": 1, "a": 2}', '{"a": [1, 2', "[1, 2]", "NaN", '"x"',
                "", " ", "{}", '{"a": "\\ud800"}', "1" * 5000, "[" * 5000 + "]" * 5000, '{"a": 1}{"b": 2}', "tru"]


@pytest.mark.parametrize("text", _JSON_PIECES)
def test_decode_row_is_the_row_decoder(text):
    _same_outcome(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(['{', '}', '[', ']', '"a"', ":", ",", "1", " ", '"\\u00e9"', "null"]),
                max_size=12).map("".join))
def test_decode_row_is_the_row_decoder_on_any_text(text):
    _same_outcome(text)


def _same_outcome(text: str) -> None:
    def outcome(decode):
        try:
            return "value", json.dumps(decode(text))
        except Exception as error:  # the same exception type and message
            return "error", type(error).__name__, str(error)

    assert outcome(decode_row) == outcome(ROW_DECODER.decode)
