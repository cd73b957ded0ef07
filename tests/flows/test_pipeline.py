"""The data half end to end: ledger invariant, lineage, published artifacts, damaged caches.

What re-runs when one thing changes is the mutation matrix (test_mutation_matrix.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.stages import data_stages

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def catalog(root: Path) -> duckdb.DuckDBPyConnection:
    return connect_readonly(root / "data" / "warehouse" / "catalog.duckdb")


def computed(summary: dict) -> set[tuple[str, str]]:
    return {(s["stage"], s["label"]) for s in summary["stages"] if not s["cache_hit"]}


def test_demo_cold_then_warm_run(project, run_pipeline, assert_ledger_balances):
    cold = run_pipeline(project)
    assert {s["stage"] for s in cold["stages"]} == set(data_stages())
    assert all(not s["cache_hit"] for s in cold["stages"])
    assert_ledger_balances(project, cold["run_id"])

    # each stage published its counts as a Prefect artifact of the flow run, plus the mixture
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        published = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[cold["flow_run_id"]])))
    keys = {a.key for a in published}
    assert {"sftflow-ingest-alpaca-sample", "sftflow-normalize-openai-sample", "sftflow-dedup",
            "sftflow-filter", "sftflow-score", "sftflow-mix", "sftflow-data-card", "sftflow-run"} <= keys, keys
    # every data stage's table shows its drops by reason, the numbers the catalog holds
    import json

    tables = [json.loads(a.data) for a in published if a.type == "table"]
    assert {t[0]["stage"] for t in tables} == set(data_stages())
    with catalog(project) as con:
        for table in tables:
            shown = {line["reason"]: line["dropped"] for line in table[1:] if line["reason"]}
            held = dict(con.execute("SELECT reason, count(*) FROM decisions WHERE artifact_id = ? AND NOT kept "
                                    "GROUP BY 1", [table[0]["artifact"]]).fetchall())
            assert shown == held and table[0]["dropped"] == sum(held.values()), table
    assert sum(bool(t[0]["dropped"]) for t in tables) >= 5  # the samples plant drops for nearly every stage
    run_page = next(a.data for a in published if a.key == "sftflow-run")
    assert "## Drops by reason" in run_page and "| dedup | exact_duplicate |" in run_page
    data_card = Path(cold["cards"]["data_card"])
    assert data_card == project / "data" / "warehouse" / "runs" / cold["run_id"] / "DATA_CARD.md"
    text = data_card.read_text()
    assert "alpaca_sample" in text and "exact_duplicate" in text and "## Ledger" in text

    warm = run_pipeline(project)
    assert all(s["cache_hit"] for s in warm["stages"]), warm["stages"]
    assert_ledger_balances(project, warm["run_id"])

    with catalog(project) as con:
        hits = con.execute("SELECT bool_and(cache_hit) FROM stage_runs WHERE run_id = ?",
                           [warm["run_id"]]).fetchone()[0]
        assert hits is True
        n_examples = con.execute("SELECT count(*) FROM examples").fetchone()[0]
        n_read = con.execute("SELECT sum(n_in) FROM stage_runs WHERE stage = 'ingest' AND run_id = ?",
                             [cold["run_id"]]).fetchone()[0]
        assert n_examples == n_read
        # lineage: every non-ingest artifact has inputs that are registered artifacts
        orphans = con.execute(
            """SELECT count(*) FROM artifact_inputs WHERE input_artifact_id NOT IN
               (SELECT artifact_id FROM artifacts)""").fetchone()[0]
        assert orphans == 0
        # planted cases in the samples really were judged
        reasons = dict(con.execute("SELECT reason, count(*) FROM decisions GROUP BY 1").fetchall())
        for reason in ("exact_duplicate", "near_duplicate", "too_short_response", "toxic",
                       "contaminated", "below_top_fraction", "invalid_json", "unknown_role"):
            assert reasons.get(reason, 0) > 0, reason
        # every reason recorded is in the closed vocabulary
        from sftflow.tasks.core.reasons import Reason
        assert set(reasons) <= {r.value for r in Reason}


def test_prefect_result_store_wiped_still_skips(completed_project, run_pipeline):
    project, _ = completed_project
    shutil.rmtree(project / "data" / "warehouse" / "prefect-results")
    again = run_pipeline(project)
    assert all(s["cache_hit"] for s in again["stages"])


def test_moved_warehouse_still_serves_and_recomputes(completed_project, run_pipeline, tmp_path):
    project, _ = completed_project
    moved = tmp_path / "moved-project"
    shutil.move(str(project), str(moved))
    after = run_pipeline(moved, ["mix.seed=7"])
    assert {stage for stage, _ in computed(after)} == {"mix"}
    with catalog(moved) as con:
        paths = [r[0] for r in con.execute("SELECT path FROM latest_shards").fetchall()]
    assert paths and all(p.startswith(str(moved)) and Path(p).is_file() for p in paths)


def test_source_whose_rows_all_fail_validation_stops_the_run(project, run_pipeline):
    (project / "data" / "samples" / "bad.jsonl").write_text(
        '{"messages": [{"role": "assistant", "content": "I speak first, which is not allowed."}]}\n'
        '{"messages": [{"role": "user", "content": "Only a question, and nobody answers it."}]}\n')
    recipe = project / "deployments" / "recipes" / "bad.yaml"
    recipe.write_text("name: bad\nsources:\n  - {name: bad, path: data/samples/bad.jsonl, format: openai}\n")
    with pytest.raises(Exception, match=r"normalize \[bad\]: 0 of 2 rows kept"):
        run_pipeline(project, recipe="deployments/recipes/bad.yaml")
    with catalog(project) as con:
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "failed"
        reasons = {r[0] for r in con.execute("SELECT reason FROM decisions WHERE stage = 'normalize'").fetchall()}
        assert reasons == {"starts_with_assistant", "no_assistant_turn"}


def test_deleted_artifact_is_recomputed(completed_project, run_pipeline):
    project, base = completed_project
    key = next(s["key"] for s in base["stages"] if s["stage"] == "score")
    folder = next((project / "data" / "warehouse" / "artifacts" / "score").glob(f"{key}*"))
    (folder / "manifest.json").unlink()
    after = run_pipeline(project)
    assert {stage for stage, _ in computed(after)} == {"score"}


def test_source_with_zero_valid_rows_fails_loudly(project, run_pipeline):
    (project / "data" / "samples" / "broken.jsonl").write_text('{"nope": 1}\nnot json\n')
    recipe = project / "deployments" / "recipes" / "broken.yaml"
    recipe.write_text("name: broken\nsources:\n  - {name: broken, path: data/samples/broken.jsonl, format: openai}\n")
    with pytest.raises(Exception, match="broken"):
        run_pipeline(project, recipe="deployments/recipes/broken.yaml")
    with catalog(project) as con:
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "failed"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_real_world_files(project, run_pipeline, monkeypatch, assert_ledger_balances):
    monkeypatch.setenv("SFTFLOW_DATA_DIRS", str(SHARED_DATA))
    recipe = project / "deployments" / "recipes" / "shared.yaml"
    recipe.write_text(
        "name: shared\nsources:\n"
        f"  - {{name: alpaca_en_demo, path: {SHARED_DATA / 'alpaca_en_demo.json'}, format: alpaca}}\n"
        f"  - {{name: glaive_toolcall, path: {SHARED_DATA / 'glaive_toolcall_en_demo.json'}, format: sharegpt}}\n"
    )
    summary = run_pipeline(project, recipe="deployments/recipes/shared.yaml")
    ingest = {s["label"]: s for s in summary["stages"] if s["stage"] == "ingest"}
    assert ingest["alpaca_en_demo"]["n_in"] == 999
    assert ingest["glaive_toolcall"]["n_in"] == 300
    assert_ledger_balances(project, summary["run_id"])


def test_recipe_path_parameter_outside_the_roots_is_refused(project, run_pipeline, tmp_path):
    from sftflow.tasks.core.workspace import PathNotAllowed

    outside = tmp_path / "elsewhere.yaml"  # beside the project root, not under it
    outside.write_text((project / "deployments" / "recipes" / "demo.yaml").read_text())
    for payload in (str(outside), "../elsewhere.yaml", "/etc/passwd"):
        with pytest.raises(PathNotAllowed):
            run_pipeline(project, recipe=payload)
    assert not (project / "data" / "warehouse" / "catalog.duckdb").exists()  # refused before any run began
