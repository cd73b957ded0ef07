"""What the loss will actually see: tokenization as TRL does it, and an audit of the assistant masks.

TRL's SFTTrainer (assistant_only_loss=True) tokenizes each conversation with
`apply_chat_template(..., return_assistant_tokens_mask=True)`, sets labels to -100 outside the
mask, truncates to max_length keeping the start, and then silently drops every example left
without a supervised token. A prompt longer than max_length, or a template whose
`{% generation %}` block misses the assistant text, therefore trains on less than it seems, or on
nothing, without an error. This module reproduces that tokenization and checks the result
against assistant turns found independently (by rendering growing prefixes), so the train stage
can stop before launching a run that would learn the wrong thing. Each assistant turn's content is
also located in the rendered text and mapped onto tokens by their character offsets, so a template
whose block holds only the end-of-turn token (the answer itself never supervised) is caught too.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict

from sftflow.tasks.lib.chat_template import ChatTemplateError, end_of_turn_token, has_generation_markers

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
MAX_LISTED_IDS = 20  # example ids kept in the audit JSON per problem (counts are always complete)
# Share of each assistant turn's content tokens that must be supervised (TrainConfig's default too).
MIN_CONTENT_SUPERVISED_SHARE = 0.95


class MaskAuditError(ValueError):
    """The masks would train on nothing, on non-assistant text, on too little of the answers, or never
    on the end-of-turn token."""


def _plain_messages(messages) -> list[dict]:
    # Plain dict copies: rows from Arrow/datasets stay untouched whatever the template does.
    return [dict(message) for message in messages]


def _chat_ids(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, chat_template=template,
        add_generation_prompt=add_generation_prompt,
    )
    return list(encoded["input_ids"])


def _tokenize_untruncated(tokenizer, template: str, messages: list[dict]) -> dict:
    # The exact call TRL's SFTTrainer makes for a conversational "messages" example.
    encoded = tokenizer.apply_chat_template(
        _plain_messages(messages), tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, chat_template=template,
    )
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": list(encoded["assistant_masks"])}


def tokenize_conversation(tokenizer, template: str, messages: list[dict], max_length: int) -> dict:
    """{"input_ids", "assistant_masks"} exactly as TRL builds them, truncated to max_length (keep start)."""
    full = _tokenize_untruncated(tokenizer, template, messages)
    return {key: values[:max_length] for key, values in full.items()}


def supervised_counts(tokenizer, template: str, messages: list[dict], max_length: int) -> dict:
    """Token and supervised-token counts of one conversation, before and after truncation as TRL does it.

    `supervised_truncated == 0 < supervised` is a row TRL drops when not packing (and trains on
    with no loss when packing): the train stage decides it `no_supervised_tokens`.
    """
    full = _tokenize_untruncated(tokenizer, template, messages)
    mask = full["assistant_masks"]
    first = next((position for position, bit in enumerate(mask) if bit), None)
    return {"n_tokens": len(full["input_ids"]), "supervised": sum(mask),
            "supervised_truncated": sum(mask[:max_length]), "first_supervised_position": first}


def _chat_text(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, chat_template=template, add_generation_prompt=add_generation_prompt,
    )


def _assistant_prefix_spans(render, messages: list[dict], full) -> list[tuple[int, int, int]]:
    """(message index, start, end) of each assistant turn in `full`, measured by rendering the
    growing prefixes with `render(messages, add_generation_prompt)`: as text (character spans) or
    as token ids (token spans) when offsets cannot tie tokens to text. The turn starts where the
    conversation before it ends (its generation prompt included when `full` begins with that).
    """
    spans: list[tuple[int, int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = 0
        if index > 0:
            prompt = render(messages[:index], True)
            if full[: len(prompt)] != prompt:
                prompt = render(messages[:index], False)
            start = len(prompt)
        spans.append((index, start, len(render(messages[: index + 1], False))))
    return spans


def _assistant_char_spans(tokenizer, template: str, messages: list[dict], text: str) -> list[tuple[int, int, int]]:
    """(message index, start, end) character spans of the assistant turns in the rendered `text`.

    Rendering to text is cheap next to tokenizing, so the growing prefixes are rendered as text and
    measured in characters; offsets then map the spans onto tokens.
    """
    return _assistant_prefix_spans(
        lambda prefix, prompt: _chat_text(tokenizer, template, prefix, add_generation_prompt=prompt), messages, text)


def _offsets(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Character offsets of `ids` in `text`, or None when they cannot be trusted.

    apply_chat_template tokenizes its rendering with add_special_tokens=False; doing the same here
    with offsets must give the very same ids, otherwise (a slow tokenizer without offsets, a
    template whose rendering is not deterministic) token positions cannot be tied to text.
    """
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return None
    if list(encoded["input_ids"]) != ids:
        return None
    return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def _token_range(starts: list[int], ends: list[int], char_start: int, char_end: int) -> tuple[int, int]:
    """[first, last) tokens whose characters overlap [char_start, char_end).

    Offsets are non-decreasing (byte-level pieces of one character share its range), so two
    bisections find the range.
    """
    return bisect_right(ends, char_start), bisect_left(starts, char_end)


def _assistant_spans_by_prefix_ids(
    tokenizer, template: str, messages: list[dict], full: list[int]
) -> list[tuple[int, int]]:
    # Without offsets: measure the growing prefixes in tokens instead.
    spans = _assistant_prefix_spans(
        lambda prefix, prompt: _chat_ids(tokenizer, template, prefix, add_generation_prompt=prompt), messages, full)
    return [(start, end) for _, start, end in spans]


def _row_layout(tokenizer, template: str, messages: list[dict], ids: list[int]) -> dict:
    """Rendered text, token offsets and assistant turn spans (token and character) of one conversation.

    `ids` are the untruncated ids of apply_chat_template for `messages`.
    """
    text = _chat_text(tokenizer, template, messages)
    offsets = _offsets(tokenizer, text, ids)
    if offsets is None:
        return {"text": text, "offsets": None, "char_spans": [],
                "token_spans": _assistant_spans_by_prefix_ids(tokenizer, template, messages, ids)}
    char_spans = _assistant_char_spans(tokenizer, template, messages, text)
    starts, ends = [start for start, _ in offsets], [end for _, end in offsets]
    token_spans = [_token_range(starts, ends, start, end) for _, start, end in char_spans]
    return {"text": text, "offsets": (starts, ends), "char_spans": char_spans, "token_spans": token_spans}


def assistant_spans(tokenizer, template: str, messages) -> list[tuple[int, int]]:
    """[start, end) token spans of the assistant turns, found without the generation markers.

    The turn is what the rendering gains when the turn is added: from the end of the prefix
    rendered with the generation prompt (so the header is excluded) to the end of the prefix that
    includes the turn, mapped onto tokens by their character offsets (tokens overlapping it). A
    template whose generation prompt is not a prefix of the full rendering falls back to the prefix
    without it (the header then counts as part of the turn). A tokenizer without offsets measures
    the prefixes in tokens instead.
    """
    messages = _plain_messages(messages)
    return _row_layout(tokenizer, template, messages, _chat_ids(tokenizer, template, messages))["token_spans"]


def _locate_content(text: str, content: str, start: int, end: int) -> tuple[int, int] | None:
    """Character range of `content` in text[start:end]; a template may strip it, so try that too."""
    for needle in (content, content.strip()):
        if needle:
            found = text.find(needle, start, end)
            if found >= 0:
                return found, found + len(needle)
    return None


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


def _has_content(message: dict) -> bool:
    content = message.get("content")
    return bool(content.strip()) if isinstance(content, str) else bool(content)


def _share(supervised: int, total: int) -> float:
    return supervised / total if total else 0.0


def _content_shares(messages: list[dict], layout: dict, mask: list[int]) -> tuple[list[float], int, int]:
    """Supervised share of each assistant turn's content tokens, turns not located, turns truncated away.

    `mask` is the truncated assistant mask. Content is searched in order, each turn inside its own
    span and after the previous turn's content, so an answer repeated in a later turn maps to its
    own tokens. Turns without content (pure tool calls) have nothing to check.
    """
    wanted = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and _has_content(m)]
    if layout["offsets"] is None:
        return [], len(wanted), 0  # no offsets: no turn can be tied to its tokens
    starts, ends = layout["offsets"]
    shares: list[float] = []
    not_located = truncated_away = 0
    search_from = 0
    for index, turn_start, turn_end in layout["char_spans"]:
        if index not in wanted:
            continue
        content = messages[index]["content"]
        located = (_locate_content(layout["text"], content, max(turn_start, search_from), turn_end)
                   if isinstance(content, str) else None)
        if located is None:
            not_located += 1
            continue
        search_from = located[1]
        first, last = _token_range(starts, ends, *located)
        last = min(last, len(mask))  # only what survives truncation is trained on
        if last <= first:
            truncated_away += 1
            continue
        shares.append(sum(mask[first:last]) / (last - first))
    return shares, not_located, truncated_away


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
        messages = _plain_messages(row["messages"])
        full = _tokenize_untruncated(tokenizer, template, messages)
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

        layout = _row_layout(tokenizer, template, messages, full["input_ids"])
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

        shares, not_located, truncated_away = _content_shares(messages, layout, mask)
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
