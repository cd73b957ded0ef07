"""The ingest + normalize ledger, checked on the pure functions' outputs (shared by the corpus
and fuzz tests): nothing read is lost, nothing is judged twice, every reason is in the vocabulary,
and every table a stage returns can be written to Parquet."""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow.parquet as pq

from sftflow.tasks.core.reasons import KEPT_REASONS, Reason
from sftflow.tasks.core.records import StageOutput

VOCABULARY = {reason.value for reason in Reason}


def decisions_by_id(table) -> dict[str, tuple[str, dict]]:
    """example_id -> (reason, detail) of one stage's decisions; each id must appear once."""
    rows = table.to_pylist()
    ids = Counter(row["example_id"] for row in rows)
    assert max(ids.values(), default=1) == 1, f"example judged twice: {ids.most_common(1)}"
    return {row["example_id"]: (row["reason"], json.loads(row["detail"]) if row["detail"] else {}) for row in rows}


def assert_ledger(ingested: StageOutput, normalized: StageOutput) -> None:
    examples = ingested.extra["examples"].column("example_id").to_pylist()
    at_ingest = decisions_by_id(ingested.decisions)
    at_normalize = decisions_by_id(normalized.decisions)
    # every row read: one examples row, one ingest decision, its own example_id
    assert len(set(examples)) == len(examples) == ingested.stats["n_in"] == len(at_ingest)
    assert set(at_ingest) == set(examples)
    kept = {i for i, (reason, _) in at_ingest.items() if reason in KEPT_REASONS}
    assert len(kept) + ingested.stats["n_quarantined"] == ingested.stats["n_in"]
    assert set(ingested.records.column("example_id").to_pylist()) == kept
    assert ingested.records.num_rows == len(kept)
    for reason, detail in at_ingest.values():
        if reason not in KEPT_REASONS:
            assert detail["location"] and detail["error"], detail
    # normalize judges exactly what ingest kept and passes on exactly what it keeps
    assert normalized.stats["n_in"] == len(kept) == len(at_normalize)
    assert set(at_normalize) == kept
    normalize_kept = {i for i, (reason, _) in at_normalize.items() if reason in KEPT_REASONS}
    assert set(normalized.records.column("example_id").to_pylist()) == normalize_kept
    assert normalized.records.num_rows == len(normalize_kept)
    for reason, detail in at_normalize.values():
        if reason not in KEPT_REASONS:
            assert detail["location"] and detail["error"], detail
    assert {reason for reason, _ in [*at_ingest.values(), *at_normalize.values()]} <= VOCABULARY
    # what a stage returns must be storable (a lone surrogate once failed the whole write here)
    for table in (ingested.records, ingested.decisions, ingested.extra["examples"], normalized.records,
                  normalized.decisions):
        pq.write_table(table, io.BytesIO())
