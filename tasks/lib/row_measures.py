"""What the filter stage measures of each row, before it decides: token counts, toxicity per role
and eval-set hits.

A row's measures depend only on its turns (role and content) and on what measures them (the
tokenizer, the toxicity backend and its settings, the eval sets), never on the other rows or on
the thresholds the stage applies afterwards. So they are what the filter's row memo keeps
(`to_json` / `from_json`, tasks/core/row_memo.py), keyed by `turns_hash`: a grown source measures
only its new rows, and a changed threshold re-decides from the memo without measuring anything.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from sftflow.tasks.core.hashing import texts_hash
from sftflow.tasks.lib.decontaminate import EvalIndex, RowMatch
from sftflow.tasks.lib.tokens import TokenCounter
from sftflow.tasks.lib.toxicity import RoleToxicity, ToxicityScorer, WindowMode, score_turns

PROMPT_ROLES = ("system", "user", "tool")  # everything the model reads but is not trained to write
RESPONSE_ROLES = ("assistant",)
ALWAYS_SCORED_ROLES = ("user", "assistant")  # recorded even when only one of them is judged


@dataclass
class RowMeasures:
    """Everything the filter decides from, for one row."""

    n_tokens_prompt: int
    n_tokens_response: int
    toxicity: dict[str, RoleToxicity]  # role -> toxicity over its non-empty turns (roles without turns absent)
    decon: RowMatch


NO_MATCH = RowMatch(hits_by_set={}, matches=[])


def count_tokens(messages_per_row: list[list[dict]], counter: TokenCounter) -> tuple[list[int], list[int]]:
    """(prompt tokens, response tokens) per row, with one batched tokenizer pass over all turns."""
    owners: list[tuple[int, bool]] = []  # (row, is_response) of each text
    texts: list[str] = []
    for row, messages in enumerate(messages_per_row):
        for message in messages:
            if message["role"] in PROMPT_ROLES or message["role"] in RESPONSE_ROLES:
                owners.append((row, message["role"] in RESPONSE_ROLES))
                texts.append(message["content"] or "")
    prompt = [0] * len(messages_per_row)
    response = [0] * len(messages_per_row)
    for (row, is_response), n_tokens in zip(owners, counter.count(texts)):
        if is_response:
            response[row] += n_tokens
        else:
            prompt[row] += n_tokens
    return prompt, response


def score_toxicity(
    messages_per_row: list[list[dict]], scorer: ToxicityScorer, roles: tuple[str, ...],
    window: WindowMode = "sentence",
) -> list[dict[str, RoleToxicity]]:
    """Per row: role -> toxicity over that role's non-empty turns (roles without turns absent).

    Each turn is scored by windows (tasks/lib/toxicity.py `score_turns`); all windows of the table
    go to the scorer in one call.
    """
    owners: list[tuple[int, str, int]] = []  # (row, role, message index)
    texts: list[str] = []
    for row, messages in enumerate(messages_per_row):
        for turn, message in enumerate(messages):
            if message["role"] in roles and (message["content"] or "").strip():
                owners.append((row, message["role"], turn))
                texts.append(message["content"])
    per_row: list[dict[str, RoleToxicity]] = [{} for _ in messages_per_row]
    for (row, role, turn), result in zip(owners, score_turns(texts, scorer, window)):
        by_role = per_row[row]
        role_toxicity = by_role.get(role)
        if role_toxicity is None:
            role_toxicity = by_role[role] = RoleToxicity()
        role_toxicity.add(turn, result)
    return per_row


def measure_rows(
    messages_per_row: list[list[dict]],
    counter: TokenCounter,
    toxicity: ToxicityScorer | None,
    toxicity_roles: tuple[str, ...],
    window: WindowMode,
    eval_index: EvalIndex | None,
) -> list[RowMeasures]:
    """The measures of every row: batched token counts, toxicity of `toxicity_roles` (none when
    `toxicity` is None) and eval-set matches (none when `eval_index` is None or empty)."""
    n_prompt, n_response = count_tokens(messages_per_row, counter)
    if toxicity is not None:
        by_role = score_toxicity(messages_per_row, toxicity, toxicity_roles, window)
    else:
        by_role = [{} for _ in messages_per_row]
    decon = [eval_index.match(m) if eval_index else NO_MATCH for m in messages_per_row]
    return [RowMeasures(*values) for values in zip(n_prompt, n_response, by_role, decon)]


def turns_hash(messages: list[dict]) -> str:
    """The memo key of a row: the hash of exactly what the filter reads of it, each turn's role and
    content in order.

    Not the row's content_hash, which hashes each turn after normalize_text: that is not
    idempotent ("\\r\\r\\n" is stored as "\\r\\n" and hashed as "\\n"), so two stored rows can share it.

    >>> turns_hash([{"role": "user", "content": "Hi"}]) != turns_hash([{"role": "assistant", "content": "Hi"}])
    True
    """
    return texts_hash([[m["role"], m["content"]] for m in messages])


def to_json(measures: RowMeasures) -> str:
    """The memo's text of one row's measures; `from_json` gives them back equal, dict order
    included (floats round-trip exactly through JSON's shortest representation).

    Written by orjson (about ten times json.dumps here, where it was a sixth of the filter's
    time per row). orjson writes NaN as null and refuses lone surrogates, so a row holding
    either is written by json.dumps instead, which keeps both (surrogates escaped: the memo's
    Arrow strings must be valid UTF-8).

    >>> m = RowMeasures(3, 5, {"assistant": RoleToxicity(0.25, {"turn": 1, "window": 0, "of": 1,
    ...                 "excerpt": "Hi"}, Counter({"Han": 1}), 2)}, RowMatch({"gsm8k": 1}, []))
    >>> from_json(to_json(m)) == m
    True
    >>> nan = RowMeasures(3, 5, {"user": RoleToxicity(float("nan"), None, Counter(), 1)}, RowMatch({}, []))
    >>> from_json(to_json(nan)).toxicity["user"].score
    nan
    """
    value = {
        "n_tokens_prompt": measures.n_tokens_prompt,
        "n_tokens_response": measures.n_tokens_response,
        "toxicity": {role: [t.score, t.top, dict(t.unjudged), t.n_windows] for role, t in measures.toxicity.items()},
        "decon": [measures.decon.hits_by_set, measures.decon.matches],
    }
    if all(t.score is None or math.isfinite(t.score) for t in measures.toxicity.values()):
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # a lone surrogate in an excerpt or a match
            pass
    return json.dumps(value)


def from_json(text: str) -> RowMeasures:
    try:
        value: dict[str, Any] = orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or a lone surrogate: json.dumps wrote it (to_json)
        value = json.loads(text)
    toxicity = {role: RoleToxicity(score=score, top=top, unjudged=Counter(unjudged), n_windows=n_windows)
                for role, (score, top, unjudged, n_windows) in value["toxicity"].items()}
    hits_by_set, matches = value["decon"]
    return RowMeasures(value["n_tokens_prompt"], value["n_tokens_response"], toxicity,
                       RowMatch(hits_by_set=hits_by_set, matches=matches))
