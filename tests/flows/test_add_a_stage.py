"""Adding a stage: one module (tests/flows/toy_stage.py) and one registry line. The flow runs it in
its place, the next stage reads its output, the catalog's ledger and the progress count include it."""

from __future__ import annotations

import pytest

from sftflow.tasks.core import stages
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.stages import StageSpec


@pytest.fixture
def ninth_stage(monkeypatch):
    """The registry with `tag` after filter: the one line a new stage adds."""
    at = stages.stage_names().index("filter") + 1
    registry = (*stages.STAGES[:at], StageSpec("tag", "tests.flows.toy_stage", judges_rows=True), *stages.STAGES[at:])
    monkeypatch.setattr(stages, "STAGES", registry)


def test_a_registered_stage_runs_in_its_place(ninth_stage, project, run_pipeline, assert_ledger_balances):
    summary = run_pipeline(project)
    order = [s["stage"] for s in summary["stages"]]
    assert order[order.index("filter") + 1] == "tag" and order[order.index("tag") + 1] == "score"
    by_stage = {s["stage"]: s for s in summary["stages"]}
    assert by_stage["tag"]["n_in"] == by_stage["filter"]["n_out"]
    assert 0 < by_stage["tag"]["n_out"] < by_stage["tag"]["n_in"]  # it dropped some rows
    assert by_stage["score"]["n_in"] == by_stage["tag"]["n_out"]  # and score read what it kept

    assert_ledger_balances(project, summary["run_id"])
    with connect_readonly(project / "data" / "warehouse" / "catalog.duckdb") as con:
        ledger = con.execute("SELECT stage, n_dropped FROM ledger_by_run JOIN stage_order USING (stage) "
                             "WHERE run_id = ? ORDER BY ordinal", [summary["run_id"]]).fetchall()
        reasons = con.execute("SELECT DISTINCT reason FROM decisions WHERE stage = 'tag'").fetchall()
    assert [stage for stage, _ in ledger][3:5] == ["filter", "tag"]
    assert {r for (r,) in reasons} == {"kept", "too_short_response"}
