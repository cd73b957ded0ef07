"""Bad input inside a real run: every malformed row ends as a catalog decision at its line.

One JSON Lines source per format mixes the project's sample rows with every row-level case of
tests/tasks/malformed_corpus.py, the data half of the pipeline runs, and the catalog (opened
read-only) must hold, for each corpus row, the expected reason at the expected stage with a
detail naming the row's line, and a balanced ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sftflow.tasks.core.catalog import connect_readonly
from tests.tasks.malformed_corpus import CASES, INGEST, NORMALIZE, Row

SAMPLE_ROWS_BETWEEN = 1  # sample rows written before each corpus row


def sample_lines(root: Path, fmt: str) -> list[bytes]:
    samples = root / "data" / "samples"
    if fmt == "alpaca":
        return [json.dumps(row).encode() for row in json.loads((samples / "alpaca.json").read_text(encoding="utf-8"))]
    return [line for line in (samples / f"{fmt}.jsonl").read_bytes().split(b"\n") if line.strip()]


def corpus_lines(fmt: str) -> list[tuple[bytes, Row]]:
    """(the line's bytes, its expected fate) for every row of the format's row-level cases."""
    lines = []
    for case in CASES:
        if case.format == fmt and case.row_level:
            physical = case.data.split(b"\n")
            lines += [(physical[int(row.location.removeprefix("line ")) - 1], row) for row in case.rows]
    return lines


def write_source(root: Path, fmt: str) -> dict[int, Row]:
    """Sample rows and corpus rows interleaved; returns line number -> expected fate."""
    samples, bad = sample_lines(root, fmt), corpus_lines(fmt)
    lines: list[bytes] = []
    expected: dict[int, Row] = {}
    for position, (line, row) in enumerate(bad):
        lines += samples[position * SAMPLE_ROWS_BETWEEN:(position + 1) * SAMPLE_ROWS_BETWEEN]
        lines.append(line)
        expected[len(lines)] = row
    (root / "data" / "samples" / f"{fmt}_bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return expected


def test_every_bad_row_is_a_located_decision_in_the_catalog(project, run_pipeline, assert_ledger_balances):
    expected = {fmt: write_source(project, fmt) for fmt in ("alpaca", "sharegpt", "openai")}
    assert sum(map(len, expected.values())) >= 100
    recipe = yaml.safe_load((project / "deployments" / "recipes" / "demo.yaml").read_text())
    recipe["name"] = "bad_input"
    recipe["score"] = {"enabled": False}  # every row goes on unscored: the model adds time, not coverage here
    recipe["sources"] = [{"name": f"{fmt}_bad", "path": f"data/samples/{fmt}_bad.jsonl", "format": fmt}
                         for fmt in expected]
    (project / "deployments" / "recipes" / "bad_input.yaml").write_text(yaml.safe_dump(recipe))

    summary = run_pipeline(project, recipe="deployments/recipes/bad_input.yaml", only="data")

    assert_ledger_balances(project, summary["run_id"])
    with connect_readonly(project / "data" / "warehouse" / "catalog.duckdb") as con:
        rows = con.execute(
            """SELECT e.source, e.source_row, d.stage, d.reason, d.detail
               FROM decisions d JOIN examples e USING (example_id)
               WHERE d.stage IN ('ingest', 'normalize')
                 AND d.artifact_id IN (SELECT key FROM stage_runs WHERE run_id = ?)""",
            [summary["run_id"]],
        ).fetchall()
    decided: dict[tuple[str, int], dict[str, tuple[str, dict]]] = {}
    for source, line, stage, reason, detail in rows:
        decided.setdefault((source, line), {})[stage] = (reason, json.loads(detail) if detail else {})

    for fmt, fates in expected.items():
        for line, row in fates.items():
            got = decided[(f"{fmt}_bad", line)]
            ingest_reason, ingest_detail = got[INGEST]
            if row.stage == INGEST:
                assert (ingest_reason, ingest_detail["location"]) == (row.reason, f"line {line}"), (fmt, line, got)
                assert row.error in ingest_detail["error"]
                assert NORMALIZE not in got  # a quarantined row is judged once
                continue
            assert ingest_reason == "kept", (fmt, line, got)
            reason, detail = got[NORMALIZE]
            assert reason == row.reason, (fmt, line, row, got)
            if row.reason not in ("kept", "kept_trimmed_trailing_turn"):
                assert detail["location"] == f"line {line}" and row.error in detail["error"], (fmt, line, detail)
