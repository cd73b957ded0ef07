"""Held-out loss, perplexity and greedy generation on the tiny Llama of tiny_chat_lm.py, on CPU, offline."""

from __future__ import annotations

import math

import pytest
import torch

from sftflow.tasks.lib.chat_tokens import IGNORE_INDEX, conversation_labels
from sftflow.tasks.lib.lm_metrics import (
    generate,
    generate_responses,
    generate_token_ids,
    heldout_loss,
    perplexity,
)
from tests.tasks.lib.tiny_chat_lm import (
    CONVERSATION,
    GENERAL_TEXTS,
    OTHER,
    TEMPLATE,
    build_model,
    fine_tune,
)
from tests.tasks.lib.tiny_chat_lm import one_cpu_thread, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tokenizer)


# ----------------------------------------------------------------------------------- loss --
def test_heldout_loss_is_the_cross_entropy_of_assistant_tokens_only(model, tokenizer):
    loss = heldout_loss(model, tokenizer, TEMPLATE, [{"messages": CONVERSATION}], max_length=512, batch_size=4)
    ids, labels = conversation_labels(tokenizer, TEMPLATE, CONVERSATION, max_length=512)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[:-1][keep], targets[keep]).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert 0 < loss < 2 * math.log(len(tokenizer))  # a random model is near uniform: about ln(V)


def test_heldout_loss_is_token_weighted_and_independent_of_padding(model, tokenizer):
    rows = [{"messages": CONVERSATION}, {"messages": OTHER}]
    single = [heldout_loss(model, tokenizer, TEMPLATE, [r], max_length=512, batch_size=1) for r in rows]
    counts = [sum(l != IGNORE_INDEX for l in conversation_labels(tokenizer, TEMPLATE, r["messages"], 512)[1][1:]) for r in rows]
    expected = (single[0] * counts[0] + single[1] * counts[1]) / sum(counts)
    batched = heldout_loss(model, tokenizer, TEMPLATE, rows, max_length=512, batch_size=2)  # right-padded batch
    assert batched == pytest.approx(expected, rel=1e-4)
    assert single[0] != pytest.approx(single[1], rel=1e-3)


def test_heldout_loss_refuses_rows_without_supervised_tokens(model, tokenizer):
    with pytest.raises(ValueError, match="max_length=6"):
        heldout_loss(model, tokenizer, TEMPLATE, [{"messages": CONVERSATION}], max_length=6, batch_size=2)


def test_fine_tuning_on_a_conversation_lowers_its_heldout_loss(tokenizer):
    rows = [{"messages": CONVERSATION}]
    model = build_model(tokenizer, seed=1)
    before = heldout_loss(model, tokenizer, TEMPLATE, rows, max_length=512, batch_size=1)
    fine_tune(model, tokenizer, CONVERSATION, steps=10)
    after = heldout_loss(model, tokenizer, TEMPLATE, rows, max_length=512, batch_size=1)
    assert after < before - 1.0


def test_perplexity_is_exp_of_the_mean_next_token_loss(model, tokenizer):
    text = GENERAL_TEXTS[0]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        mean_loss = model(input_ids=ids, labels=ids).loss.item()  # transformers skips the first token too
    assert perplexity(model, tokenizer, [text], max_length=512, batch_size=1) == pytest.approx(math.exp(mean_loss), rel=1e-5)
    with pytest.raises(ValueError, match="no token after their first"):
        perplexity(model, tokenizer, ["a"], max_length=512, batch_size=1)


# ----------------------------------------------------------------------------- generation --
def test_generation_is_greedy_deterministic_and_bounded(model, tokenizer):
    prompts = ["What is the capital of France?", "Write about rain.", "hello"]
    first = generate_token_ids(model, tokenizer, TEMPLATE, prompts, max_new_tokens=7, batch_size=2)
    again = generate_token_ids(model, tokenizer, TEMPLATE, prompts, max_new_tokens=7, batch_size=3)
    assert first == again  # greedy, and left padding does not change the result
    assert all(len(row) <= 7 for row in first)
    texts = generate_responses(model, tokenizer, TEMPLATE, prompts, max_new_tokens=7)
    assert texts == [tokenizer.decode(row, skip_special_tokens=True).strip() for row in first]


def test_generation_stops_at_the_generation_config_eos(tokenizer):
    model = build_model(tokenizer)
    free = generate_token_ids(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5)[0]
    assert len(free) == 5  # the random model never picks <|im_end|> here
    model.generation_config.eos_token_id = free[2]  # the third greedy token becomes a stop token
    stopped = generate_token_ids(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5)[0]
    assert stopped == free[: free.index(free[2])]


def test_generate_tells_a_stopped_answer_from_one_cut_at_max_new_tokens(tokenizer):
    model = build_model(tokenizer)
    [free] = generate(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5)
    assert free.truncated is True and len(free.token_ids) == 5  # the random model never ends its turn here
    model.generation_config.eos_token_id = free.token_ids[2]  # the third greedy token becomes a stop token
    [stopped] = generate(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5)
    assert stopped.truncated is False and stopped.token_ids == free.token_ids[:2]
    assert generate_token_ids(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5) == [stopped.token_ids]
