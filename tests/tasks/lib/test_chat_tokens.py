"""One conversation tokenized as TRL's SFTTrainer does it: the assistant mask, truncation keeping the
start, the counts the train stage decides on, and the labels held-out loss is computed with."""

from __future__ import annotations

import json

import pytest

from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.lib.chat_tokens import IGNORE_INDEX, conversation_labels, supervised_counts, tokenize_conversation
from tests.tasks.lib.test_mask_audit import LONG_PROMPT, ROWS, row, rows_tokenizer
from tests.tasks.lib.tiny_chat_lm import CONVERSATION, OTHER, TEMPLATE, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return rows_tokenizer()


@pytest.fixture(scope="module")
def chat_lm_tokenizer():
    """The tokenizer of the evaluation tests' tiny Llama (tiny_chat_lm.py)."""
    return build_tokenizer()


# ---------------------------------------------------------------------------- tokenization --
def test_tokenize_conversation_is_apply_chat_template_truncated(tokenizer):
    messages = ROWS[2]["messages"]
    reference = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=CHATML_TEMPLATE
    )
    full = tokenize_conversation(tokenizer, CHATML_TEMPLATE, messages, max_length=10_000)
    assert full == {"input_ids": list(reference["input_ids"]), "assistant_masks": list(reference["assistant_masks"])}
    short = tokenize_conversation(tokenizer, CHATML_TEMPLATE, messages, max_length=9)
    assert short == {"input_ids": full["input_ids"][:9], "assistant_masks": full["assistant_masks"][:9]}


def test_tokenize_conversation_matches_trl_labels(tokenizer, tmp_path):
    # The same rows through TRL's own dataset preparation: identical ids and labels, and the
    # example that truncation leaves without a supervised token is silently dropped by TRL.
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = ROWS + [row("long-1", LONG_PROMPT, "Short answer.")]
    max_length = 56  # cuts a-1 and b-1 inside an assistant turn, long-1 inside its prompt
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    ))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), assistant_only_loss=True, max_length=max_length, packing=False,
                     use_cpu=True, report_to=[])
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    prepared = {json.dumps(ex["messages"]): ex for ex in trainer.train_dataset}

    supervised_rows = 0
    for r in rows:
        ours = tokenize_conversation(tokenizer, CHATML_TEMPLATE, r["messages"], max_length)
        labels = [t if bit else -100 for t, bit in zip(ours["input_ids"], ours["assistant_masks"])]
        theirs = prepared.get(json.dumps(r["messages"]))
        if not any(ours["assistant_masks"]):
            assert theirs is None, r["example_id"]
            continue
        supervised_rows += 1
        assert (theirs["input_ids"], theirs["labels"]) == (ours["input_ids"], labels), r["example_id"]
    assert supervised_rows == len(trainer.train_dataset) == len(rows) - 1


def test_supervised_counts_before_and_after_truncation(tokenizer):
    messages = row("long-1", LONG_PROMPT, "Short answer.")["messages"]
    full = tokenize_conversation(tokenizer, CHATML_TEMPLATE, messages, max_length=10_000)
    counts = supervised_counts(tokenizer, CHATML_TEMPLATE, messages, max_length=16)
    first = full["assistant_masks"].index(1)
    assert counts == {"n_tokens": len(full["input_ids"]), "supervised": sum(full["assistant_masks"]),
                      "supervised_truncated": 0, "first_supervised_position": first}
    assert first >= 16  # the prompt alone fills max_length: TRL would drop the row
    assert supervised_counts(tokenizer, CHATML_TEMPLATE, messages, max_length=10_000)["supervised_truncated"] \
        == counts["supervised"] > 0


# --------------------------------------------------------------------------------- labels --
def test_labels_cover_exactly_the_assistant_content_and_end_of_turn(chat_lm_tokenizer):
    ids, labels = conversation_labels(chat_lm_tokenizer, TEMPLATE, OTHER, max_length=512)
    supervised = [token for token in labels if token != IGNORE_INDEX]
    assert chat_lm_tokenizer.decode(supervised) == "Rain falls soft.<|im_end|>The moon looked at the cat.<|im_end|>"
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))


def test_labels_truncate_keeping_the_start(chat_lm_tokenizer):
    full_ids, _ = conversation_labels(chat_lm_tokenizer, TEMPLATE, CONVERSATION, max_length=512)
    ids, labels = conversation_labels(chat_lm_tokenizer, TEMPLATE, CONVERSATION, max_length=6)
    assert ids == full_ids[:6]
    assert labels == [IGNORE_INDEX] * 6  # the user turn alone fills 6 tokens
