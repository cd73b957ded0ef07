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

import json
import re
import sys
import unicodedata
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.categories import AUTO, classify_conversations
from sftflow.tasks.lib.turns import Turns, normalize_text
from sftflow.tasks.core.hashing import HASH_CHARS, sha256_text, short_hash, texts_hash
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_data import NormalizeConfig
from sftflow.tasks.core.parts import map_parts, sum_counts
from sftflow.tasks.core.reasons import KEPT_REASONS
from sftflow.tasks.core.records import DECISION_SCHEMA, MESSAGE_TYPE, RECORD_SCHEMA, ROLES, PartedOutput, StageOutput
from sftflow.tasks.core.stage import StageCall, plan_call, stage_task

# The Unicode database version enters the key; orjson writes the JSON that content_hash hashes.
LIBRARIES: tuple[str, ...] = ("unicodedata", "orjson")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({
    Reason.KEPT,
    Reason.KEPT_TRIMMED,
    Reason.EMPTY_CONVERSATION,
    Reason.EMPTY_TURN,
    Reason.UNKNOWN_ROLE,
    Reason.SYSTEM_NOT_FIRST,
    Reason.STARTS_WITH_ASSISTANT,
    Reason.NON_ALTERNATING,
    Reason.NO_ASSISTANT_TURN,
    Reason.TEMPLATE_TOKEN_IN_TEXT,
})

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

# How json.dumps(..., ensure_ascii=False) writes a string (the C encoder when it is built).
_json_string = json.encoder.encode_basestring


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
    pairs = [[m["role"], normalize_text(m.get("content") or "")] for m in messages]
    if all(type(role) is str for role, _ in pairs):
        # The canonical JSON short_hash would hash, spelled out: a list of [role, text] string
        # pairs has no keys to sort, and json.dumps encodes each string with this same function.
        canonical = "[[" + ",".join(["[" + _json_string(role) + "," + _json_string(text) + "]"
                                     for role, text in pairs]) + "]]"
        return sha256_text(canonical)[:HASH_CHARS]
    return short_hash(pairs)


def source_location(row: dict[str, Any]) -> str:
    """Where the row came from, as ingest wrote it; records made elsewhere fall back to source_row.

    >>> source_location({"source_location": "index 3 (line 5)", "source_row": 3})
    'index 3 (line 5)'
    >>> source_location({"source_row": 7})
    'source_row 7'
    """
    return row.get("source_location") or f"source_row {row.get('source_row')}"


def _records_table(records: pa.Table, kept: np.ndarray, computed: dict[str, Any]) -> pa.Table:
    """Kept rows as a table: the base columns in RECORD_SCHEMA's types, then the input's extras.

    Columns are built whole: `computed` ones from Python lists or given as arrays, the others taken
    from the input when their type already matches (converted from Python values otherwise,
    missing ones null), each as one contiguous array, the layout Table.from_pylist gives; Parquet
    pages, hence the artifact's bytes, depend on it.
    """
    extra_fields = [f for f in records.schema if f.name not in RECORD_SCHEMA.names]
    schema = pa.schema(list(RECORD_SCHEMA) + extra_fields)
    names = set(records.schema.names)
    indices = pa.array(kept, type=pa.int64())
    arrays = []
    for field in schema:
        if field.name in computed:
            values = computed[field.name]
            arrays.append(pa.array(values, type=field.type) if isinstance(values, list) else values)
        elif field.name not in names:
            arrays.append(pa.nulls(len(kept), type=field.type))
        elif records.schema.field(field.name).type == field.type:
            arrays.append(records.column(field.name).take(indices).combine_chunks())
        else:
            values = records.column(field.name).to_pylist()
            arrays.append(pa.array([values[i] for i in kept], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _column_values(records: pa.Table, name: str) -> list[Any]:
    """A column as Python values; all None when the table has no such column (as row.get gives)."""
    if name in records.schema.names:
        return records.column(name).to_pylist()
    return [None] * records.num_rows


MAX_TEXT_BYTES = 2**31 - 2**24  # a records part's messages column must fit one string array: 2 GiB, less a margin
_SYSTEM, _USER, _ASSISTANT = (ROLES.index(role) for role in ("system", "user", "assistant"))
_ALLOWED_CODES = np.array([[role in _ALLOWED_NEXT.get(previous, ()) for role in ROLES] for previous in ROLES])


def _plain_valid(turns: Turns, reject_template_tokens: bool) -> np.ndarray:
    """Per row: whether validate_messages keeps it whole with nothing to report, by the checks
    in its docstring on the normalized turns: known roles, a system turn only first, then a
    user turn, allowed transitions, an assistant turn last, no empty turn and (when
    rejected) no template token. Other rows go through validate_messages itself."""
    code = pc.fill_null(pc.index_in(turns.roles, pa.array(ROLES)), -1).to_numpy()
    position = np.arange(len(code)) - np.repeat(turns.start, turns.length)
    has_turns = turns.length > 0
    first, last = np.full(len(turns.length), -1), np.full(len(turns.length), -1)
    first[has_turns] = code[turns.start[has_turns]]
    last[has_turns] = code[turns.start[has_turns] + turns.length[has_turns] - 1]
    start = (first == _SYSTEM).astype(np.int64)  # the position of the first non-system turn
    turn_start = np.repeat(start, turns.length)
    previous = np.concatenate([[-1], code[:-1]])
    allowed = _ALLOWED_CODES[np.clip(previous, 0, None), np.clip(code, 0, None)]
    good = ((code >= 0) & ((code != _SYSTEM) | (position == 0))
            & np.where(position == turn_start, code == _USER, (position < turn_start) | allowed)
            & (pc.binary_length(turns.texts).to_numpy() > 0))
    if reject_template_tokens:  # Arrow's RE2 finds the same tokens: the patterns name ASCII characters only
        good &= ~pc.match_substring_regex(turns.texts, _TEMPLATE_TOKEN.pattern).to_numpy(zero_copy_only=False)
    n_bad = np.bincount(turns.row, weights=~good, minlength=len(turns.length))
    return (turns.length > start) & (last == _ASSISTANT) & (n_bad == 0)


def normalize_records(records: pa.Table, cfg: NormalizeConfig) -> StageOutput:
    """Normalize, validate, hash and categorize every row; one decision per input row.

    Column by column: the turns of all rows are one flat column, each text is normalized once,
    rows of the usual shape are validated with array operations (_plain_valid) and only the
    others by validate_messages; categories are classified a column at a time. Rows holding more
    text than one Arrow string array can (2 GiB) are done in halves.
    """
    n_rows = records.num_rows
    if n_rows > 1 and "messages" in records.schema.names and records.column("messages").nbytes > MAX_TEXT_BYTES:
        halves = [normalize_records(records.slice(start, length), cfg)
                  for start, length in ((0, n_rows // 2), (n_rows // 2, n_rows - n_rows // 2))]
        return StageOutput(records=pa.concat_tables([h.records for h in halves]),
                           decisions=pa.concat_tables([h.decisions for h in halves]),
                           stats=merge_stats([h.stats for h in halves]))
    turns = Turns(records)
    plain = _plain_valid(turns, cfg.reject_template_tokens)
    n_kept_turns = np.where(plain, turns.length, 0)
    reasons: list[str] = [Reason.KEPT.value] * n_rows
    details: list[str | None] = [None] * n_rows
    for index in np.flatnonzero(~plain).tolist():
        messages, reason, error = validate_messages(turns.messages(index), cfg.trim_trailing_turns,
                                                    cfg.reject_template_tokens)
        if reason is not None:
            row = {"source_location": _value_at(records, "source_location", index),
                   "source_row": _value_at(records, "source_row", index)}
            reasons[index], details[index] = reason.value, _detail({"location": source_location(row), "error": error})
            continue
        n_kept_turns[index] = len(messages)
        if n_trimmed := turns.length[index] - len(messages):
            reasons[index] = Reason.KEPT_TRIMMED.value
            details[index] = _detail({"trimmed_turns": int(n_trimmed)})
    kept = np.flatnonzero([reason in _KEPT for reason in reasons])
    counts = n_kept_turns[kept]
    kept_turns = turns.index(kept, counts)
    hashes = _content_hashes(turns, kept, counts)
    categories = _categories(records, turns, kept, counts)

    decision_table = pa.Table.from_arrays([
        records.column("example_id").combine_chunks().cast(pa.string()),
        pa.array([reason in _KEPT for reason in reasons], pa.bool_()),
        pa.array(reasons, pa.string()), pa.nulls(n_rows, pa.float64()), pa.array(details, pa.string()),
        pa.nulls(n_rows, pa.string())], schema=DECISION_SCHEMA)
    stats = {
        "n_in": n_rows,
        "unidata_version": unicodedata.unidata_version,
        "categories": dict(sorted(Counter(categories).items())),
        "reasons": dict(sorted(Counter(reasons).items())),
    }
    values = pa.StructArray.from_arrays([turns.roles, turns.texts], fields=list(MESSAGE_TYPE.value_type))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    messages = pa.ListArray.from_arrays(offsets, values.take(pa.array(kept_turns, pa.int64())), type=MESSAGE_TYPE)
    computed = {"messages": messages, "content_hash": hashes, "category": categories}
    return StageOutput(records=_records_table(records, kept, computed), decisions=decision_table, stats=stats)


_KEPT = frozenset(reason.value for reason in KEPT_REASONS)


def _detail(detail: dict[str, Any]) -> str:
    """A decision's detail as DecisionLog writes it."""
    return json.dumps(detail, sort_keys=True, ensure_ascii=False)


def _content_hashes(turns: Turns, kept: np.ndarray, counts: np.ndarray) -> list[str]:
    """content_hash of each kept row's first `counts` turns, from the flat columns (`hashed`: their
    texts normalized again, as content_hash does), hashed by `texts_hash`: orjson's bytes, the same
    canonical JSON as content_hash's for lists of strings (tests compare every code point)."""
    hashed, roles = turns.hashed, turns.role_list
    pairs = ([[roles[j], hashed[j]] for j in range(start, start + count)]
             for start, count in zip(turns.start[kept].tolist(), counts.tolist()))
    return [texts_hash(row) for row in pairs]


def _categories(records: pa.Table, turns: Turns, kept: np.ndarray, counts: np.ndarray) -> list[str]:
    """Each kept row's category: the source's fixed one, else the classifier's on its kept turns."""
    fixed = _column_values(records, "category")
    categories = [fixed[i] for i in kept.tolist()]
    auto = np.fromiter((not c or c == AUTO for c in categories), dtype=bool, count=len(categories))
    if auto.any():
        conversation = np.full(len(turns.texts), -1)  # the turns of dropped and fixed rows are not read
        conversation[turns.index(kept[auto], counts[auto])] = np.repeat(np.arange(int(auto.sum())), counts[auto])
        classified = classify_conversations(turns.roles, turns.texts, conversation, int(auto.sum()))
        for position, category in zip(np.flatnonzero(auto).tolist(), classified):
            categories[position] = category
    return categories


def _value_at(records: pa.Table, name: str, index: int) -> Any:
    """One cell as a Python value (None when the table has no such column): for the rare dropped row."""
    return records.column(name)[index].as_py() if name in records.schema.names else None


def normalize_part(call: StageCall, records: pa.Table) -> StageOutput:
    """One records part of the input (sftflow.tasks.core.parts runs one per part)."""
    return normalize_records(records, NormalizeConfig.model_validate(call.config))


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's stats from its parts' (counts add up)."""
    return {
        "n_in": sum(p["n_in"] for p in parts),
        "unidata_version": unicodedata.unidata_version,
        "categories": sum_counts([p["categories"] for p in parts]),
        "reasons": sum_counts([p["reasons"] for p in parts]),
    }


# ------------------------------------------------------------------------------------ plan --
def plan(recipe: Recipe, ingested: Manifest, ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    """One source's call on its ingest artifact."""
    # The runner (where parts run) is a parameter, not part of the key: the bytes do not depend on it.
    return plan_call(sys.modules[__name__], recipe.normalize.canonical(), [ingested], ws,
                     label=ingested.stats.get("source", ""), params={"runner": runner or recipe.runner.canonical()})


@stage_task("normalize")
def normalize_stage(call: StageCall) -> PartedOutput:
    return map_parts(call, "sftflow.tasks.normalize:normalize_part", merge_stats)
