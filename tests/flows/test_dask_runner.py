"""`runner.kind: dask`: the data stages' per-part work on a Dask LocalCluster of 2 worker
processes, through prefect-dask's task runner, gives the sequential run's artifacts byte for byte."""

from __future__ import annotations


def test_dask_localcluster_run_equals_the_sequential_run(completed_run, runner_stages_removed, run_pipeline, small_train,
                                                        assert_ledger_balances, assert_runner_run_matches):
    base_root, base = completed_run  # runner.kind: sequential (the default)
    project, _ = runner_stages_removed
    summary = run_pipeline(project, [*small_train, "runner.kind=dask", "runner.workers=2"], only="data")

    assert_runner_run_matches(project, summary, base_root, base)
    assert_ledger_balances(project, summary["run_id"])
