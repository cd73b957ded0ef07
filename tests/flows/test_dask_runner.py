"""`runner.kind: dask`: the data stages' per-part work on a Dask LocalCluster of 2 worker
processes, through prefect-dask's task runner, gives the sequential run's artifacts byte for byte."""

from __future__ import annotations

from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.stages import STAGES, data_stages


def test_dask_localcluster_run_equals_the_sequential_run(completed_run, runner_stages_removed, run_pipeline, small_train,
                                                        assert_ledger_balances):
    base_root, base = completed_run  # runner.kind: sequential (the default)
    project, _ = runner_stages_removed
    summary = run_pipeline(project, [*small_train, "runner.kind=dask", "runner.workers=2"], only="data")

    # The runner is not in any key: every data stage has the sequential run's key and files.
    base_keys = {(s["stage"], s["label"]): s["key"] for s in base["stages"] if s["stage"] in data_stages()}
    keys = {(s["stage"], s["label"]): s["key"] for s in summary["stages"]}
    assert keys == base_keys
    # normalize and filter computed here, on the cluster; the stages between and after them are
    # served: their inputs came out with the sequential run's data
    runner_stages = {s.name for s in STAGES if s.uses_runner}
    assert {(s["stage"], s["label"]) for s in summary["stages"] if not s["cache_hit"]} == {
        key for key in keys if key[0] in runner_stages}
    with connect_readonly(project / "data" / "warehouse" / "catalog.duckdb") as con:
        full_keys = con.execute("SELECT stage, key FROM stage_runs WHERE run_id = ?", [summary["run_id"]]).fetchall()
    ours = ArtifactStore(project / "data" / "warehouse" / "artifacts")
    theirs = ArtifactStore(base_root / "data" / "warehouse" / "artifacts")
    assert len(full_keys) == len(base_keys)
    for stage, key in full_keys:
        mine, reference = ours.load(stage, key), theirs.load(stage, key)
        assert mine is not None and reference is not None, stage
        assert [(f.name, f.sha256) for f in mine.files] == [(f.name, f.sha256) for f in reference.files], stage
    assert_ledger_balances(project, summary["run_id"])
