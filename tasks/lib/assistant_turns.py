"""Where the assistant turns lie in a tokenized conversation, found without the generation markers.

The mask audit (tasks/lib/mask_audit.py) checks the template's assistant mask against assistant
turns found independently: each turn is what the rendering gains when the turn is added, measured
by rendering growing prefixes. Each assistant turn's content is also located in the rendered text
and mapped onto tokens by their character offsets, so the supervised share of every turn's
content can be measured (`content_shares`): a template whose block holds only the end-of-turn
token (the answer itself never supervised) shows up there.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from sftflow.tasks.lib.chat_tokens import plain_messages


def _chat_ids(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, chat_template=template,
        add_generation_prompt=add_generation_prompt,
    )
    return list(encoded["input_ids"])


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


def row_layout(tokenizer, template: str, messages: list[dict], ids: list[int]) -> dict:
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
    messages = plain_messages(messages)
    return row_layout(tokenizer, template, messages, _chat_ids(tokenizer, template, messages))["token_spans"]


def _locate_content(text: str, content: str, start: int, end: int) -> tuple[int, int] | None:
    """Character range of `content` in text[start:end]; a template may strip it, so try that too."""
    for needle in (content, content.strip()):
        if needle:
            found = text.find(needle, start, end)
            if found >= 0:
                return found, found + len(needle)
    return None


def _has_content(message: dict) -> bool:
    content = message.get("content")
    return bool(content.strip()) if isinstance(content, str) else bool(content)


def content_shares(messages: list[dict], layout: dict, mask: list[int]) -> tuple[list[float], int, int]:
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
