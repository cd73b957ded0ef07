"""The audit surface on a real, complete run: README queries, `sftflow explain`, `sftflow lineage`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftflow.flows.cli import app
from sftflow.tasks.core.catalog import connect_readonly

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner(env={"COLUMNS": "240"})  # wide enough that rich does not fold cells


def readme_queries() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- audit-queries:begin -->")[1].split("<!-- audit-queries:end -->")[0]
    return re.findall(r"\*\*(\d+\. [^*]+)\*\*.*?```sql\n(.*?)\n```", block, re.S)


@pytest.fixture(scope="module")
def warehouse(completed_run) -> Path:
    root, _summary = completed_run
    return root / "data" / "warehouse"


@pytest.fixture(scope="module")
def ids(warehouse) -> dict[str, str]:
    """Placeholder values taken from the run: a near duplicate and its survivor, a trained row."""
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        dropped, survivor = con.execute(
            "SELECT example_id, dup_of FROM drops WHERE reason = 'near_duplicate' ORDER BY 1 LIMIT 1").fetchone()
        source, row = con.execute(
            """SELECT e.source, e.source_row FROM latest_shards s JOIN shard_examples se USING (shard_id)
               JOIN latest_examples e USING (example_id) WHERE s.split = 'train' ORDER BY 1, 2 LIMIT 1""").fetchone()
        quarantined = con.execute("SELECT example_id FROM drops WHERE reason = 'invalid_json'").fetchone()[0]
        trained = con.execute("SELECT example_id FROM latest_examples WHERE source = ? AND source_row = ?",
                              [source, row]).fetchone()[0]
        model_id = con.execute("SELECT model_id FROM models").fetchone()[0]
    return {"EXAMPLE_ID": dropped, "SURVIVOR_ID": survivor, "SOURCE": source, "SOURCE_ROW": str(row),
            "QUARANTINED": quarantined, "TRAINED": trained, "MODEL_ID": model_id}


def test_readme_has_at_least_eight_audit_queries():
    titles = [title for title, _sql in readme_queries()]
    assert len(titles) >= 8, titles


@pytest.mark.parametrize("title,sql", readme_queries(), ids=[t.split(".")[0] for t, _ in readme_queries()])
def test_readme_audit_query_answers(title, sql, warehouse, ids):
    for name, value in ids.items():
        sql = sql.replace(f"<{name}>", value)
    assert "<" not in sql.replace("<>", ""), f"unfilled placeholder in {title}"
    result = runner.invoke(app, ["sql", sql, "--format", "json", "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows, f"{title}: no rows"
    if title.startswith("9."):
        assert all(r["balanced"] for r in rows)


def explain(warehouse: Path, example_id: str, *extra: str):
    return runner.invoke(app, ["explain", example_id, "--warehouse", str(warehouse), *extra])


def test_explain_a_near_duplicate(warehouse, ids):
    result = explain(warehouse, ids["EXAMPLE_ID"], "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    example = report["example"]
    # the raw source line is the one in the file at source_row
    path = warehouse.parent.parent / example["source_uri"]  # relative to the project root
    assert not Path(example["source_uri"]).is_absolute()
    if example["source_format"] in ("openai", "sharegpt"):  # JSON Lines: 1-based line numbers
        line = path.read_text(encoding="utf-8").splitlines()[example["source_row"] - 1]
        assert report["raw"].strip() == line.strip()
    assert report["normalized"]["messages"][0]["role"] in ("system", "user")
    stages = [d["stage"] for d in report["decisions"]]
    assert stages[:3] == ["ingest", "normalize", "dedup"]
    dedup = next(d for d in report["decisions"] if d["stage"] == "dedup")
    assert dedup["reason"] == "near_duplicate" and dedup["dup_of"] == ids["SURVIVOR_ID"]
    assert report["shards"] == [] and report["trained_models"] == []


def test_explain_a_trained_row_and_a_quarantined_row(warehouse, ids):
    trained = json.loads(explain(warehouse, ids["TRAINED"], "--format", "json").output)
    assert [d["reason"] for d in trained["decisions"] if d["stage"] == "mix"] in (["selected"], ["held_out_eval"])
    assert trained["shards"] and trained["trained_models"] == [ids["MODEL_ID"]]

    quarantined = json.loads(explain(warehouse, ids["QUARANTINED"], "--format", "json").output)
    assert quarantined["normalized"] is None
    assert [(d["stage"], d["reason"]) for d in quarantined["decisions"]] == [("ingest", "invalid_json")]
    assert quarantined["raw"]  # the unparsable line itself, kept for the audit

    table = explain(warehouse, ids["QUARANTINED"][:8])  # a unique prefix is enough
    assert table.exit_code == 0 and "invalid_json" in table.output and "never kept by normalize" in table.output


def test_explain_unknown_or_short_ids_say_what_to_do(warehouse):
    unknown = explain(warehouse, "ffffffffffff")
    assert unknown.exit_code == 1 and "no example 'ffffffffffff'" in unknown.output
    short = explain(warehouse, "abc")
    assert short.exit_code == 1 and "at least 6 characters" in short.output


def test_lineage_of_the_model(warehouse, ids):
    result = runner.invoke(app, ["lineage", ids["MODEL_ID"], "--format", "json", "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model"]["model_id"] == ids["MODEL_ID"]
    assert {a["stage"] for a in report["upstream_artifacts"]} == {"ingest", "normalize", "dedup", "filter", "score",
                                                                  "mix"}
    assert {s["source"] for s in report["sources"]} == {"alpaca_sample", "sharegpt_sample", "openai_sample"}
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        expected = [r[0] for r in con.execute(
            """SELECT DISTINCT se.example_id FROM latest_shards s JOIN shard_examples se USING (shard_id)
               WHERE s.split = 'train' ORDER BY 1""").fetchall()]
        train_rows = con.execute("SELECT sum(n_rows) FROM latest_shards WHERE split = 'train'").fetchone()[0]
        as_view = con.execute("SELECT example_id, source, source_row, n_copies FROM model_examples "
                              "WHERE model_id = ? ORDER BY 1", [ids["MODEL_ID"]]).fetchall()
    assert report["example_ids"] == expected and report["n_train_examples"] == len(expected)
    # the same rows as the SQL view, each with its source row as the model's own ingest read it
    assert [(r["example_id"], r["source"], r["source_row"], r["n_copies"]) for r in report["rows"]] == as_view
    assert report["dropped_by_train"] == []
    assert sum(s["n_train_rows"] for s in report["sources"]) == train_rows
    assert sum(s["n_examples"] for s in report["sources"]) == len(expected)
    assert {s["split"] for s in report["shards"]} == {"train", "eval"}

    table = runner.invoke(app, ["lineage", ids["MODEL_ID"][:10], "--warehouse", str(warehouse)])
    assert table.exit_code == 0 and f"{len(expected)} example ids trained on" in table.output
    assert expected[0] in table.output
