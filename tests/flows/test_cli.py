"""The CLI's fast paths: recipe and path errors before Prefect starts, and read-only SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftflow.flows.cli import app
from sftflow.tasks.core.catalog import Catalog

runner = CliRunner()


@pytest.fixture
def warehouse(tmp_path):
    cat = Catalog(tmp_path / "wh" / "catalog.duckdb")
    cat.start_run("r1", None, "demo", "rh", "cv", "{}", [])
    cat.finish_run("r1", "completed")
    return tmp_path / "wh"


def test_sql_formats(warehouse):
    result = runner.invoke(app, ["sql", "SELECT run_id, status FROM runs", "--format", "json",
                                 "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"run_id": "r1", "status": "completed"}]
    result = runner.invoke(app, ["sql", "SELECT run_id FROM runs", "--format", "csv", "--warehouse", str(warehouse)])
    assert result.output.splitlines() == ["run_id", "r1"]
    assert "\r" not in result.output  # plain LF lines, so $(sftflow sql ... | tail -1) is a clean id
    result = runner.invoke(app, ["sql", "SELECT recipe_name FROM runs", "--warehouse", str(warehouse)])
    assert result.exit_code == 0 and "demo" in result.output


# Writes, schema changes, other databases, extensions, settings, and every way of reading or
# writing a file: all refused by the read-only, external-access-off, configuration-locked connection.
SQL_PAYLOADS = [
    "DELETE FROM runs", "DROP VIEW ledger", "INSERT INTO runs (run_id) VALUES ('x')",
    "UPDATE runs SET status = 'x'", "TRUNCATE runs", "ALTER TABLE runs ADD COLUMN x INT",
    "CREATE TABLE t AS SELECT 1", "CREATE VIEW v AS SELECT 1", "CREATE MACRO m() AS 1",
    "COPY runs TO '/tmp/sftflow-leak.csv'", "COPY (SELECT 1) TO '/tmp/sftflow-leak.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '/tmp/sftflow-export'", "IMPORT DATABASE '/tmp/sftflow-export'",
    "ATTACH '/tmp/sftflow-evil.duckdb' AS evil", "ATTACH ':memory:' AS m",
    "INSTALL httpfs", "LOAD httpfs",
    "SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('/etc/passwd')", "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')", "SELECT * FROM glob('/etc/*')", "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SET enable_external_access = true", "SET lock_configuration = false", "SET allowed_paths = ['/etc']",
    "SET temp_directory = '/tmp/sftflow-tmp'", "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
]


@pytest.mark.parametrize("statement", SQL_PAYLOADS)
def test_sql_refuses_writes_and_file_access(warehouse, statement):
    before = {p.name for p in Path("/tmp").glob("sftflow-*")}
    result = runner.invoke(app, ["sql", statement, "--warehouse", str(warehouse)])
    assert result.exit_code == 1
    assert "refused or failed" in result.output
    assert {p.name for p in Path("/tmp").glob("sftflow-*")} <= before  # nothing written
    check = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM runs", "--format", "json",
                                "--warehouse", str(warehouse)])
    assert json.loads(check.output) == [{"n": 1}]


def test_at_least_twenty_sql_payloads():
    assert len(SQL_PAYLOADS) >= 20


def test_sql_without_catalog_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["sql", "SELECT 1", "--warehouse", str(tmp_path)])
    assert result.exit_code == 1 and "sftflow run" in result.output


def test_run_rejects_bad_recipe_before_starting(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsources:\n  - {name: a, path: a.json, format: alpaca}\nmix: {shares: {qa: 0.5}}\n")
    result = runner.invoke(app, ["run", str(recipe), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "sum to 1" in result.output


def test_run_rejects_source_outside_roots(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsources:\n  - {name: a, path: ../../etc/passwd, format: alpaca}\n")
    result = runner.invoke(app, ["run", str(recipe), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "outside the allowed roots" in result.output


def test_run_rejects_recipe_outside_roots(tmp_path):
    (tmp_path / "proj").mkdir()
    recipe = tmp_path / "elsewhere.yaml"
    recipe.write_text("name: x\nsources:\n  - {name: a, path: a.json, format: alpaca}\n")
    result = runner.invoke(app, ["run", str(recipe), "--root", str(tmp_path / "proj")])
    assert result.exit_code == 2
    assert "outside the allowed roots" in result.output


def test_run_rejects_bad_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsources:\n  - {name: a, path: a.json, format: alpaca}\n")
    result = runner.invoke(app, ["run", str(recipe), "--root", str(tmp_path), "--set", "filters.toxicity.treshold=1"])
    assert result.exit_code == 2
    assert "treshold" in result.output


def _ingest_run(tmp_path, cat, run_id, key, raw):
    """One run reading one source whose row 1 is `raw` (one ingest artifact, registered)."""
    import pyarrow as pa

    from sftflow.tasks.core.reasons import Reason
    from sftflow.tasks.core.records import EXAMPLE_SCHEMA, DecisionLog, StageOutput
    from tests.stage_helpers import records_from_rows
    from sftflow.tasks.core.stage import StageCall, execute

    def compute(call):
        log = DecisionLog()
        log.add("e1a2b3c4", Reason.KEPT)
        example = {"example_id": "e1a2b3c4", "source": "s", "source_format": "openai", "source_uri": "s.jsonl",
                   "source_row": 1, "origin": None, "license": None, "raw": raw}
        return StageOutput(records=records_from_rows([{"example_id": "e1a2b3c4", "source": "s", "messages": []}]),
                           decisions=log.to_table(),
                           extra={"examples": pa.Table.from_pylist([example], schema=EXAMPLE_SCHEMA)})

    call = StageCall(stage="ingest", key=key, code_hash="c", config={}, config_hash="h", inputs=[],
                     root=str(tmp_path), warehouse=str(tmp_path / "wh"))
    cat.start_run(run_id, None, "demo", "rh", "cv", "{}", [])
    manifest, _hit = execute(call, compute)
    cat.record_stage(run_id, manifest, "s", False, 0.1)
    cat.finish_run(run_id, "completed")


def test_explain_shows_every_version_of_an_edited_row(tmp_path):
    cat = Catalog(tmp_path / "wh" / "catalog.duckdb")
    _ingest_run(tmp_path, cat, "run-one", "ingest-one", '{"q": "first text"}')
    _ingest_run(tmp_path, cat, "run-two", "ingest-two", '{"q": "inserted above"}')
    wh = str(tmp_path / "wh")
    newest = runner.invoke(app, ["explain", "e1a2b3", "--warehouse", wh], env={"COLUMNS": "200"})
    assert newest.exit_code == 0, newest.output
    assert "version 2 of 2" in newest.output and "inserted above" in newest.output
    assert "run-one" in newest.output  # the versions table names the runs that read each text
    old = json.loads(runner.invoke(app, ["explain", "e1a2b3", "--run", "run-one", "--format", "json",
                                         "--warehouse", wh]).output)
    assert old["raw"] == '{"q": "first text"}' and old["version"] == 1 and old["as_of"] == {"run_id": "run-one"}
    assert [d["artifact_id"] for d in old["decisions"]] == ["ingest-one"]
    both = runner.invoke(app, ["explain", "e1a2b3", "--run", "run-one", "--model", "abcdef", "--warehouse", wh])
    assert both.exit_code == 1 and "not both" in both.output
    unknown = runner.invoke(app, ["explain", "e1a2b3", "--run", "nosuchrun", "--warehouse", wh])
    assert unknown.exit_code == 1 and "no run 'nosuchrun'" in unknown.output


def test_the_summary_says_why_each_stage_computed(capsys):
    from sftflow.flows.cli import print_summary

    def row(stage, label, why):
        return {"stage": stage, "label": label, "n_in": 3, "n_out": 3, "cache_hit": not why, "seconds": 0.1, "why": why}

    base = {"run_id": "r1", "recipe": "demo", "wall_seconds": 1.0, "ledger": [], "drop_reasons": [], "mixture": []}
    print_summary({**base, "stages": [row("ingest", "alpaca_sample", "source file changed"), row("dedup", "", ""),
                                      row("filter", "", "recipe filters.toxicity.threshold: null -> 0.3")]})
    out = capsys.readouterr().out
    assert "  ingest[alpaca_sample]: source file changed\n" in out  # the label is text, not rich markup
    assert "  filter: recipe filters.toxicity.threshold: null -> 0.3\n" in out
    assert "dedup:" not in out  # a cache hit has no reason
    first = "no earlier artifact of this stage for this recipe"
    print_summary({**base, "stages": [row("ingest", "a", first), row("ingest", "b", first)]})
    assert f"why computed: {first} (every stage computed)" in capsys.readouterr().out


def test_table_output_shows_values_as_they_are(capsys):
    from sftflow.flows.cli_audit import write_rows

    write_rows(["source", "reason"], [("[alpaca_sample]", "[bold]toxic")], "table")
    out = capsys.readouterr().out
    assert "[alpaca_sample]" in out and "[bold]toxic" in out
