"""Every malformed-input case of tests/tasks/malformed_corpus.py through ingest and normalize.

For each case: the file is refused with a SourceError naming it, or every row read ends with
exactly the expected decision (stage, reason, location, a piece of the error), and the ledger
balances: one ingest decision per row read, normalize judges exactly the rows ingest kept, and
every stage's kept + dropped equals its rows in.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core.reasons import KEPT_REASONS
from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.core.recipe_data import NormalizeConfig
from sftflow.tasks.core.recipe_filters import FilterConfig
from sftflow.tasks.core.records import RAW_PREVIEW_CHARS
from tests.stage_helpers import read_source, records_from_rows
from sftflow.tasks.filters import filter_records
from sftflow.tasks.lib.rows import SourceError
from sftflow.tasks.normalize import normalize_records
from sftflow.tasks.lib.tokens import load_token_counter
from tests.tasks.ledger import VOCABULARY, assert_ledger, decisions_by_id
from tests.tasks.malformed_corpus import CASES, INGEST, NORMALIZE, Case, Row


REPO = Path(__file__).resolve().parents[2]


def run_case(case: Case, folder: Path):
    path = folder / f"{case.name}{case.suffix}"
    path.write_bytes(case.data)
    source = SourceConfig(name="corpus", format=case.format, path=str(path), **case.source)
    return path, source


def ingest_and_normalize(source: SourceConfig, path: Path, normalize: dict | None = None):
    ingested = read_source(source, path)
    return ingested, normalize_records(ingested.records, NormalizeConfig(**(normalize or {})))


def outcomes(ingested, normalized) -> list[Row]:
    """The fate of every row read, in file order, as the corpus writes it."""
    at_ingest = decisions_by_id(ingested.decisions)
    at_normalize = decisions_by_id(normalized.decisions)
    kept_at = dict(zip(ingested.records.column("example_id").to_pylist(),
                       ingested.records.column("source_location").to_pylist()))
    rows = []
    for example_id in ingested.extra["examples"].column("example_id").to_pylist():
        reason, detail = at_ingest[example_id]
        if reason != "kept":
            rows.append(Row(detail["location"], INGEST, reason, detail["error"]))
            continue
        reason, detail = at_normalize[example_id]
        location = kept_at[example_id]
        if reason not in KEPT_REASONS:
            assert detail["location"] == location, "a normalize drop names the row's place as ingest does"
        rows.append(Row(location, NORMALIZE, reason, detail.get("error", "")))
    return rows


def test_the_corpus_covers_each_format_and_reason():
    per_format = Counter(case.format for case in CASES)
    assert len(CASES) >= 40 and min(per_format.values()) >= 12, per_format
    assert len({case.name for case in CASES}) == len(CASES)
    reasons = {row.reason for case in CASES for row in case.rows}
    ingest_and_normalize_reasons = {
        "invalid_json", "invalid_encoding", "duplicate_key", "not_an_object", "missing_field", "wrong_type",
        "unknown_role", "tool_turn_quarantined", "unsupported_content", "mixed_schema", "empty_conversation",
        "empty_turn", "system_not_first", "starts_with_assistant", "non_alternating", "no_assistant_turn",
        "template_token_in_text", "kept", "kept_trimmed_trailing_turn",
    }
    assert reasons == ingest_and_normalize_reasons
    assert reasons <= VOCABULARY


def test_every_reason_is_documented():
    catalog = (REPO / "docs" / "catalog.md").read_text(encoding="utf-8")
    vocabulary = catalog.split("## `decisions.reason` vocabulary")[1].split("\n## ")[0]
    assert sorted(r for r in VOCABULARY if f"`{r}`" not in vocabulary) == []
    bad_input = (REPO / "docs" / "bad-input.md").read_text(encoding="utf-8")
    dropped = {row.reason for case in CASES for row in case.rows} - KEPT_REASONS
    assert sorted(r for r in dropped if f"`{r}`" not in bad_input) == []


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_malformed_case(case: Case, tmp_path: Path):
    path, source = run_case(case, tmp_path)
    if case.source_error is not None:
        with pytest.raises(SourceError) as caught:
            read_source(source, path)
        where = f"source 'corpus' ({path}): "
        message = str(caught.value)
        assert message.startswith(where), message
        assert re.match(case.source_error, message[len(where):]), message
        return

    ingested, normalized = ingest_and_normalize(source, path, case.normalize)

    got = outcomes(ingested, normalized)
    assert [(r.location, r.stage, r.reason) for r in got] == [(r.location, r.stage, r.reason) for r in case.rows]
    for expected, actual in zip(case.rows, got):
        assert expected.error in actual.error, (expected.location, actual.error)
    assert_ledger(ingested, normalized)


# ------------------------------------------------------------- cases that need more checks --
def test_null_missing_and_empty_input_give_the_same_conversation(tmp_path):
    [case] = [c for c in CASES if c.name == "alpaca_null_vs_missing_input"]
    path, source = run_case(case, tmp_path)
    messages = read_source(source, path).records.column("messages").to_pylist()
    assert messages == [[{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]] * 3


def test_rows_sharing_an_id_are_distinct_examples(tmp_path):
    [case] = [c for c in CASES if c.name == "alpaca_duplicate_and_mixed_type_ids"]
    path, source = run_case(case, tmp_path)
    ingested, normalized = ingest_and_normalize(source, path)
    ids = normalized.records.column("example_id").to_pylist()
    assert len(set(ids)) == len(ids) == 6
    # rows 1 and 3 hold the same conversation: one content_hash, left for dedup to judge
    hashes = normalized.records.column("content_hash").to_pylist()
    assert hashes[0] == hashes[2] != hashes[1]


def test_a_multi_megabyte_record_is_read_whole_with_a_short_raw_preview(tmp_path):
    output = "All work and no play makes a dull day. " * 80_000  # about 3 MB on one line
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"instruction": "Repeat the proverb.", "output": output}) + "\n", encoding="utf-8")
    assert path.stat().st_size > 3_000_000
    ingested, normalized = ingest_and_normalize(SourceConfig(name="big", format="alpaca", path=str(path)), path)
    [raw] = ingested.extra["examples"].column("raw").to_pylist()
    assert len(raw) == RAW_PREVIEW_CHARS
    [messages] = normalized.records.column("messages").to_pylist()
    assert messages[1]["content"] == output.strip()
    assert_ledger(ingested, normalized)


def test_a_sequence_longer_than_max_total_tokens_is_too_long_at_filter(tmp_path):
    counter = load_token_counter("builtin:minilm")
    prompt, answer = "Describe the sea.", "The sea is wide and deep and full of salt. " * 20
    n_tokens = sum(counter.count([prompt, answer]))
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"instruction": prompt, "output": answer}) + "\n", encoding="utf-8")
    _, normalized = ingest_and_normalize(SourceConfig(name="long", format="alpaca", path=str(path)), path)

    def decide(max_total_tokens: int) -> tuple[str, dict]:
        cfg = FilterConfig.model_validate({
            "length": {"min_response_tokens": 1, "max_total_tokens": max_total_tokens},
            "toxicity": {"enabled": False}, "decontaminate": {"eval_sets": []},
        })
        [decision] = filter_records(normalized.records, cfg, counter, None, {}).decisions.to_pylist()
        return decision["reason"], json.loads(decision["detail"])

    assert decide(n_tokens) == ("kept", decide(n_tokens)[1])  # the limit itself is allowed
    reason, detail = decide(n_tokens - 1)
    assert reason == "too_long" and detail["n_tokens_total"] == n_tokens


def test_gzip_error_names_the_file_and_says_what_to_do(tmp_path):
    [case] = [c for c in CASES if c.name == "alpaca_gzip_bytes_named_jsonl"]
    path, source = run_case(case, tmp_path)
    with pytest.raises(SourceError, match=rf"^source 'corpus' \({re.escape(str(path))}\): the file is "
                                          r"gzip-compressed; decompress it \(gunzip FILE\)"):
        read_source(source, path)


def test_records_built_from_the_corpus_round_trip_through_parquet(tmp_path):
    # The lone-surrogate row would make this very call fail (UnicodeEncodeError) before the fix.
    [case] = [c for c in CASES if c.name == "alpaca_lone_surrogates"]
    path, source = run_case(case, tmp_path)
    ingested = read_source(source, path)
    buffer = io.BytesIO()
    pq.write_table(records_from_rows(ingested.records.to_pylist()), buffer)
    assert pq.read_table(io.BytesIO(buffer.getvalue())).num_rows == 2
