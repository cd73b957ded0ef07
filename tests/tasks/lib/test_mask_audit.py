import json

import pytest

from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.lib.assistant_turns import assistant_spans
from sftflow.tasks.lib.chat_tokens import tokenize_conversation
from sftflow.tasks.lib.mask_audit import MaskAuditError, audit_masks, check_audit
from sftflow.tasks.lib.tiny_model import conversation_texts, train_tokenizer


def row(example_id, user, answer, category="qa", source="alpha", system=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"example_id": example_id, "category": category, "source": source, "messages": messages}


ROWS = [
    row("a-1", "What is the capital of France?", "Paris is the capital.", system="Be brief."),
    row("a-2", "Add two and two.", "Two and two make four.", category="math"),
    {"example_id": "b-1", "category": "chat", "source": "beta", "messages": [
        {"role": "user", "content": "Look up the weather."},
        {"role": "assistant", "content": "Calling the weather tool."},
        {"role": "tool", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ]},
]
LONG_PROMPT = "Please read this very long question about many things " * 6

PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Marks every turn, user included: supervises prompt text.
ALL_TURNS_MARKED = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Marks assistant content but leaves <|im_end|> outside: the model never learns to stop.
EOT_OUTSIDE = CHATML_TEMPLATE.replace(
    "{{- message['content'] ~ '<|im_end|>' -}}\n{%- endgeneration -%}",
    "{{- message['content'] -}}\n{%- endgeneration -%}{{- '<|im_end|>' -}}",
)


def rows_tokenizer():
    """A tokenizer trained on ROWS and LONG_PROMPT (the chat_tokens and assistant_turns tests use it too)."""
    texts = list(conversation_texts(ROWS)) + [LONG_PROMPT]
    return train_tokenizer(texts * 5, vocab_size=330)


@pytest.fixture(scope="module")
def tokenizer():
    return rows_tokenizer()


def test_eot_outside_fixture_really_moves_the_token():
    assert EOT_OUTSIDE != CHATML_TEMPLATE and "{%- endgeneration -%}{{- '<|im_end|>' -}}" in EOT_OUTSIDE


def test_audit_of_normal_rows_passes(tokenizer):
    audit = audit_masks(ROWS, tokenizer, CHATML_TEMPLATE, max_length=256)
    json.dumps(audit)  # JSON-able as written to mask_audit.json
    share = audit["supervised_token_share"]
    assert 0 < share["overall"] < 1
    assert set(share["by_category"]) == {"qa", "math", "chat"}
    assert set(share["by_source"]) == {"alpha", "beta"}
    assert all(0 < value < 1 for value in [*share["by_category"].values(), *share["by_source"].values()])
    assert audit["n_examples"] == 3 and audit["n_zero_supervised"] == 0 and audit["n_truncated"] == 0
    assert audit["end_of_turn_token"] == "<|im_end|>"
    assert audit["end_of_turn_supervised"]["ok"] is True
    assert audit["end_of_turn_supervised"]["share_of_examples"] == 1.0
    assert audit["non_assistant_supervised"] == 0
    assert audit["example_marked_id"] == "a-1"
    assert audit["example_marked"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n⟦Paris is the capital.<|im_end|>⟧\n"
    )
    lengths = [len(tokenize_conversation(tokenizer, CHATML_TEMPLATE, r["messages"], 256)["input_ids"]) for r in ROWS]
    assert audit["mean_tokens"] == sum(lengths) / 3 and audit["tokens"] == sum(lengths)
    check_audit(audit)


def test_template_without_markers_is_refused(tokenizer):
    audit = audit_masks(ROWS, tokenizer, PLAIN_CHATML, max_length=256)
    assert audit["supervised_token_share"]["overall"] == 0.0
    assert audit["n_zero_supervised"] == 3 and audit["example_marked"] is None
    with pytest.raises(MaskAuditError, match=r"the template has no \{% generation %\} markers.*train.chat_template: chatml"):
        check_audit(audit)


def test_all_assistant_turns_truncated_away_is_refused(tokenizer):
    rows = [row(f"long-{i}", LONG_PROMPT, "Short answer.") for i in range(3)]
    audit = audit_masks(rows, tokenizer, CHATML_TEMPLATE, max_length=16)
    assert audit["n_zero_supervised"] == 3 and audit["n_truncated"] == 3
    assert audit["n_zero_supervised_before_truncation"] == 0
    assert audit["zero_supervised_example_ids"] == ["long-0", "long-1", "long-2"]
    with pytest.raises(MaskAuditError, match=r"3 of 3 examples have no supervised token after truncation to "
                       r"max_length=16 \(e.g. example ids long-0, long-1, long-2\).*raise train.max_length"):
        check_audit(audit)


def test_one_truncated_example_among_good_ones_is_named(tokenizer):
    rows = ROWS + [row("long-9", LONG_PROMPT, "Short answer.")]
    audit = audit_masks(rows, tokenizer, CHATML_TEMPLATE, max_length=64)
    assert audit["n_zero_supervised"] == 1 and audit["truncated_to_zero_example_ids"] == ["long-9"]
    with pytest.raises(MaskAuditError) as raised:
        check_audit(audit)
    assert str(raised.value) == (  # the only problem: b-1's cut second turn is not one
        "mask audit failed: 1 of 4 examples have no supervised token after truncation to max_length=64 "
        "(e.g. example ids long-9); TRL would silently drop them: raise train.max_length or drop long "
        "prompts with filters.length.max_total_tokens"
    )


def test_supervision_outside_assistant_turns_is_refused(tokenizer):
    audit = audit_masks(ROWS, tokenizer, ALL_TURNS_MARKED, max_length=256)
    assert audit["non_assistant_supervised"] > 0
    assert audit["non_assistant_example_ids"] == ["a-1", "a-2", "b-1"]
    with pytest.raises(MaskAuditError, match="supervised tokens lie outside assistant turns"):
        check_audit(audit)


def test_unsupervised_end_of_turn_is_refused(tokenizer):
    audit = audit_masks(ROWS, tokenizer, EOT_OUTSIDE, max_length=256)
    assert audit["non_assistant_supervised"] == 0 and audit["n_zero_supervised"] == 0
    eot = audit["end_of_turn_supervised"]
    assert eot["ok"] is False and eot["share_of_examples"] == 0.0 and eot["n_examples_missing"] == 3
    assert "⟦Paris is the capital.⟧<|im_end|>" in audit["example_marked"]
    with pytest.raises(MaskAuditError, match=r"end-of-turn token <\|im_end\|> is not supervised in 3 of 3 examples"):
        check_audit(audit)


def test_empty_audit_is_refused(tokenizer):
    with pytest.raises(MaskAuditError, match="no training examples"):
        check_audit(audit_masks([], tokenizer, CHATML_TEMPLATE, max_length=64))


# ------------------------------------------------------------ assistant content supervision --
# ChatML whose {% generation %} block holds only <|im_end|>: every other check passes (something is
# supervised, nothing outside assistant turns, the end-of-turn token is), yet no answer is learned.
EOT_ONLY = CHATML_TEMPLATE.replace(
    "{{- message['content'] ~ '<|im_end|>' -}}\n{%- endgeneration -%}",
    "{%- endgeneration -%}",
).replace(
    "{{- '<|im_start|>assistant\\n' -}}\n{%- generation -%}",
    "{{- '<|im_start|>assistant\\n' ~ message['content'] -}}\n{%- generation -%}{{- '<|im_end|>' -}}",
)
# The first half of the content outside the block, the second half (and <|im_end|>) inside.
HALF_CONTENT = CHATML_TEMPLATE.replace(
    "{{- '<|im_start|>assistant\\n' -}}\n{%- generation -%}\n{{- message['content'] ~ '<|im_end|>' -}}",
    "{%- set half = message['content'] | length // 2 -%}"
    "{{- '<|im_start|>assistant\\n' ~ message['content'][:half] -}}\n{%- generation -%}\n"
    "{{- message['content'][half:] ~ '<|im_end|>' -}}",
)
# Rewrites the assistant content, so it cannot be found in the rendering.
UPPERCASED = CHATML_TEMPLATE.replace("{{- message['content'] ~ '<|im_end|>' -}}",
                                     "{{- message['content'] | upper ~ '<|im_end|>' -}}")
SYSTEM = "You are a careful assistant. Answer in full sentences and cite the tool output when there is one. " * 3


def content_corpus():
    """Multi-turn, tool turns, an empty tool-call turn, CJK and accents, a shared long system prompt,
    an answer repeating the user's words, and long conversations that max_length=400 cuts."""
    return [
        {"example_id": "multi", "category": "chat", "source": "alpha", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Say exactly: Paris is the capital."},
            {"role": "assistant", "content": "Paris is the capital."},  # also in the user turn, earlier
            {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "Paris is the capital."},  # same text: its own tokens
        ]},
        {"example_id": "tool", "category": "chat", "source": "beta", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Look up the weather."},
            {"role": "assistant", "content": ""},  # a pure tool call: no content to check
            {"role": "tool", "content": '{"temp_c": 21}'},
            {"role": "assistant", "content": "  It is 21 degrees.\n"},  # surrounding whitespace kept
        ]},
        row("cjk", "東京の天気は？", "東京は晴れです。気温は二十一度、湿度は低めです。", system=SYSTEM),
        row("accents", "Ça va ?", "Très bien, merci ! Ünïcödé ✓ — 😀", system=SYSTEM),
        row("long", "Explain at length.", "Every word here matters to the answer. " * 30, system=SYSTEM),
        {"example_id": "cut-second", "category": "chat", "source": "alpha", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": LONG_PROMPT * 3}, {"role": "assistant", "content": "Gone after truncation."},
        ]},
    ]


def test_end_of_turn_only_template_is_refused_for_unsupervised_content(tokenizer):
    audit = audit_masks(ROWS, tokenizer, EOT_ONLY, max_length=256)
    # What the older checks look at is all fine: this template was accepted before.
    assert audit["n_zero_supervised"] == 0 and audit["non_assistant_supervised"] == 0
    assert audit["end_of_turn_supervised"]["ok"] is True
    assert "⟦<|im_end|>⟧" in audit["example_marked"] and "⟦Paris" not in audit["example_marked"]
    with pytest.raises(MaskAuditError, match=(
        r"4 of 4 assistant turns have less than 95% of their content tokens supervised \(lowest share 0\.00, "
        r"e\.g\. example ids a-1, a-2, b-1\).*wrap the assistant content, not only the end-of-turn token, in "
        r"\{% generation %\}\.\.\.\{% endgeneration %\}")):
        check_audit(audit)
    assert audit["assistant_content_supervised"] == {
        "ok": False, "min_share": 0.0, "threshold": 0.95, "n_turns": 4, "n_turns_below": 4,
        "example_ids_below": ["a-1", "a-2", "b-1"], "n_turns_not_located": 0, "example_ids_not_located": [],
        "n_rows_without_offsets": 0, "n_turns_truncated_away": 0,
    }


def test_chatml_supervises_all_content_of_every_turn(tokenizer):
    rows = content_corpus()
    audit = audit_masks(rows, tokenizer, CHATML_TEMPLATE, max_length=400, min_content_supervised_share=1.0)
    content = audit["assistant_content_supervised"]
    assert audit["n_truncated"] == 2  # "long" is cut inside its answer, "cut-second" before its second one
    # 2 + 1 (the empty tool-call turn is skipped) + 1 + 1 + 1 (cut inside) + 1 (second turn cut away)
    assert content["n_turns"] == 7 and content["n_turns_truncated_away"] == 1
    assert content["min_share"] == 1.0 and content["n_turns_below"] == 0 and content["ok"] is True
    assert content["n_turns_not_located"] == 0 and content["n_rows_without_offsets"] == 0
    check_audit(audit, min_content_supervised_share=1.0)


def test_content_tokens_are_the_ones_carrying_the_text(tokenizer):
    # Under EOT_ONLY, each checked token carries content text: the share is 0 even for CJK pieces
    # that split one character over several byte-level tokens (they share its offsets).
    rows = [r for r in content_corpus() if r["example_id"] in ("cjk", "accents", "multi")]
    audit = audit_masks(rows, tokenizer, EOT_ONLY, max_length=512)
    content = audit["assistant_content_supervised"]
    assert content["n_turns"] == 4 and content["n_turns_below"] == 4 and content["min_share"] == 0.0


def test_template_supervising_half_the_content_is_refused(tokenizer):
    audit = audit_masks(ROWS, tokenizer, HALF_CONTENT, max_length=256)
    assert audit["non_assistant_supervised"] == 0 and audit["end_of_turn_supervised"]["ok"] is True
    content = audit["assistant_content_supervised"]
    assert 0.3 < content["min_share"] < 0.7 and content["n_turns_below"] == 4
    with pytest.raises(MaskAuditError, match=r"4 of 4 assistant turns have less than 95% of their content"):
        check_audit(audit)
    # A threshold the half-supervised turns meet lets them through; it must be given to both calls.
    lenient = audit_masks(ROWS, tokenizer, HALF_CONTENT, max_length=256, min_content_supervised_share=0.3)
    check_audit(lenient, min_content_supervised_share=0.3)
    with pytest.raises(ValueError, match="pass the same threshold to both"):
        check_audit(lenient)


def test_content_the_template_rewrites_is_reported_not_passed_silently(tokenizer):
    from sftflow.tasks.lib.train_checks import audit_summary

    audit = audit_masks(ROWS, tokenizer, UPPERCASED, max_length=256)
    content = audit["assistant_content_supervised"]
    assert content["n_turns"] == 0 and content["min_share"] is None
    assert content["n_turns_not_located"] == 4 and content["example_ids_not_located"] == ["a-1", "a-2", "b-1"]
    summary = audit_summary(audit)
    assert summary["assistant_turns_content_not_located"] == 4
    assert summary["assistant_content_min_supervised_share"] is None
    assert content["ok"] is False  # a check that never ran is not a pass
    with pytest.raises(MaskAuditError, match="renders message content changed"):
        check_audit(audit)


def test_content_share_reaches_the_summary_and_the_artifact(tokenizer, monkeypatch):
    import sftflow.flows.publish as publish
    from sftflow.tasks.lib.train_checks import audit_summary

    audit = audit_masks(ROWS, tokenizer, CHATML_TEMPLATE, max_length=256)
    summary = audit_summary(audit)
    assert summary["assistant_content_min_supervised_share"] == 1.0
    assert summary["assistant_content_share_threshold"] == 0.95
    assert summary["assistant_turns_below_threshold"] == 0

    published = []
    monkeypatch.setattr(publish, "create_markdown_artifact", lambda **kw: published.append(kw["markdown"]))

    class FakeManifest:  # publish_training reads stats and file paths only
        stats = {"mask_audit": summary}

        def file(self, name):
            from pathlib import Path
            return Path("/nonexistent") / name

    publish.publish_training(FakeManifest(), "run-1")
    assert "| assistant_content_min_supervised_share | 1.0 |" in published[0]
    assert "at least 100% of each checked assistant turn's content tokens (threshold 95%)" in published[0]


def test_without_offsets_turns_are_reported_not_located(tokenizer, monkeypatch):
    import sftflow.tasks.lib.assistant_turns as assistant_turns

    # The two ways to find turns agree where both work.
    messages = ROWS[2]["messages"]
    ids = tokenize_conversation(tokenizer, CHATML_TEMPLATE, messages, 10_000)["input_ids"]
    by_offsets = assistant_spans(tokenizer, CHATML_TEMPLATE, messages)
    assert by_offsets == assistant_turns._assistant_spans_by_prefix_ids(tokenizer, CHATML_TEMPLATE, messages, ids)
    # A tokenizer whose offsets cannot be tied to the rendering (slow, or ids that differ): spans
    # fall back to token prefixes and every content turn is reported, not counted as fine.
    monkeypatch.setattr(assistant_turns, "_offsets", lambda tokenizer, text, ids: None)
    audit = audit_masks(ROWS, tokenizer, CHATML_TEMPLATE, max_length=256)
    content = audit["assistant_content_supervised"]
    assert content["n_rows_without_offsets"] == 3 and content["n_turns_not_located"] == 4
    # no turn could be checked: not a pass, and the error says why and how to proceed
    assert content["n_turns"] == 0 and content["ok"] is False
    with pytest.raises(MaskAuditError, match="none of the 4 assistant turns could be checked"):
        check_audit(audit)
    skipped = audit_masks(ROWS, tokenizer, CHATML_TEMPLATE, max_length=256, min_content_supervised_share=0.0)
    assert skipped["assistant_content_supervised"]["ok"] is True
    check_audit(skipped, min_content_supervised_share=0.0)
    assert audit["non_assistant_supervised"] == 0 and audit["end_of_turn_supervised"]["ok"] is True
    assert assistant_spans(tokenizer, CHATML_TEMPLATE, messages) == by_offsets
