"""Readers while a pipeline writes, and a second (and third) pipeline on the same warehouse.

Run A computes the data stages in a subprocess. While it runs: audit readers query the catalog
without pause from threads of this process and through `sftflow sql`; run B starts on the same
warehouse and is refused at once with the holder named; run C starts with --wait-seconds and
queues behind A. Nothing a reader does may fail or stall the writer, B leaves no trace, C is
all cache hits, and the ledgers of A and C balance.
"""

from __future__ import annotations

import threading
import time

import pytest

from sftflow.flows.cli import BUSY_EXIT_CODE
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.locks import LOCK_FILE

pytestmark = pytest.mark.slow

RECIPE = "deployments/recipes/demo.yaml"
AUDIT_QUERIES = [
    "SELECT stage, n_in, n_kept, n_dropped FROM ledger_by_run",
    "SELECT reason, count(*) FROM decisions WHERE NOT kept GROUP BY reason",
    "SELECT count(*) FROM examples e JOIN decisions d USING (example_id)",
    "SELECT run_id, status FROM runs",
    "SELECT * FROM drops LIMIT 20",
]


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_readers_and_rival_runs_while_a_pipeline_writes(project, sftflow_cli, assert_ledger_balances):
    warehouse = project / "data" / "warehouse"
    catalog = warehouse / "catalog.duckdb"
    run_a = sftflow_cli(project, "run", RECIPE, "--only", "data", wait=False)
    lock = warehouse / LOCK_FILE
    _wait_for(lambda: lock.is_file() and lock.stat().st_size > 0 and catalog.is_file(), 120, "run A to start")

    errors: list[BaseException] = []
    n_queries = [0]
    stop = threading.Event()

    def read_forever() -> None:
        while not stop.is_set():
            try:
                with connect_readonly(catalog, retry_seconds=0) as con:  # no waiting allowed
                    for query in AUDIT_QUERIES:
                        con.execute(query).fetchall()
                        n_queries[0] += 1
            except BaseException as exc:  # noqa: BLE001 — every failure is the finding
                errors.append(exc)
            time.sleep(0.01)  # leave the 2-core CI machine's CPU to the pipeline

    readers = [threading.Thread(target=read_forever, daemon=True) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        run_b = sftflow_cli(project, "run", RECIPE, "--only", "data", timeout=120)
        run_c = sftflow_cli(project, "run", RECIPE, "--only", "data", "--wait-seconds", "600", wait=False)
        cli_reads = [sftflow_cli(project, "sql", "SELECT count(*) AS n FROM decisions", "--format", "csv",
                                 timeout=120) for _ in range(3)]
        out_a, _ = run_a.communicate(timeout=600)
        out_c, _ = run_c.communicate(timeout=600)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
        for process in (run_a, run_c):
            if process.poll() is None:
                process.kill()

    assert run_a.returncode == 0, out_a[-3000:]
    assert run_b.returncode == BUSY_EXIT_CODE, run_b.stdout[-3000:] + run_b.stderr[-3000:]
    refusal = " ".join(run_b.stdout.split())  # rich wraps long lines
    assert "is in use by another sftflow run" in refusal and f"pid {run_a.pid}" in refusal
    assert run_c.returncode == 0, out_c[-3000:]
    assert errors == []
    assert n_queries[0] > 50
    for read in cli_reads:
        assert read.returncode == 0, read.stdout + read.stderr
        assert read.stdout.splitlines()[0] == "n"

    with connect_readonly(catalog) as con:
        runs = con.execute("SELECT run_id, status FROM runs ORDER BY started_at").fetchall()
        assert [status for _, status in runs] == ["completed", "completed"]  # B never started a run
        hits = con.execute("SELECT bool_and(cache_hit), count(*) FROM stage_runs WHERE run_id = ?",
                           [runs[1][0]]).fetchone()
    assert hits == (True, 10)  # C waited for A, then found everything A computed
    for run_id, _ in runs:
        assert_ledger_balances(project, run_id)
