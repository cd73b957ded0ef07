"""The model gate: a tuned model worse than its base ends the run failed, kept and marked gated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftflow.flows.gate import GATED_EXIT_CODE, ModelGated
from sftflow.tasks.core.catalog import connect_readonly


def test_gated_model_fails_the_run_and_is_kept_and_marked(completed_project, run_pipeline, small_train, sftflow_cli):
    root, _ = completed_project
    # A learning rate of 1.0 with Adam moves every weight by about 1.0 a step: ten steps wreck the
    # tiny model, so its perplexity on the general texts rises far above the untrained base's.
    overrides = [*small_train, "train.learning_rate=1.0"]

    with pytest.raises(ModelGated) as raised:
        run_pipeline(root, overrides, only="all")
    message = str(raised.value)
    assert "general perplexity" in message and "eval.on_regression" in message, message
    summary = raised.value.summary
    assert summary["gate"]["status"] == "gated"
    stages = {s["stage"]: s for s in summary["stages"]}
    assert not stages["evaluate"]["cache_hit"]

    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        status = con.execute("SELECT status FROM runs WHERE run_id = ?", [summary["run_id"]]).fetchone()[0]
        model_id, path, gate = con.execute(  # the model this run trained (the fixture's passed one is there too)
            "SELECT model_id, path, gate FROM models WHERE starts_with(artifact_id, ?)", [stages["train"]["key"]]).fetchone()
        gated = con.execute("SELECT value, detail FROM evals WHERE metric = 'gated' AND run_id = ?",
                            [summary["run_id"]]).fetchall()
    assert status == "gated" and gate == "gated"
    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        # whoever takes the latest model gets the last completed run's, never the gated one
        latest = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM latest_artifacts").fetchall()}
    assert latest and summary["run_id"] not in latest
    assert Path(path, "model.safetensors").is_file()  # the model is kept for inspection
    assert gated and gated[0][0] == 1.0 and json.loads(gated[0][1])["status"] == "gated"

    # The command line: the same verdict (re-used from the cache) exits non-zero with the figures.
    result = sftflow_cli(root, "run", "deployments/recipes/demo.yaml", *[f"--set={o}" for o in overrides])
    assert result.returncode == GATED_EXIT_CODE, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gated:" in result.stdout and "general perplexity" in result.stdout

    # on_regression=report keeps the old behaviour without re-evaluating: it is not in the key.
    reported = run_pipeline(root, [*overrides, "eval.on_regression=report"], only="all")
    assert reported["gate"]["status"] == "gated"
    assert all(s["cache_hit"] for s in reported["stages"]), reported["stages"]
    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        assert con.execute("SELECT status FROM runs WHERE run_id = ?", [reported["run_id"]]).fetchone()[0] == "completed"
        assert con.execute("SELECT gate FROM models WHERE model_id = ?", [model_id]).fetchone()[0] == "gated"

    # models.gate follows the evaluation each run used: a looser tolerance passes the same model,
    # and going back re-uses the gated evaluation from the cache, which must mark the model again.
    loose = run_pipeline(root, [*overrides, "eval.regression_tolerance=1000000"], only="all")
    assert loose["gate"]["status"] == "passed"
    with pytest.raises(ModelGated):
        run_pipeline(root, overrides, only="all")
    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        assert con.execute("SELECT gate FROM models WHERE model_id = ?", [model_id]).fetchone()[0] == "gated"


def test_completed_demo_run_measures_the_gate(completed_run):
    """The demo recipe measures both comparisons; its gate passes and the catalog says so."""
    root, summary = completed_run
    gate = summary["gate"]
    assert gate["status"] == "passed", gate
    assert {c["name"]: c["measured"] for c in gate["checks"]} == {"general_ppl": True, "heldout_ppl": True}
    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        assert con.execute("SELECT gate FROM models").fetchone()[0] == "passed"
        assert con.execute("SELECT status FROM runs WHERE run_id = ?", [summary["run_id"]]).fetchone()[0] == "completed"
