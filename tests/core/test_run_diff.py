"""tasks/core/run_diff.py on a small hand-built catalog: every kind of change once (a row newly
dropped, newly kept, dropped for another reason, added, removed, edited), mixtures, shards and
two evaluated runs, so each number below is known exactly. The real runs: tests/flows/test_diff.py.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sftflow.flows.publish as publish
from sftflow.flows.cli import app
from sftflow.tasks.core.audit import NotFound
from sftflow.tasks.core.catalog import Catalog, connect_readonly
from sftflow.tasks.core.run_diff import diff_tables, previous_run, resolve_run, run_diff, same_artifacts

A, B, OTHER, FAILED = "aaaaaa01", "aaaaaa02", "bbbbbb03", "aaaaaa00"
# (run, stage, artifact key) as the runs used them; OTHER reuses A's artifacts (cache hits)
STAGE_RUNS = [(A, "ingest", "i1"), (A, "filter", "f1"), (A, "score", "s1"), (A, "mix", "m1"),
              (A, "train", "t1"), (A, "evaluate", "v1"),
              (B, "ingest", "i2"), (B, "filter", "f2"), (B, "score", "s2"), (B, "mix", "m2"),
              (B, "train", "t2"), (B, "evaluate", "v2"),
              (OTHER, "ingest", "i1"), (OTHER, "filter", "f1"), (OTHER, "score", "s1"), (OTHER, "mix", "m1")]
# Decisions per artifact: example -> reason (kept rows say kept / selected).
DECISIONS = {
    "i1": {"e1": "kept", "e2": "kept", "e3": "kept", "e4": "kept", "e5": "invalid_json", "e7": "kept"},
    "f1": {"e1": "kept", "e2": "toxic", "e3": "kept", "e4": "kept", "e7": "contaminated"},
    "s1": {"e1": "kept", "e3": "below_top_fraction", "e4": "kept"},
    "m1": {"e1": "selected", "e4": "selected"},
    "i2": {"e1": "kept", "e2": "kept", "e3": "kept", "e4": "kept", "e6": "kept", "e7": "kept"},
    "f2": {"e1": "kept", "e2": "kept", "e3": "toxic", "e4": "too_short_response", "e6": "toxic", "e7": "toxic"},
    "s2": {"e1": "kept", "e2": "kept"},
    "m2": {"e1": "selected", "e2": "held_out_eval"},
}
KEPT = {"kept", "selected", "held_out_eval"}
# Shards per mix artifact: name inside the artifact -> (split, category, {example: copies}). A's and
# B's qa train shard hold the same rows under another mix key; code-00000 swaps one row; code-00001
# is only in B; the eval shard copies a row once more.
SHARDS = {
    "m1": {"shards/train/qa-00000.parquet": ("train", "qa", {"e1": 1, "e4": 2}),
           "shards/train/code-00000.parquet": ("train", "code", {"e1": 1, "e3": 1}),
           "shards/eval/qa-00000.parquet": ("eval", "qa", {"e4": 1})},
    "m2": {"shards/train/qa-00000.parquet": ("train", "qa", {"e4": 2, "e1": 1}),
           "shards/train/code-00000.parquet": ("train", "code", {"e1": 1, "e6": 1}),
           "shards/train/code-00001.parquet": ("train", "code", {"e2": 1}),
           "shards/eval/qa-00000.parquet": ("eval", "qa", {"e4": 2})},
}


def _insert(con, table: str, row: dict) -> None:
    con.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    catalog = Catalog(tmp_path / "warehouse" / "catalog.duckdb")
    with catalog.connect() as con:
        for run_id, recipe, status, day in ((FAILED, "demo", "failed", 1), (A, "demo", "completed", 2),
                                            (B, "demo", "completed", 3), (OTHER, "other", "completed", 4)):
            _insert(con, "runs", {"run_id": run_id, "recipe_name": recipe, "status": status,
                                  "started_at": f"2026-01-0{day} 10:00:00", "overrides": "[]"})
        for run_id, stage, key in STAGE_RUNS:
            _insert(con, "stage_runs", {"run_id": run_id, "stage": stage, "key": key, "label": "", "cache_hit": False})
        stage_of = {key: stage for _run, stage, key in STAGE_RUNS}
        for key, reasons in DECISIONS.items():
            for example_id, reason in reasons.items():
                _insert(con, "decisions", {"stage": stage_of[key], "example_id": example_id, "kept": reason in KEPT,
                                           "reason": reason, "artifact_id": key})
        for key in ("i1", "i2"):
            for row, example_id in enumerate(DECISIONS[key], start=1):
                raw = f'{{"text": "row {example_id}"}}' + (' edited' if key == "i2" and example_id == "e1" else "")
                _insert(con, "example_versions", {"example_id": example_id, "artifact_id": key, "source": "s",
                                                  "source_uri": "data/s.jsonl", "source_row": row, "raw": raw})
        for key, category, target, realized, n_rows in (("m1", "qa", 0.5, 0.5, 2), ("m2", "qa", 0.5, 0.4, 2),
                                                        ("m2", "code", 0.5, 0.6, 3)):
            _insert(con, "mixture", {"artifact_id": key, "category": category, "target_share": target,
                                     "realized_share": realized, "n_rows": n_rows})
        for key, shards in SHARDS.items():
            for name, (split, category, copies) in shards.items():
                _insert(con, "shards", {"shard_id": f"{key}/{name}", "artifact_id": key, "split": split,
                                        "category": category, "n_rows": sum(copies.values())})
                for example_id, n_copies in copies.items():
                    _insert(con, "shard_examples", {"shard_id": f"{key}/{name}", "example_id": example_id,
                                                    "n_copies": n_copies})
        for model, evaluation, perplexity in (("t1", "v1", 10.0), ("t2", "v2", 8.0)):
            _insert(con, "models", {"model_id": model, "artifact_id": model})
            for metric, value in (("perplexity", perplexity), ("gated", 0.0)):
                _insert(con, "evals", {"model_id": model, "metric": metric, "value": value, "artifact_id": evaluation})
        _insert(con, "evals", {"model_id": "t2", "metric": "exact_match", "value": 0.5, "artifact_id": "v2"})
    return catalog.path.parent


@pytest.fixture
def con(warehouse: Path):
    with connect_readonly(warehouse / "catalog.duckdb") as connection:
        yield connection


def test_every_kind_of_change_is_counted_at_its_stage(con):
    diff = run_diff(con, A, B, rows_limit=50)
    assert diff["rows"] == {"n_read_a": 6, "n_read_b": 6, "n_added": 1, "n_removed": 1, "n_fate_changed": 4,
                            "n_text_changed": 1, "n_changed_rows": 7}
    by_stage = {s["stage"]: s for s in diff["stages"]}
    assert list(by_stage) == ["ingest", "normalize", "dedup", "filter", "score", "mix"]
    assert by_stage["ingest"]["changes"] == [
        {"change": "removed", "in_a": "ingest: invalid_json", "in_b": "absent", "n": 1}]
    assert by_stage["filter"]["changes"] == [
        {"change": "newly_dropped", "in_a": "kept", "in_b": "filter: too_short_response", "n": 1},
        {"change": "newly_dropped", "in_a": "score: below_top_fraction", "in_b": "filter: toxic", "n": 1},
        {"change": "reason_changed", "in_a": "filter: contaminated", "in_b": "filter: toxic", "n": 1},
        {"change": "added", "in_a": "absent", "in_b": "filter: toxic", "n": 1},
        {"change": "newly_kept", "in_a": "filter: toxic", "in_b": "kept", "n": 1}]
    assert by_stage["score"]["changes"] == [
        {"change": "newly_kept", "in_a": "score: below_top_fraction", "in_b": "filter: toxic", "n": 1}]
    assert [(s["n_dropped_a"], s["n_dropped_b"], s["n_newly_dropped"], s["n_newly_kept"])
            for s in diff["stages"]] == [(1, 0, 0, 1), (0, 0, 0, 0), (0, 0, 0, 0), (2, 4, 4, 1), (1, 0, 0, 1),
                                         (0, 0, 0, 0)]
    rows = {r["example_id"]: r for r in diff["changed_rows"]}
    assert list(rows) == ["e1", "e5", "e2", "e3", "e4", "e6", "e7"]  # the edited row first, then by stage
    assert rows["e1"] == {"example_id": "e1", "in_a": "kept", "in_b": "kept", "text_changed": True, "source": "s",
                          "source_uri": "data/s.jsonl", "source_row": 1, "source_line_a": '{"text": "row e1"}',
                          "source_line_b": '{"text": "row e1"} edited'}
    assert (rows["e5"]["source_row"], rows["e5"]["source_line_b"]) == (5, None)  # removed: A's read
    assert (rows["e6"]["source_line_a"], rows["e6"]["in_a"]) == (None, "absent")
    # the temporary tables are gone: the connection can diff again
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0
    assert run_diff(con, A, B, rows_limit=2)["changed_rows"] == diff["changed_rows"][:2]
    assert "changed_rows" not in run_diff(con, A, B)


def test_mixture_shards_and_evaluations_side_by_side(con):
    diff = run_diff(con, A, B)
    assert diff["mixture"] == [
        {"category": "code", "target_share_a": None, "target_share_b": 0.5, "realized_share_a": None,
         "realized_share_b": 0.6, "n_rows_a": None, "n_rows_b": 3},
        {"category": "qa", "target_share_a": 0.5, "target_share_b": 0.5, "realized_share_a": 0.5,
         "realized_share_b": 0.4, "n_rows_a": 2, "n_rows_b": 2}]
    # shards match by name inside the mix: the qa train shard holds the same rows under another key
    assert diff["shards"] == {"n_unchanged": 1, "changed": [
        {"shard": "shards/train/code-00000.parquet", "split": "train", "category": "code", "rows_a": 2, "rows_b": 2,
         "n_only_a": 1, "n_only_b": 1},
        {"shard": "shards/train/code-00001.parquet", "split": "train", "category": "code", "rows_a": None,
         "rows_b": 1, "n_only_a": 0, "n_only_b": 1},
        {"shard": "shards/eval/qa-00000.parquet", "split": "eval", "category": "qa", "rows_a": 1, "rows_b": 2,
         "n_only_a": 0, "n_only_b": 1}]}  # one more copy of e4: one row only B holds
    assert run_diff(con, B, A)["shards"]["changed"][1] == {
        "shard": "shards/train/code-00001.parquet", "split": "train", "category": "code", "rows_a": 1,
        "rows_b": None, "n_only_a": 1, "n_only_b": 0}
    assert diff_tables(diff)["shards"][1][:2] == [("shards/train/code-00000.parquet", "train", "code", 2, 2, 1, 1),
                                                  ("shards/train/code-00001.parquet", "train", "code", None, 1, 0, 1)]
    assert diff["evals"] == {"model_a": "t1", "model_b": "t2", "measured_a": True, "measured_b": True,
                             "metrics": [{"metric": "exact_match", "value_a": None, "value_b": 0.5},
                                         {"metric": "gated", "value_a": 0.0, "value_b": 0.0},
                                         {"metric": "perplexity", "value_a": 10.0, "value_b": 8.0}],
                             "note": None}
    # a run that reused every artifact of A: nothing changed, the same shards, no evaluation
    same = run_diff(con, A, OTHER)
    assert all(not s["changes"] for s in same["stages"]) and same["rows"]["n_changed_rows"] == 0
    assert same["shards"] == {"changed": [], "n_unchanged": 3}
    assert same["evals"]["note"] == f"not measured in run {OTHER}"
    assert diff_tables(same, compact=True)["evals"][1] == [("gated", "0", None), ("perplexity", "10", None)]


def test_runs_are_named_by_unique_prefixes(con):
    assert resolve_run(con, "aaaaaa02") == B and resolve_run(con, "bbbbbb") == OTHER
    with pytest.raises(NotFound, match="ambiguous"):
        run_diff(con, "aaaaaa", B)
    with pytest.raises(NotFound, match="no run 'cccccc' in the catalog"):
        run_diff(con, A, "cccccc")
    with pytest.raises(NotFound, match="too short"):
        run_diff(con, "aaa", B)
    assert run_diff(con, "aaaaaa01", "bbbbbb")["run_b"]["run_id"] == OTHER


def test_the_previous_run_is_the_newest_earlier_completed_run_of_the_recipe(con):
    assert previous_run(con, B) == A  # the failed run before A does not count
    assert previous_run(con, A) is None
    assert previous_run(con, OTHER) is None  # another recipe


def test_cli_csv_and_json(warehouse):
    cli = CliRunner()
    out = cli.invoke(app, ["diff", "aaaaaa01", "aaaaaa02", "--format", "csv", "--warehouse", str(warehouse)])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[:3] == ["stage,change,in A,in B,rows", "ingest,removed,ingest: invalid_json,absent,1",
                                           "filter,newly_dropped,kept,filter: too_short_response,1"]
    out = cli.invoke(app, ["diff", "aaaaaa01", "aaaaaa02", "--format", "csv", "--rows", "--limit", "2",
                           "--warehouse", str(warehouse)])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["example_id"], r["text changed"], r["source line B"]) for r in rows] == [
        ("e1", "True", '{"text": "row e1"} edited'), ("e5", "False", "")]
    out = cli.invoke(app, ["diff", "aaaaaa01", "aaaaaa02", "--format", "json", "--warehouse", str(warehouse)])
    assert json.loads(out.stdout)["evals"]["metrics"][2] == {"metric": "perplexity", "value_a": 10.0, "value_b": 8.0}
    out = cli.invoke(app, ["diff", "aaaaaa01", "aaaaaa02", "--warehouse", str(warehouse)], env={"COLUMNS": "120"})
    assert out.exit_code == 0, out.output
    assert "shards changed (1 unchanged)" in out.stdout and "shards/train/code-00001.parquet" in out.stdout
    out = cli.invoke(app, ["diff", "aaaaaa", "aaaaaa02", "--warehouse", str(warehouse)])
    assert out.exit_code == 1 and "ambiguous" in out.stdout
    out = cli.invoke(app, ["diff", "aaaaaa01", "aaaaaa02", "--format", "yaml", "--warehouse", str(warehouse)])
    assert out.exit_code == 2


def test_the_run_diff_artifact(warehouse, con, monkeypatch, caplog):
    sent = []
    monkeypatch.setattr(publish, "create_markdown_artifact", lambda key, markdown, description: sent.append((key, markdown)))
    publish.publish_run_diff(warehouse / "catalog.duckdb", B)
    publish.publish_run_diff(warehouse / "catalog.duckdb", A)
    assert [key for key, _ in sent] == ["sftflow-run-diff", "sftflow-run-diff"]
    page = sent[0][1]
    assert page == publish.run_diff_markdown(run_diff(con, A, B, rows_limit=publish.RUN_DIFF_ROWS), B, "demo")
    assert f"Against `{A}` (A)" in page and "| filter | reason_changed | filter: contaminated | filter: toxic | 1 |" in page
    assert "| perplexity | 10 | 8 |" in page and "- `e1` s row 1: kept → kept (text edited)" in page
    assert "## Shards\n\n3 changed, 1 unchanged.\n\n- `shards/train/code-00000.parquet` (train, code): 2 → 2 rows, " \
           "1 only in A, 1 only in B\n- `shards/train/code-00001.parquet` (train, code): only in B, 1 row\n" in page
    assert sent[1][1].endswith("No earlier completed run of recipe `demo` to compare with.")
    monkeypatch.setattr(publish, "RUN_DIFF_SHARDS", 1)  # a long list ends with how many it left out
    publish.publish_run_diff(warehouse / "catalog.duckdb", B)
    assert "(train, code): 2 → 2 rows, 1 only in A, 1 only in B\n- and 2 more\n" in sent[2][1]
    # a diff that cannot be made is a warning: the run it reports on has finished
    with caplog.at_level(logging.WARNING):
        publish.publish_run_diff(warehouse / "missing.duckdb", B)
    assert len(sent) == 3 and "diff against the previous run was not published" in caplog.text


def test_an_unchanged_rerun_is_reported_without_a_row_diff(warehouse, con, monkeypatch):
    assert same_artifacts(con, A, A)
    assert not same_artifacts(con, A, OTHER) and not same_artifacts(con, OTHER, A)  # A also trained
    assert not same_artifacts(con, A, B)
    sent = []
    monkeypatch.setattr(publish, "create_markdown_artifact", lambda key, markdown, description: sent.append(markdown))
    monkeypatch.setattr(publish, "previous_run", lambda _con, run_id: run_id)  # a re-run of itself
    monkeypatch.setattr(publish, "run_diff", lambda *args, **kwargs: pytest.fail("no row diff is needed"))
    publish.publish_run_diff(warehouse / "catalog.duckdb", A)
    assert sent == [f"# Changes in run `{A}` — recipe `demo`\n\nNothing changed: every stage used the artifacts "
                    f"run `{A}` used."]
