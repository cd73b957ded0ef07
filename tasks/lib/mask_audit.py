"""What the loss will actually see: an audit of the assistant masks as TRL builds them.

TRL's SFTTrainer (assistant_only_loss=True) tokenizes each conversation with
`apply_chat_template(..., return_assistant_tokens_mask=True)`, sets labels to -100 outside the
mask, truncates to max_length keeping the start, and then silently drops every example left
without a supervised token. A prompt longer than max_length, or a template whose
`{% generation %}` block misses the assistant text, therefore trains on less than it seems, or on
nothing, without an error. This module takes that tokenization (tasks/lib/chat_tokens.py) and
checks the result against assistant turns found independently (by rendering growing prefixes:
tasks/lib/assistant_turns.py), so the train stage can stop before launching a run that would
learn the wrong thing. Each assistant turn's content is also located in the rendered text and
mapped onto tokens by their character offsets, so a template whose block holds only the
end-of-turn token (the answer itself never supervised) is caught too.
"""

from __future__ import annotations

from collections import defaultdict

from sftflow.tasks.lib.assistant_turns import content_shares, row_layout
from sftflow.tasks.lib.chat_template import ChatTemplateError, end_of_turn_token, has_generation_markers
from sftflow.tasks.lib.chat_tokens import plain_messages, tokenize_untruncated

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
MAX_LISTED_IDS = 20  # example ids kept in the audit JSON per problem (counts are always complete)
# Share of each assistant turn's content tokens that must be supervised (TrainConfig's default too).
MIN_CONTENT_SUPERVISED_SHARE = 0.95


class MaskAuditError(ValueError):
    """The masks would train on nothing, on non-assistant text, on too little of the answers, or never
    on the end-of-turn token."""


def _marked_text(tokenizer, input_ids: list[int], mask: list[int]) -> str:
    """Decode with each run of supervised tokens wrapped in ⟦ ⟧."""
    pieces: list[str] = []
    run_start = 0
    for position in range(1, len(input_ids) + 1):
        if position == len(input_ids) or mask[position] != mask[run_start]:
            text = tokenizer.decode(input_ids[run_start:position], skip_special_tokens=False)
            pieces.append(f"{MARK_OPEN}{text}{MARK_CLOSE}" if mask[run_start] else text)
            run_start = position
    return "".join(pieces)


def _share(supervised: int, total: int) -> float:
    return supervised / total if total else 0.0


def audit_masks(rows: list[dict], tokenizer, template: str, max_length: int,
                min_content_supervised_share: float = MIN_CONTENT_SUPERVISED_SHARE) -> dict:
    """The JSON-able mask audit of `rows` (messages, category, source, example_id); see check_audit.

    Besides the per-example checks, every assistant turn's content is checked on its own: the
    tokens carrying the message's content text (found in the rendered conversation and mapped with
    token offsets; only those surviving truncation) must be supervised at `min_content_supervised_share`
    or more, so a template that supervises only the end-of-turn token is caught.
    """
    try:
        eot_token = end_of_turn_token(template, tokenizer)
        eot_id = tokenizer.convert_tokens_to_ids(eot_token)
    except ChatTemplateError:
        eot_token, eot_id = None, None

    supervised_total = tokens_total = 0
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [supervised, tokens]
    by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    zero_ids: list[str] = []
    zero_before_truncation_ids: list[str] = []
    truncated_to_zero_ids: list[str] = []  # supervised before truncation, nothing left after
    non_assistant_supervised = 0
    non_assistant_ids: list[str] = []
    eot_examples = eot_missing = eot_checked = 0
    eot_missing_ids: list[str] = []
    n_truncated = 0
    untruncated_tokens = 0
    marked_text, marked_id = None, None
    content_turns = content_below = content_not_located = content_truncated_away = 0
    content_min_share: float | None = None
    content_below_ids: list[str] = []
    content_not_located_ids: list[str] = []
    rows_without_offsets = 0

    for row in rows:
        example_id = str(row["example_id"])
        messages = plain_messages(row["messages"])
        full = tokenize_untruncated(tokenizer, template, messages)
        ids, mask = full["input_ids"][:max_length], full["assistant_masks"][:max_length]
        untruncated_tokens += len(full["input_ids"])
        n_truncated += len(full["input_ids"]) > max_length

        supervised = sum(mask)
        supervised_total += supervised
        tokens_total += len(ids)
        for bucket in (by_category[str(row.get("category"))], by_source[str(row.get("source"))]):
            bucket[0] += supervised
            bucket[1] += len(ids)
        if supervised == 0:
            zero_ids.append(example_id)
            if sum(full["assistant_masks"]) == 0:
                zero_before_truncation_ids.append(example_id)
            else:
                truncated_to_zero_ids.append(example_id)
        elif marked_text is None:
            marked_text, marked_id = _marked_text(tokenizer, ids, mask), example_id

        layout = row_layout(tokenizer, template, messages, full["input_ids"])
        spans = [(start, min(end, len(ids))) for start, end in layout["token_spans"]]
        inside = [False] * len(ids)
        for start, end in spans:
            for position in range(start, end):
                inside[position] = True
        outside = sum(1 for position, bit in enumerate(mask) if bit and not inside[position])
        if outside:
            non_assistant_supervised += outside
            non_assistant_ids.append(example_id)

        if eot_id is not None and any(t == eot_id and bit for t, bit in zip(ids, mask)):
            eot_examples += 1
        # Only turns whose end-of-turn token survived truncation can be checked for it.
        turn_eot_supervised = [
            any(mask[p] for p in range(start, end) if ids[p] == eot_id)
            for start, end in spans
            if eot_id is not None and eot_id in ids[start:end]
        ]
        if turn_eot_supervised:
            eot_checked += 1
            if not all(turn_eot_supervised):
                eot_missing += 1
                eot_missing_ids.append(example_id)

        shares, not_located, truncated_away = content_shares(messages, layout, mask)
        rows_without_offsets += layout["offsets"] is None
        content_turns += len(shares)
        content_truncated_away += truncated_away
        if shares:
            lowest = min(shares)
            content_min_share = lowest if content_min_share is None else min(content_min_share, lowest)
        below = sum(share < min_content_supervised_share for share in shares)
        if below:
            content_below += below
            content_below_ids.append(example_id)
        if not_located:
            content_not_located += not_located
            content_not_located_ids.append(example_id)

    n_examples = len(rows)
    return {
        "n_examples": n_examples,
        "max_length": max_length,
        "template_has_generation_markers": has_generation_markers(template),
        "supervised_token_share": {
            "overall": _share(supervised_total, tokens_total),
            "by_category": {k: _share(*v) for k, v in sorted(by_category.items())},
            "by_source": {k: _share(*v) for k, v in sorted(by_source.items())},
        },
        "supervised_tokens": supervised_total,
        "tokens": tokens_total,
        "n_zero_supervised": len(zero_ids),
        "zero_supervised_example_ids": zero_ids[:MAX_LISTED_IDS],
        "n_zero_supervised_before_truncation": len(zero_before_truncation_ids),
        "truncated_to_zero_example_ids": truncated_to_zero_ids[:MAX_LISTED_IDS],
        "end_of_turn_token": eot_token,
        "end_of_turn_supervised": {
            "ok": eot_checked > 0 and eot_missing == 0,
            "share_of_examples": _share(eot_examples, n_examples),
            "n_examples_checked": eot_checked,
            "n_examples_missing": eot_missing,
            "missing_example_ids": eot_missing_ids[:MAX_LISTED_IDS],
        },
        "non_assistant_supervised": non_assistant_supervised,
        "non_assistant_example_ids": non_assistant_ids[:MAX_LISTED_IDS],
        "assistant_content_supervised": {
            # Not ok either when turns exist but none could be checked (no offsets: a slow
            # tokenizer; or a template that rewrites every content): a check that never ran is not a
            # pass. A threshold of 0 switches the check off.
            "ok": min_content_supervised_share <= 0 or (
                content_below == 0 and (content_turns > 0 or content_not_located == 0)),
            "min_share": content_min_share,
            "threshold": min_content_supervised_share,
            "n_turns": content_turns,
            "n_turns_below": content_below,
            "example_ids_below": content_below_ids[:MAX_LISTED_IDS],
            "n_turns_not_located": content_not_located,
            "example_ids_not_located": content_not_located_ids[:MAX_LISTED_IDS],
            "n_rows_without_offsets": rows_without_offsets,
            "n_turns_truncated_away": content_truncated_away,
        },
        "example_marked": marked_text,
        "example_marked_id": marked_id,
        "mean_tokens": untruncated_tokens / n_examples if n_examples else 0.0,
        "n_truncated": n_truncated,
    }


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:5])


def check_audit(audit: dict, min_content_supervised_share: float = MIN_CONTENT_SUPERVISED_SHARE) -> None:
    """Raise MaskAuditError naming every problem of `audit` and what to change.

    `min_content_supervised_share` must be the threshold `audit_masks` counted turns against
    (the audit records it); a different one is a caller's mistake, not a property of the data.
    """
    n, max_length = audit["n_examples"], audit["max_length"]
    content = audit.get("assistant_content_supervised")
    if content is not None and content["threshold"] != min_content_supervised_share:
        raise ValueError(
            f"check_audit: the audit counted turns against min_content_supervised_share="
            f"{content['threshold']}, not {min_content_supervised_share}; pass the same threshold to both"
        )
    problems: list[str] = []
    if n == 0:
        raise MaskAuditError("mask audit failed: there are no training examples; check the mix stage output")
    if audit["supervised_tokens"] == 0 and audit["n_zero_supervised_before_truncation"] == n:
        if not audit["template_has_generation_markers"]:
            problems.append(
                "the template has no {% generation %} markers, so no token is supervised: set "
                "train.chat_template: chatml or use a .jinja template with {% generation %} blocks"
            )
        else:
            problems.append(
                "the template's {% generation %} blocks never cover assistant text, so no token is "
                "supervised: wrap each assistant turn's content in {% generation %}...{% endgeneration %}"
            )
    else:
        if audit["n_zero_supervised_before_truncation"]:
            problems.append(
                f"{audit['n_zero_supervised_before_truncation']} of {n} examples have no supervised "
                "token even before truncation: check that they contain an assistant turn and that the "
                "template's {% generation %} blocks cover every assistant turn"
            )
        truncated_away = audit["n_zero_supervised"] - audit["n_zero_supervised_before_truncation"]
        if truncated_away:
            problems.append(
                f"{truncated_away} of {n} examples have no supervised token after truncation to "
                f"max_length={max_length} (e.g. example ids {_ids(audit['truncated_to_zero_example_ids'])}); "
                "TRL would silently drop them: raise train.max_length or drop long prompts with "
                "filters.length.max_total_tokens"
            )
    if audit["non_assistant_supervised"]:
        problems.append(
            f"{audit['non_assistant_supervised']} supervised tokens lie outside assistant turns "
            f"(e.g. example ids {_ids(audit['non_assistant_example_ids'])}): the template's "
            "{% generation %} blocks cover non-assistant text; keep only assistant content and its "
            "end-of-turn token inside them"
        )
    if audit["supervised_tokens"] and content is not None and not content["ok"] and not content["n_turns_below"]:
        problems.append(
            f"none of the {content['n_turns_not_located']} assistant turns could be checked for supervised "
            f"content (e.g. example ids {_ids(content['example_ids_not_located'])}): the template renders "
            "message content changed, or the tokenizer gives no character offsets (a slow tokenizer), "
            "so the audit cannot confirm the answers are trained on; use a fast tokenizer and a template "
            "that renders each message's content as given, or set train.min_content_supervised_share: 0 "
            "to skip this check"
        )
    elif audit["supervised_tokens"] and content is not None and not content["ok"]:
        # With nothing supervised at all, the problems above already say what is wrong.
        problems.append(
            f"{content['n_turns_below']} of {content['n_turns']} assistant turns have less than "
            f"{content['threshold']:.0%} of their content tokens supervised (lowest share "
            f"{content['min_share']:.2f}, e.g. example ids {_ids(content['example_ids_below'])}), so the "
            "model would not learn the answers: wrap the assistant content, not only the end-of-turn "
            "token, in {% generation %}...{% endgeneration %} in the template "
            "(train.min_content_supervised_share sets the threshold)"
        )
    eot = audit["end_of_turn_supervised"]
    if audit["supervised_tokens"] and not eot["ok"]:
        token = audit["end_of_turn_token"]
        if token is None:
            problems.append(
                "no end-of-turn token could be identified in the template, so the model may never "
                "learn to stop: use a template that ends assistant turns with <|im_end|>, <|eot_id|>, "
                "<end_of_turn> or the eos token"
            )
        elif eot["n_examples_checked"] == 0:
            problems.append(
                f"no assistant turn that survives truncation to max_length={max_length} ends with a "
                f"supervised {token}, so the model never learns to stop: put {token} inside "
                "{% generation %}...{% endgeneration %} in the template, or raise train.max_length if "
                "every assistant turn is cut before its end"
            )
        else:
            problems.append(
                f"the end-of-turn token {token} is not supervised in {eot['n_examples_missing']} of "
                f"{eot['n_examples_checked']} examples (e.g. example ids {_ids(eot['missing_example_ids'])}), "
                "so the model never learns to stop: move it inside {% generation %}...{% endgeneration %}"
            )
    if problems:
        raise MaskAuditError("mask audit failed: " + "; ".join(problems))
