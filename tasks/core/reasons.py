"""The closed vocabulary of `decisions.reason`.

Every row a stage judges gets exactly one decision with one of these reasons; a stage that
tries to record anything else fails (see `DecisionLog`). Keeping the list closed is what makes
`SELECT reason, count(*) FROM decisions GROUP BY 1` a trustworthy report.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # --- kept -------------------------------------------------------------------------------
    KEPT = "kept"  # the stage judged the row and passed it on unchanged in meaning
    KEPT_TRIMMED = "kept_trimmed_trailing_turn"  # normalize: trailing user/tool turns removed
    SELECTED = "selected"  # mix: in a train shard (detail holds the number of copies)
    HELD_OUT_EVAL = "held_out_eval"  # mix: carved into the eval split before mixing

    # --- ingest: the raw row could not become a conversation ---------------------------------
    INVALID_JSON = "invalid_json"  # the line/element is not valid JSON
    INVALID_ENCODING = "invalid_encoding"  # bytes that are not UTF-8; text holding NUL or a lone surrogate
    DUPLICATE_KEY = "duplicate_key"  # one object names a key twice: readers disagree on which value wins
    NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not an object/record
    MISSING_FIELD = "missing_field"  # a required field of the format is absent or null
    WRONG_TYPE = "wrong_type"  # a field holds a number/list/object where text belongs
    UNKNOWN_ROLE = "unknown_role"  # a speaker name outside the format's role map
    TOOL_TURN_QUARANTINED = "tool_turn_quarantined"  # tool/function turns and recipe says quarantine
    UNSUPPORTED_CONTENT = "unsupported_content"  # e.g. image content parts
    MIXED_SCHEMA = "mixed_schema"  # e.g. role/content mixed with from/value in one row

    # --- normalize: the conversation is structurally invalid ---------------------------------
    EMPTY_CONVERSATION = "empty_conversation"  # no turns (or only a system turn)
    EMPTY_TURN = "empty_turn"  # a turn whose text is empty after trimming
    SYSTEM_NOT_FIRST = "system_not_first"  # a system turn after the first position
    STARTS_WITH_ASSISTANT = "starts_with_assistant"  # first non-system turn is not user
    NON_ALTERNATING = "non_alternating"  # two user (or assistant) turns in a row, bad tool order
    NO_ASSISTANT_TURN = "no_assistant_turn"  # nothing left to learn from
    TEMPLATE_TOKEN_IN_TEXT = "template_token_in_text"  # e.g. "<|im_end|>" in a turn would fake a turn boundary

    # --- dedup ------------------------------------------------------------------------------
    EXACT_DUPLICATE = "exact_duplicate"  # same content_hash as the representative `dup_of`
    NEAR_DUPLICATE = "near_duplicate"  # MinHash-estimated Jaccard >= threshold with `dup_of`

    # --- filter -----------------------------------------------------------------------------
    TOO_SHORT_RESPONSE = "too_short_response"  # assistant tokens < min_response_tokens
    TOO_LONG = "too_long"  # total tokens > max_total_tokens
    TOXIC = "toxic"  # a turn of a judged role reached the toxicity threshold
    CONTAMINATED = "contaminated"  # shares an n-gram with a configured eval set

    # --- score ------------------------------------------------------------------------------
    BELOW_TOP_FRACTION = "below_top_fraction"  # score below the category's keep cut-off

    # --- mix --------------------------------------------------------------------------------
    NOT_SAMPLED = "not_sampled"  # the category's target was reached without this row

    # --- train ------------------------------------------------------------------------------
    # Truncation to train.max_length leaves no supervised (assistant) token: TRL would drop the
    # row (or, packed, train on it with no loss), so the train stage drops it with this decision
    # and lineage does not list it as trained.
    NO_SUPERVISED_TOKENS = "no_supervised_tokens"


KEPT_REASONS = frozenset({Reason.KEPT, Reason.KEPT_TRIMMED, Reason.SELECTED, Reason.HELD_OUT_EVAL})
