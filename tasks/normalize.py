"""Normalize: canonical text, structural validation, the exact-dedup key and the category.

For every ingested row: each turn's text is NFC-normalized and trimmed, the conversation is
validated (roles, order, emptiness), `content_hash` is computed over the normalized turns and
`category` is filled (a source's fixed category wins over the classifier). Invalid rows are
dropped with one reason from tasks/core/reasons.py and the detail {"location": ..., "error": ...}:
the row's place in its source exactly as ingest names it ("line 7", "index 3 (line 5)") and an
error that names the turn.

Turn numbers in errors are 0-based indices into `messages`, as in Python and in torchtune's
`validate_messages` ("turn 3" is `messages[3]`; DuckDB's `messages[4]`).

Unicode: NFC is computed with the Unicode database of the running Python
(`unicodedata.unidata_version`, shown in the stage stats). Unicode's stability policy fixes the
NFC form of every assigned character, so only characters unassigned in an older database can
normalize differently under a newer Python.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

import pyarrow as pa

from tasks.categories import AUTO, classify_category
from tasks.core.hashing import short_hash
from tasks.core.reasons import Reason
from tasks.core.recipe import NormalizeConfig
from tasks.core.records import RECORD_SCHEMA, ROLES, DecisionLog, StageOutput
from tasks.core.stage import StageCall, read_records, stage_task

LIBRARIES: tuple[str, ...] = ("unicodedata",)  # stdlib only: the Unicode database version enters the key

# Unicode whitespace plus a byte-order mark (leaked from the start of a file) and zero-width
# spaces, which make a turn look empty to a reader while it is not empty to `str.strip`.
_EDGE_SPACE = re.compile(r"^[\s\ufeff\u200b]+|[\s\ufeff\u200b]+$")

# Which role may follow which. A user turn expects an answer; an assistant turn may call a tool;
# tool results come back in one or more tool turns and are read by the assistant.
_ALLOWED_NEXT = {
    "user": ("assistant",),
    "assistant": ("user", "tool"),
    "tool": ("tool", "assistant"),
}

# Control tokens of common chat templates. A turn whose text holds one would fake a turn
# boundary once the chat template renders the conversation (a tokenizer reads the literal text
# as the special token), so the row is dropped instead of trained on. `<|name|>` covers ChatML
# (<|im_start|>, <|im_end|>), GPT-2 and Qwen (<|endoftext|>), Llama 3 (<|begin_of_text|>,
# <|start_header_id|>, <|end_header_id|>, <|eot_id|>) and Phi (<|user|>, <|end|>); Gemma's
# tokens have no bars and are listed by name. HTML-like tags (<s>, </s>, <b>) and operators
# such as Haskell's <|> are not matched.
TEMPLATE_TOKEN_PATTERNS: tuple[str, ...] = (
    r"<\|[A-Za-z0-9_.:-]{1,64}\|>",
    re.escape("<start_of_turn>"),
    re.escape("<end_of_turn>"),
)
_TEMPLATE_TOKEN = re.compile("|".join(TEMPLATE_TOKEN_PATTERNS))

Messages = list[dict[str, str]]


def normalize_text(text: str) -> str:
    """Unicode NFC, Windows line ends to "\\n", and no leading/trailing whitespace.

    Inner whitespace is content (indentation in code, blank lines in poems) and stays.

    >>> normalize_text("  caf\\u0065\\u0301\\r\\nbar \\n")
    'café\\nbar'
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n")
    return _EDGE_SPACE.sub("", text)


def normalize_messages(messages: list[dict[str, Any]] | None) -> Messages:
    """Each turn as {"role", "content"} with normalized text; a null content becomes ""."""
    return [
        {"role": m.get("role") or "", "content": normalize_text(m.get("content") or "")}
        for m in messages or []
    ]


def _transition_error(index: int, previous: str, role: str) -> str:
    if previous == role:
        return f"turn {index}: two {role} turns in a row"
    return f"turn {index}: a {role} turn cannot follow a {previous} turn"


def validate_messages(
    messages: list[dict[str, Any]] | None, trim_trailing_turns: bool = True, reject_template_tokens: bool = True
) -> tuple[Messages, Reason | None, str]:
    """Normalize and check one conversation; returns (messages, failure reason or None, error).

    On success the returned messages are normalized and, with `trim_trailing_turns`, lose the
    user/tool turns after the last assistant turn (the caller sees that from the shorter list).
    On failure they are the normalized, untrimmed turns and the error names the turn.

    Checks, in order (the first failure is reported):
    1. no turns at all                                  -> empty_conversation
    2. each turn's role, by position: outside system|user|assistant|tool -> unknown_role;
       a system turn anywhere but position 0            -> system_not_first
    3. nothing but a system turn                        -> empty_conversation
    4. the first non-system turn: assistant -> starts_with_assistant; tool -> non_alternating
    5. no assistant turn                                -> no_assistant_turn
    6. user/tool turns after the last assistant turn: trimmed, or non_alternating when
       trimming is off
    7. each remaining turn, by position: empty text -> empty_turn; a role that may not follow
       the previous one (user -> assistant; assistant -> user|tool; tool -> tool|assistant)
                                                        -> non_alternating
    8. with `reject_template_tokens`, a remaining turn's text holds a chat-template control
       token (TEMPLATE_TOKEN_PATTERNS)                  -> template_token_in_text

    >>> validate_messages([{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "Hello"}])
    ([{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}], None, '')
    """
    turns = normalize_messages(messages)
    if not turns:
        return turns, Reason.EMPTY_CONVERSATION, "the conversation has no turns"
    for index, turn in enumerate(turns):
        if turn["role"] not in ROLES:
            return turns, Reason.UNKNOWN_ROLE, (
                f"turn {index}: role {turn['role']!r} is not one of {', '.join(ROLES)}"
            )
        if turn["role"] == "system" and index > 0:
            return turns, Reason.SYSTEM_NOT_FIRST, f"turn {index}: system turn after the first position"

    start = 1 if turns[0]["role"] == "system" else 0
    if start == len(turns):
        return turns, Reason.EMPTY_CONVERSATION, "the conversation has only a system turn"
    first_role = turns[start]["role"]
    if first_role == "assistant":
        return turns, Reason.STARTS_WITH_ASSISTANT, (
            f"turn {start}: the conversation starts with an assistant turn; the first turn "
            "after an optional system turn must be a user turn"
        )
    if first_role == "tool":
        return turns, Reason.NON_ALTERNATING, (
            f"turn {start}: the conversation starts with a tool turn; a tool turn must answer "
            "an assistant turn"
        )

    last_assistant = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last_assistant is None:
        return turns, Reason.NO_ASSISTANT_TURN, "no assistant turn: nothing to train on"
    n_trailing = len(turns) - 1 - last_assistant
    if n_trailing and not trim_trailing_turns:
        index = last_assistant + 1
        return turns, Reason.NON_ALTERNATING, (
            f"turn {index}: {n_trailing} turn(s) after the last assistant turn "
            f"({', '.join(t['role'] for t in turns[index:])}); "
            "a conversation must end with an assistant turn (set normalize.trim_trailing_turns: "
            "true to trim them)"
        )
    kept = turns[: last_assistant + 1]

    for index, turn in enumerate(kept):
        if not turn["content"]:
            return turns, Reason.EMPTY_TURN, f"turn {index} ({turn['role']}) is empty"
        previous = kept[index - 1]["role"]
        if index > start and turn["role"] not in _ALLOWED_NEXT[previous]:
            return turns, Reason.NON_ALTERNATING, _transition_error(index, previous, turn["role"])
    for index, turn in enumerate(kept if reject_template_tokens else ()):
        token = _TEMPLATE_TOKEN.search(turn["content"])
        if token:
            return turns, Reason.TEMPLATE_TOKEN_IN_TEXT, (
                f"turn {index} ({turn['role']}) holds the chat-template token {token.group()!r}, which would "
                "fake a turn boundary once the chat template renders the conversation; remove it from the source"
            )
    return kept, None, ""


def content_hash(messages: list[dict[str, Any]]) -> str:
    """The exact-dedup key: a hash of the (role, text) pairs after normalize_text.

    Only the conversation enters it (no example_id, source or category), so the same
    conversation from two sources, or in two Unicode spellings, gets the same hash.

    >>> content_hash([{"role": "user", "content": "caf\\u00e9"}]) == \\
    ...     content_hash([{"role": "user", "content": "cafe\\u0301 "}])
    True
    """
    return short_hash([[m["role"], normalize_text(m.get("content") or "")] for m in messages])


def source_location(row: dict[str, Any]) -> str:
    """Where the row came from, as ingest wrote it; records made elsewhere fall back to source_row.

    >>> source_location({"source_location": "index 3 (line 5)", "source_row": 3})
    'index 3 (line 5)'
    >>> source_location({"source_row": 7})
    'source_row 7'
    """
    return row.get("source_location") or f"source_row {row.get('source_row')}"


def _records_table(rows: list[dict[str, Any]], source: pa.Table) -> pa.Table:
    """Kept rows as a table: the base columns in RECORD_SCHEMA's types, then the input's extras."""
    extra_fields = [f for f in source.schema if f.name not in RECORD_SCHEMA.names]
    schema = pa.schema(list(RECORD_SCHEMA) + extra_fields)
    return pa.Table.from_pylist(rows, schema=schema)


def normalize_records(records: pa.Table, cfg: NormalizeConfig) -> StageOutput:
    """Normalize, validate, hash and categorize every row; one decision per input row."""
    decisions = DecisionLog()
    kept_rows: list[dict[str, Any]] = []
    categories: Counter[str] = Counter()
    for row in records.to_pylist():
        messages, reason, error = validate_messages(row.get("messages"), cfg.trim_trailing_turns, cfg.reject_template_tokens)
        if reason is not None:
            decisions.add(row["example_id"], reason, detail={"location": source_location(row), "error": error})
            continue
        n_trimmed = len(row.get("messages") or []) - len(messages)
        if n_trimmed:
            decisions.add(row["example_id"], Reason.KEPT_TRIMMED, detail={"trimmed_turns": n_trimmed})
        else:
            decisions.add(row["example_id"], Reason.KEPT)
        # A source-fixed category is the recipe author's decision; only `auto` rows are guessed.
        fixed = row.get("category")
        category = fixed if fixed and fixed != AUTO else classify_category(messages)
        categories[category] += 1
        kept_rows.append({**row, "messages": messages, "content_hash": content_hash(messages),
                          "category": category})

    decision_table = decisions.to_table()
    reasons = Counter(decision_table.column("reason").to_pylist())
    stats = {
        "n_in": records.num_rows,
        "unidata_version": unicodedata.unidata_version,
        "categories": dict(sorted(categories.items())),
        "reasons": dict(sorted(reasons.items())),
    }
    return StageOutput(records=_records_table(kept_rows, records), decisions=decision_table, stats=stats)


@stage_task("normalize")
def normalize_stage(call: StageCall) -> StageOutput:
    return normalize_records(read_records(call.inputs), NormalizeConfig.model_validate(call.config))
