"""One conversation tokenized as TRL's SFTTrainer tokenizes it, and the tokens that end a turn.

TRL's SFTTrainer (assistant_only_loss=True) tokenizes each conversational "messages" example with
`apply_chat_template(..., return_assistant_tokens_mask=True)`, sets labels to -100 outside the
mask and truncates to max_length keeping the start. Every place that must agree with training
tokenizes through here: the train stage's per-row decisions and round-trip check, the mask audit,
the training process's own sample record, and the evaluate stage's held-out loss.
"""

from __future__ import annotations

IGNORE_INDEX = -100  # label value cross-entropy skips (the transformers/TRL convention)
# End-of-turn tokens a chat template may close an assistant turn with: the template's end-of-turn
# token is looked up among them, and generation stops at them when the template uses them, even
# if the tokenizer's eos is a different token.
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")


def plain_messages(messages) -> list[dict]:
    # Plain dict copies: rows from Arrow/datasets stay untouched whatever the template does.
    return [dict(message) for message in messages]


def tokenize_untruncated(tokenizer, template: str, messages: list[dict]) -> dict:
    """{"input_ids", "assistant_masks"} of the whole conversation, before any truncation."""
    # The exact call TRL's SFTTrainer makes for a conversational "messages" example.
    encoded = tokenizer.apply_chat_template(
        plain_messages(messages), tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, chat_template=template,
    )
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": list(encoded["assistant_masks"])}


def tokenize_conversation(tokenizer, template: str, messages: list[dict], max_length: int) -> dict:
    """{"input_ids", "assistant_masks"} exactly as TRL builds them, truncated to max_length (keep start)."""
    full = tokenize_untruncated(tokenizer, template, messages)
    return {key: values[:max_length] for key, values in full.items()}


def supervised_counts(tokenizer, template: str, messages: list[dict], max_length: int) -> dict:
    """Token and supervised-token counts of one conversation, before and after truncation as TRL does it.

    `supervised_truncated == 0 < supervised` is a row TRL drops when not packing (and trains on
    with no loss when packing): the train stage decides it `no_supervised_tokens`.
    """
    full = tokenize_untruncated(tokenizer, template, messages)
    mask = full["assistant_masks"]
    first = next((position for position, bit in enumerate(mask) if bit), None)
    return {"n_tokens": len(full["input_ids"]), "supervised": sum(mask),
            "supervised_truncated": sum(mask[:max_length]), "first_supervised_position": first}


def conversation_labels(tokenizer, template: str, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels are the ids on assistant tokens, -100 elsewhere.

    Tokenized as TRL does with assistant_only_loss (the template's generation mask), then truncated
    to max_length keeping the start.
    """
    encoded = tokenize_conversation(tokenizer, template, messages, max_length)
    input_ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    labels = [token if supervised else IGNORE_INDEX for token, supervised in zip(input_ids, mask)]
    return input_ids, labels
