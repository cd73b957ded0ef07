"""Assistant turns found without the generation markers, by rendering growing prefixes."""

from __future__ import annotations

import pytest

from sftflow.tasks.lib.assistant_turns import assistant_spans
from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.lib.chat_tokens import tokenize_conversation
from tests.tasks.lib.test_mask_audit import ROWS, rows_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return rows_tokenizer()


def test_assistant_spans_found_from_prefixes(tokenizer):
    messages = ROWS[2]["messages"]
    ids = tokenize_conversation(tokenizer, CHATML_TEMPLATE, messages, max_length=10_000)["input_ids"]
    spans = assistant_spans(tokenizer, CHATML_TEMPLATE, messages)
    assert [tokenizer.decode(ids[start:end]) for start, end in spans] == [
        "Calling the weather tool.<|im_end|>\n", "It is 21 degrees.<|im_end|>\n",
    ]
