"""The normalize stage: text normalization, validation rules, content_hash and records in/out."""

from __future__ import annotations

import json
import re
import sys
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe_data import NormalizeConfig
from sftflow.tasks.core.records import RECORD_SCHEMA
from tests.stage_helpers import records_from_rows
from sftflow.tasks.core.stage import StageCall, execute
from sftflow.tasks.lib.turns import edge_chars
from sftflow.tasks.normalize import (
    LIBRARIES,
    content_hash,
    normalize_records,
    normalize_stage,
    normalize_text,
    validate_messages,
)


def t(role: str, content: str | None) -> dict:
    return {"role": role, "content": content}


U, A, S, T = "user", "assistant", "system", "tool"


# --------------------------------------------------------------------------- normalize_text --
def test_nfc_composes_combining_accents():
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("cafe\u0301") == "café"


def test_crlf_becomes_lf_and_edges_are_trimmed():
    assert normalize_text("  line one\r\nline two\r\n\r\n") == "line one\nline two"


def test_inner_whitespace_is_kept():
    text = "def f():\n    return 1\n\n\tdone  twice"
    assert normalize_text(f"\n\n{text}   \n") == text


def test_bom_and_zero_width_space_at_edges_are_trimmed():
    assert normalize_text("\ufeffhello\u200b ") == "hello"
    assert normalize_text("\u200b \u3000") == ""


# The rule normalize_text implements, as a pattern: what it trims is checked against it.
EDGE_RUNS = re.compile(r"^[\s\ufeff\u200b]+|[\s\ufeff\u200b]+$")


def test_trimmed_characters_are_exactly_those_of_the_edge_pattern():
    edge = re.compile(r"[\s\ufeff\u200b]")
    assert set(edge_chars()) == {chr(c) for c in range(sys.maxunicode + 1) if edge.match(chr(c))}


@pytest.mark.parametrize("text", [
    "", " ", "\n", "a\n", "a \n\n", "\r\r\n x \r\n", " \u200b\ufeff a b \u3000\n", "\u0301a", "e\u0301 ",
    "\x85x\x1c", "\u2028line\u2029", "cafe\u0301\r\n\t", "\u00a0nbsp\u00a0", "x\u200b\u200by",
])
def test_normalize_text_equals_its_pattern_definition(text):
    expected = EDGE_RUNS.sub("", unicodedata.normalize("NFC", text).replace("\r\n", "\n"))
    assert normalize_text(text) == expected


# ------------------------------------------------------------------------ validate_messages --
def test_valid_conversation_is_returned_normalized():
    messages, reason, error = validate_messages(
        [t(S, " Be brief. "), t(U, "Hi\r\nthere "), t(A, "Hello"), t(U, "Thanks"), t(A, "Welcome")]
    )
    assert reason is None and error == ""
    assert messages == [t(S, "Be brief."), t(U, "Hi\nthere"), t(A, "Hello"), t(U, "Thanks"), t(A, "Welcome")]


def test_tool_calls_are_valid():
    messages = [t(U, "Weather?"), t(A, "call weather()"), t(T, "3C"), t(T, "cloudy"), t(A, "3C, cloudy")]
    assert validate_messages(messages) == (messages, None, "")


@pytest.mark.parametrize(
    ("messages", "reason", "error"),
    [
        ([], Reason.EMPTY_CONVERSATION, "the conversation has no turns"),
        (None, Reason.EMPTY_CONVERSATION, "the conversation has no turns"),
        ([t(S, "Be nice.")], Reason.EMPTY_CONVERSATION, "the conversation has only a system turn"),
        ([t(U, "Hi"), t(A, "Hello"), t(S, "Now be rude."), t(A, "Ok")], Reason.SYSTEM_NOT_FIRST,
         "turn 2: system turn after the first position"),
        ([t(U, "Hi"), t(A, "Hello"), t(U, "More"), t(S, "late")], Reason.SYSTEM_NOT_FIRST,
         "turn 3: system turn after the first position"),
        ([t(U, "Hi"), t(A, " \r\n ")], Reason.EMPTY_TURN, "turn 1 (assistant) is empty"),
        ([t(U, "Hi"), t(A, "Yes"), t(U, "So?"), t(A, None)], Reason.EMPTY_TURN, "turn 3 (assistant) is empty"),
        ([t(S, ""), t(U, "Hi"), t(A, "Hello")], Reason.EMPTY_TURN, "turn 0 (system) is empty"),
        ([t(U, "\u200b"), t(A, "Hello")], Reason.EMPTY_TURN, "turn 0 (user) is empty"),
        ([t(A, "Hello"), t(U, "Hi"), t(A, "Bye")], Reason.STARTS_WITH_ASSISTANT,
         "turn 0: the conversation starts with an assistant turn; the first turn after an optional "
         "system turn must be a user turn"),
        ([t(S, "sys"), t(T, "result"), t(A, "Ok")], Reason.NON_ALTERNATING,
         "turn 1: the conversation starts with a tool turn; a tool turn must answer an assistant turn"),
        ([t(U, "Hi"), t(U, "Hello?"), t(A, "Yes")], Reason.NON_ALTERNATING, "turn 1: two user turns in a row"),
        ([t(U, "Hi"), t(A, "Hello"), t(A, "Again")], Reason.NON_ALTERNATING,
         "turn 2: two assistant turns in a row"),
        ([t(U, "Hi"), t(A, "Hello"), t(U, "a"), t(U, "b"), t(A, "c")], Reason.NON_ALTERNATING,
         "turn 3: two user turns in a row"),
        ([t(U, "Hi"), t(T, "out"), t(A, "Ok")], Reason.NON_ALTERNATING,
         "turn 1: a tool turn cannot follow a user turn"),
        ([t(U, "Hi"), t(A, "call"), t(T, "out"), t(U, "hm"), t(A, "Ok")], Reason.NON_ALTERNATING,
         "turn 3: a user turn cannot follow a tool turn"),
        ([t(U, "Hi")], Reason.NO_ASSISTANT_TURN, "no assistant turn: nothing to train on"),
        ([t(S, "sys"), t(U, "Hi"), t(U, "Hello?")], Reason.NO_ASSISTANT_TURN,
         "no assistant turn: nothing to train on"),
        ([t("gpt", "Hi"), t(A, "x")], Reason.UNKNOWN_ROLE,
         "turn 0: role 'gpt' is not one of system, user, assistant, tool"),
    ],
)
def test_failures_name_reason_and_turn(messages, reason, error):
    _, got_reason, got_error = validate_messages(messages)
    assert (got_reason, got_error) == (reason, error)


def test_failure_returns_normalized_untrimmed_turns():
    messages, reason, _ = validate_messages([t(U, " a "), t(U, "b"), t(A, "c"), t(U, "d")])
    assert reason is Reason.NON_ALTERNATING
    assert messages == [t(U, "a"), t(U, "b"), t(A, "c"), t(U, "d")]


@pytest.mark.parametrize(
    "trailing",
    [[t(U, "And one more?")], [t(U, "x"), t(U, "y")], [t(T, "late tool output")], [t(U, "")]],
)
def test_trailing_turns_are_trimmed_when_enabled(trailing):
    head = [t(U, "Hi"), t(A, "Hello")]
    messages, reason, error = validate_messages(head + trailing, trim_trailing_turns=True)
    assert (messages, reason, error) == (head, None, "")


def test_trailing_turns_fail_when_trimming_is_off():
    messages, reason, error = validate_messages(
        [t(U, "Hi"), t(A, "Hello"), t(U, "x"), t(U, "y")], trim_trailing_turns=False
    )
    assert reason is Reason.NON_ALTERNATING
    assert error == (
        "turn 2: 2 turn(s) after the last assistant turn (user, user); a conversation must end with an "
        "assistant turn (set normalize.trim_trailing_turns: true to trim them)"
    )
    assert len(messages) == 4


def test_trimming_off_keeps_valid_conversations():
    messages = [t(U, "Hi"), t(A, "Hello")]
    assert validate_messages(messages, trim_trailing_turns=False) == (messages, None, "")


# ----------------------------------------------------------------------------- content_hash --
def test_content_hash_is_stable_and_short():
    messages = [t(U, "What is 2 + 2?"), t(A, "4")]
    assert content_hash(messages) == content_hash([dict(m) for m in messages])
    assert len(content_hash(messages)) == 32


@pytest.mark.parametrize("messages", [
    [],
    [t(U, 'say "hi" \\ back\n\ttab'), t(A, "\x00\x1f\x7f \u2028 caf\u00e9 \U0001f600")],
    [{"role": "system", "content": None}, t(U, " a\r\nb "), t(A, "</script>")],
    [{"role": None, "content": "x"}],  # not text: the generic canonical JSON
])
def test_content_hash_is_the_short_hash_of_the_normalized_pairs(messages):
    pairs = [[m["role"], normalize_text(m.get("content") or "")] for m in messages]
    assert content_hash(messages) == short_hash(pairs)


def test_content_hash_equal_for_decomposed_and_precomposed_text():
    decomposed = [t(U, "Caf" + "e\u0301?"), t(A, "Oui")]
    precomposed = [t(U, "Caf\u00e9?"), t(A, "Oui")]
    assert unicodedata.normalize("NFD", "é") != "é"  # the two spellings differ byte-wise
    assert content_hash(decomposed) == content_hash(precomposed)


def test_content_hash_ignores_edge_whitespace_and_crlf():
    assert content_hash([t(U, " a\r\nb "), t(A, "c")]) == content_hash([t(U, "a\nb"), t(A, "c")])


def test_content_hash_depends_on_roles_text_and_order():
    base = content_hash([t(U, "a"), t(A, "b")])
    assert content_hash([t(U, "a"), t(A, "c")]) != base
    assert content_hash([t(S, "a"), t(A, "b")]) != base
    assert content_hash([t(A, "b"), t(U, "a")]) != base
    # turn boundaries matter: the same words split differently are a different conversation
    assert content_hash([t(U, "a b"), t(A, "c")]) != content_hash([t(U, "a"), t(A, "b c")])


# ------------------------------------------------------------------------ normalize_records --
def row(example_id: str, messages: list[dict], category: str | None = None, **extra) -> dict:
    return {"example_id": example_id, "source": "src", "source_format": "openai",
            "source_uri": "file:///data/x.jsonl", "source_row": 1, "source_location": "line 1",
            "category": category, "messages": messages, **extra}


def decisions_by_id(output) -> dict[str, dict]:
    return {d["example_id"]: d for d in output.decisions.to_pylist()}


def test_a_null_turn_is_a_recorded_drop_not_a_crash():
    """A message list holding null (a hand-built Parquet source can) is one row's unknown_role
    drop; the rest of the part is normalized."""
    table = records_from_rows([row("null", [t(U, "Hi"), None, t(A, "Hello")]),
                               row("ok", [t(U, "Write a haiku about rain."), t(A, "Soft rain")])])
    decisions = decisions_by_id(normalize_records(table, NormalizeConfig()))
    assert {k: (d["kept"], d["reason"]) for k, d in decisions.items()} == {
        "null": (False, "unknown_role"), "ok": (True, "kept")}


def test_records_decisions_and_stats():
    table = records_from_rows([
        row("ok", [t(U, "Write a haiku about rain."), t(A, "Soft rain")]),
        row("trim", [t(U, "What is 3 + 4?"), t(A, "7"), t(U, "thanks")]),
        row("fixed", [t(U, "Write a haiku."), t(A, "Moon")], category="poetry"),
        row("dup", [t(U, "Cafe\u0301?"), t(A, "Oui")]),
        row("dup2", [t(U, "Caf\u00e9? "), t(A, "Oui")]),
        row("bad", [t(U, "a"), t(U, "b"), t(A, "c")]),
        row("empty", []),
    ])
    out = normalize_records(table, NormalizeConfig())

    decisions = decisions_by_id(out)
    assert out.decisions.num_rows == table.num_rows == len(decisions)
    assert {k: (d["kept"], d["reason"]) for k, d in decisions.items()} == {
        "ok": (True, "kept"), "trim": (True, "kept_trimmed_trailing_turn"), "fixed": (True, "kept"),
        "dup": (True, "kept"), "dup2": (True, "kept"), "bad": (False, "non_alternating"),
        "empty": (False, "empty_conversation"),
    }
    assert json.loads(decisions["trim"]["detail"]) == {"trimmed_turns": 1}
    assert json.loads(decisions["bad"]["detail"]) == {"location": "line 1", "error": "turn 1: two user turns in a row"}
    assert decisions["ok"]["detail"] is None

    n_kept = sum(d["kept"] for d in decisions.values())
    assert n_kept + sum(not d["kept"] for d in decisions.values()) == table.num_rows
    assert out.records.num_rows == n_kept == 5

    records = {r["example_id"]: r for r in out.records.to_pylist()}
    assert records["trim"]["messages"] == [t(U, "What is 3 + 4?"), t(A, "7")]
    assert records["dup"]["messages"] == [t(U, "Caf\u00e9?"), t(A, "Oui")]
    assert records["dup"]["content_hash"] == records["dup2"]["content_hash"]  # independent of example_id
    assert records["ok"]["content_hash"] == content_hash([t(U, "Write a haiku about rain."), t(A, "Soft rain")])
    assert {k: r["category"] for k, r in records.items()} == {
        "ok": "creative", "trim": "math", "fixed": "poetry", "dup": "qa", "dup2": "qa",
    }
    assert out.stats == {
        "n_in": 7,
        "unidata_version": unicodedata.unidata_version,
        "categories": {"creative": 1, "math": 1, "poetry": 1, "qa": 2},
        "reasons": {"empty_conversation": 1, "kept": 4, "kept_trimmed_trailing_turn": 1, "non_alternating": 1},
    }


def test_trimming_off_drops_trailing_turns():
    table = records_from_rows([row("trim", [t(U, "Hi"), t(A, "Hello"), t(U, "thanks")])])
    out = normalize_records(table, NormalizeConfig(trim_trailing_turns=False))
    assert out.records.num_rows == 0
    [decision] = out.decisions.to_pylist()
    assert (decision["kept"], decision["reason"]) == (False, "non_alternating")
    assert json.loads(decision["detail"])["error"].startswith("turn 2: 1 turn(s) after the last assistant turn (user);")


def test_auto_category_is_classified_and_null_category_too():
    messages = [t(U, "Calculate 2 + 2"), t(A, "4")]
    table = records_from_rows([row("a", messages, category="auto"), row("n", messages, category=None)])
    out = normalize_records(table, NormalizeConfig())
    assert out.records.column("category").to_pylist() == ["math", "math"]


def test_base_columns_kept_and_extra_columns_carried():
    schema = RECORD_SCHEMA.append(pa.field("lang", pa.string()))
    table = records_from_rows(
        [row("a", [t(U, " hi "), t(A, "yo")], origin="human", license="cc-by", lang="en")], schema=schema
    )
    out = normalize_records(table, NormalizeConfig())
    assert out.records.schema == schema
    [record] = out.records.to_pylist()
    assert record == {
        "example_id": "a", "content_hash": content_hash([t(U, "hi"), t(A, "yo")]), "source": "src",
        "source_format": "openai", "source_uri": "file:///data/x.jsonl", "source_row": 1,
        "source_location": "line 1", "category": "qa",
        "origin": "human", "license": "cc-by", "messages": [t(U, "hi"), t(A, "yo")], "lang": "en",
    }


def test_empty_input():
    out = normalize_records(RECORD_SCHEMA.empty_table(), NormalizeConfig())
    assert out.records.num_rows == 0 and out.decisions.num_rows == 0
    assert out.records.schema == RECORD_SCHEMA
    assert out.stats["n_in"] == 0 and out.stats["categories"] == {}


def test_stage_wrapper_reads_inputs_and_config(tmp_path):
    assert LIBRARIES == ("unicodedata", "orjson")
    assert normalize_stage.stage == "normalize"
    writer = ArtifactStore(tmp_path / "artifacts").writer("ingest", "k1")
    writer.write_table("records-00000.parquet", records_from_rows(
        [row("a", [t(U, "Hi"), t(A, "Hello"), t(U, "bye")])]))
    ingested = writer.commit(inputs=[], config_hash="c", code_hash="h", n_in=1, n_out=1, stats={})
    call = StageCall(stage="normalize", key="k2", code_hash="h", config={"trim_trailing_turns": False},
                     config_hash="c", inputs=[ingested], root=str(tmp_path), warehouse=str(tmp_path))
    manifest, hit = execute(call, normalize_stage.compute)  # per part, written part by part
    decisions = pq.read_table(manifest.file("decisions.parquet"))
    assert decisions.column("reason").to_pylist() == ["non_alternating"]  # the config was applied
    assert (hit, manifest.n_in, manifest.n_out) == (False, 1, 0)
    assert pq.read_table(manifest.files_named("records")[0]).schema.names[:2] == ["example_id", "content_hash"]


def test_mixed_trailing_turns_are_listed_when_trimming_is_off():
    _, reason, error = validate_messages(
        [t(U, "Hi"), t(A, "call"), t(T, "out"), t(U, "well?")], trim_trailing_turns=False
    )
    assert reason is Reason.NON_ALTERNATING
    assert error.startswith("turn 2: 2 turn(s) after the last assistant turn (tool, user);")


# -------------------------------------------------------------------- chat-template tokens --
@pytest.mark.parametrize(
    ("token", "index", "role"),
    [("<|im_start|>", 1, "assistant"), ("<|im_end|>", 0, "user"), ("<|endoftext|>", 1, "assistant"),
     ("<|eot_id|>", 1, "assistant"), ("<|start_header_id|>", 0, "user"), ("<start_of_turn>", 1, "assistant"),
     ("<end_of_turn>", 0, "user")],
)
def test_template_tokens_in_text_are_dropped_naming_token_and_turn(token, index, role):
    turns = [t(U, "Hi there"), t(A, "Hello")]
    turns[index] = t(role, f"some text {token}user\nmore")
    _, reason, error = validate_messages(turns)
    assert reason is Reason.TEMPLATE_TOKEN_IN_TEXT
    assert error.startswith(f"turn {index} ({role}) holds the chat-template token {token!r}, which would fake")


@pytest.mark.parametrize("text", [
    "Use <s> and </s> as sentence markers.", "In Haskell, <|> is the Alternative operator.",
    "x <| f |> g", "a < b | c > d", "<b>bold</b> and <start_of_text>",
])
def test_text_that_only_looks_like_a_template_token_is_kept(text):
    assert validate_messages([t(U, "Explain."), t(A, text)])[1] is None


def test_recipes_about_chat_templates_can_keep_template_tokens():
    table = records_from_rows([row("about_chatml", [t(U, "What does <|im_end|> do?"), t(A, "It ends a turn.")])])
    dropped = normalize_records(table, NormalizeConfig())
    kept = normalize_records(table, NormalizeConfig(reject_template_tokens=False))
    assert dropped.decisions.column("reason").to_pylist() == ["template_token_in_text"]
    assert kept.decisions.column("reason").to_pylist() == ["kept"] and kept.records.num_rows == 1


def test_template_token_in_a_trimmed_trailing_turn_does_not_drop_the_row():
    messages, reason, _ = validate_messages([t(U, "Hi"), t(A, "Hello"), t(U, "<|im_end|>")])
    assert reason is None and len(messages) == 2


def test_drop_detail_names_the_location_ingest_wrote_or_the_source_row():
    table = records_from_rows([
        row("array", [t(U, "a"), t(U, "b")], source_location="index 3 (line 5)"),
        {**row("made_elsewhere", [t(A, "a")]), "source_location": None, "source_row": 9},
    ])
    out = normalize_records(table, NormalizeConfig())
    details = {d["example_id"]: json.loads(d["detail"]) for d in out.decisions.to_pylist()}
    assert details["array"]["location"] == "index 3 (line 5)"
    assert details["made_elsewhere"]["location"] == "source_row 9"


# ------------------------------------------------------------- columns equal the row-by-row rules --
def reference_normalize(table: pa.Table, cfg: NormalizeConfig) -> tuple[list, list, dict]:
    """What normalize_records computes, one row at a time with the public per-row functions:
    (kept rows as dicts, decisions as dicts, stats)."""
    from collections import Counter

    from sftflow.tasks.lib.categories import AUTO, classify_category
    from sftflow.tasks.normalize import source_location

    kept, decisions, categories = [], [], Counter()
    for record in table.to_pylist():
        messages, reason, error = validate_messages(record["messages"], cfg.trim_trailing_turns,
                                                    cfg.reject_template_tokens)
        decision = {"example_id": record["example_id"], "kept": reason is None, "score": None, "dup_of": None}
        if reason is not None:
            detail = {"location": source_location(record), "error": error}
            decisions.append({**decision, "reason": reason.value, "detail": json.dumps(detail, sort_keys=True)})
            continue
        n_trimmed = len(record["messages"] or []) - len(messages)
        detail = json.dumps({"trimmed_turns": n_trimmed}) if n_trimmed else None
        reason = Reason.KEPT_TRIMMED if n_trimmed else Reason.KEPT
        decisions.append({**decision, "reason": reason.value, "detail": detail})
        fixed = record["category"]
        category = fixed if fixed and fixed != AUTO else classify_category(messages)
        categories[category] += 1
        kept.append({**record, "messages": messages, "content_hash": content_hash(messages), "category": category})
    reasons = Counter(d["reason"] for d in decisions)
    stats = {"n_in": table.num_rows, "unidata_version": unicodedata.unidata_version,
             "categories": dict(sorted(categories.items())), "reasons": dict(sorted(reasons.items()))}
    return kept, decisions, stats


_TEXT_PIECES = ["Hi", " ", "\n", "\r\n", "\r\r\n", "\t", "\u200b", "\ufeff", "\u3000", "e\u0301", "\u212b", "é",
                "<|im_end|>", "<start_of_turn>", "<|\u212a|>", "def f(x):", "Write a poem", "12 * 7", "```", "ſolve"]
_TURN_TEXTS = st.lists(st.sampled_from(_TEXT_PIECES) | st.text(max_size=5), min_size=1, max_size=6).map("".join) | st.none()
# Mostly conversations of the usual shape (an optional system turn, then user and assistant turns
# in turn, sometimes a trailing user turn), so most rows are kept; some with any roles at all.
_USUAL_ROLES = st.tuples(st.booleans(), st.integers(1, 3), st.booleans()).map(
    lambda shape: ["system"] * shape[0] + ["user", "assistant"] * shape[1] + ["user"] * shape[2])
_ANY_ROLES = st.lists(st.sampled_from(["user", "assistant", "system", "tool", "bot", "", None]), max_size=5)
_TURNS = (_USUAL_ROLES | _USUAL_ROLES | _ANY_ROLES).flatmap(
    lambda roles: st.tuples(*[st.tuples(st.just(role), _TURN_TEXTS) for role in roles]).map(list))
_ROWS = st.lists(st.tuples(_TURNS | st.none(), st.sampled_from([None, "auto", "math"])), max_size=12)


@settings(max_examples=200, deadline=None)
@given(_ROWS, st.booleans(), st.booleans())
def test_normalize_records_equals_the_row_by_row_rules(rows, trim, reject):
    table = records_from_rows([
        row(f"e{i}", None if turns is None else [t(role, text) for role, text in turns], category=category,
            source_row=i, source_location=f"line {i}" if i % 2 else None)
        for i, (turns, category) in enumerate(rows)])
    cfg = NormalizeConfig(trim_trailing_turns=trim, reject_template_tokens=reject)
    out = normalize_records(table, cfg)
    kept, decisions, stats = reference_normalize(table, cfg)
    assert out.records.to_pylist() == kept
    assert out.decisions.to_pylist() == decisions
    assert out.stats == stats


def test_normalize_records_makes_the_arrays_a_list_of_rows_would():
    """The artifact's bytes depend on the arrays' layout, not only their values."""
    import io

    table = records_from_rows([row("a", [t(S, " Be brief. "), t(U, "Hi\r\n"), t(A, "Hello")]),
                               row("b", [t(U, "x"), t(U, "y")]), row("c", [t(U, "q"), t(A, "r"), t(U, "s")])])
    out = normalize_records(table, NormalizeConfig())
    kept, _, _ = reference_normalize(table, NormalizeConfig())
    rebuilt = pa.Table.from_pylist(kept, schema=out.records.schema)

    def parquet(t):
        sink = io.BytesIO()
        pq.write_table(t, sink, compression="zstd")
        return sink.getvalue()

    assert parquet(out.records) == parquet(rebuilt)


def test_orjson_writes_the_canonical_json_of_every_code_point():
    """content_hash's text, as orjson writes it for the columns (normalize_records) and as json.dumps
    writes it (content_hash), for a text holding every code point but the surrogates."""
    import orjson

    text = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    pairs = [["user", text], ["assistant", text[::-1]]]
    assert orjson.dumps([pairs]) == json.dumps([pairs], ensure_ascii=False, separators=(",", ":")).encode()


def test_rows_with_more_text_than_one_array_holds_are_done_in_halves(monkeypatch):
    import sftflow.tasks.normalize as normalize

    table = records_from_rows([row(f"e{i}", [t(U, f"Write a poem {i} "), t(A, "x")] if i % 3 else [t(U, "a")])
                               for i in range(7)])
    whole = normalize_records(table, NormalizeConfig())
    monkeypatch.setattr(normalize, "MAX_TEXT_BYTES", 100)
    halves = normalize_records(table, NormalizeConfig())
    assert halves.records.to_pylist() == whole.records.to_pylist()
    assert halves.decisions.to_pylist() == whole.decisions.to_pylist()
    assert halves.stats == whole.stats
