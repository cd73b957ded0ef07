"""`runner: {kind: dask, address: ...}` on a real Dask cluster: a `dask scheduler` and two `dask worker`
processes on loopback, started from the `dask` command line as a cluster outside the flow is.

One worker dies in the middle of a stage: the first part task to write its scratch files leaves a
half-written decisions.parquet and SIGKILLs its whole `dask worker` process group (nanny and worker),
as when a machine is lost. The scheduler re-runs that part on the other worker, which rewrites the
part's folder; the data stages' artifacts are still the sequential run's, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


DASK = Path(sys.executable).parent / "dask"
START_TIMEOUT_S = 60  # scheduler up and both workers registered (2 cores shared with other tests)
RUN_TIMEOUT_S = 300  # past it the cluster is killed, so a hung run fails instead of hanging the suite
KILL_MARKER_ENV = "SFTFLOW_TEST_KILL_MARKER"

# Loaded by every worker process (`dask worker --preload`). Cluster-wide, only the first part task
# to reach its decisions file dies there: the marker file is created with O_EXCL, so the part's
# second try, on the other worker, writes normally.
KILL_MID_PART = f'''
import io, os, signal
import pyarrow.parquet as pq

# dask imports a preload file once more when the worker starts: patch the original only once
_write_table = getattr(pq, "_unpatched_write_table", pq.write_table)
pq._unpatched_write_table = _write_table


def write_table(table, where, *args, **kwargs):
    path = str(where)
    if ".tmp-parts-" in path and path.endswith("decisions.parquet"):
        try:
            marker = os.open(os.environ["{KILL_MARKER_ENV}"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(marker, path.encode())
            os.close(marker)
            buffer = io.BytesIO()
            _write_table(table, buffer, *args, **kwargs)
            whole = buffer.getvalue()
            with open(path, "wb") as half:  # half a Parquet file: no footer, unreadable
                half.write(whole[: len(whole) // 2])
                half.flush()
                os.fsync(half.fileno())
            os.killpg(os.getpgid(0), signal.SIGKILL)
    return _write_table(table, where, *args, **kwargs)


pq.write_table = write_table
'''


def _stop(process: subprocess.Popen) -> None:
    """SIGKILL the process group `process` leads (a worker's nanny and its worker process)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class Cluster:
    """A `dask scheduler` and two single-threaded `dask worker` processes, each in its own session."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.env = folder, env
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, *args: str, log: str) -> subprocess.Popen:
        with open(self.folder / log, "wb") as out:
            process = subprocess.Popen([str(DASK), *args], cwd=self.folder, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start(self, preload: Path) -> None:
        scheduler_file = self.folder / "scheduler.json"
        # port 0 and a scheduler file: the scheduler picks a free port, no race with other tests
        # idle timeout and death timeout: should pytest itself be killed, the cluster goes too
        self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--idle-timeout", f"{2 * RUN_TIMEOUT_S}s", "--scheduler-file", str(scheduler_file),
                    log="scheduler.log")
        self.workers = [
            self._start("worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                        "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", f"w{i}",
                        "--local-directory", str(self.folder / f"w{i}"), "--death-timeout", "60",
                        "--preload", str(preload), log=f"worker-{i}.log")
            for i in range(2)
        ]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.address:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"the Dask scheduler did not start:\n{self.logs()}")
            try:
                self.address = json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.2)
        assert self.address.startswith("tcp://127.0.0.1:"), self.address
        try:
            self.wait_for_workers(2, deadline - time.monotonic())
        except Exception as error:
            raise RuntimeError(f"the Dask workers did not register:\n{self.logs()}") from error

    def n_workers(self, timeout_s: float = 30) -> int:
        from distributed import Client

        with Client(self.address, timeout=timeout_s) as client:
            return len(client.scheduler_info()["workers"])

    def wait_for_workers(self, n: int, timeout_s: float) -> None:
        from distributed import Client

        with Client(self.address, timeout=max(timeout_s, 1)) as client:
            client.wait_for_workers(n, timeout=max(timeout_s, 1))

    def kill(self) -> None:
        for process in self.processes:
            _stop(process)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.folder.glob("*.log")))


@pytest.fixture
def dask_cluster(tmp_path: Path, prefect_harness):
    """A running cluster whose workers report to the session's test Prefect server; killed after the
    test, whatever happened."""
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path / "dask"
    folder.mkdir()
    (folder / "kill_mid_part.py").write_text(KILL_MID_PART)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           KILL_MARKER_ENV: str(folder / "killed-at")}
    cluster = Cluster(folder, env)
    try:
        cluster.start(folder / "kill_mid_part.py")
        yield cluster
    finally:
        cluster.kill()


def test_a_worker_killed_mid_stage_leaves_the_sequential_artifacts(completed_run, runner_stages_removed, run_pipeline, small_train,
                                                                  assert_ledger_balances, assert_runner_run_matches,
                                                                  dask_cluster):
    base_root, base = completed_run  # runner.kind: sequential (the default)
    project, _ = runner_stages_removed
    watchdog = threading.Timer(RUN_TIMEOUT_S, dask_cluster.kill)  # the run's futures then fail
    watchdog.start()
    started = time.monotonic()
    try:
        summary = run_pipeline(project, [*small_train, "runner.kind=dask", f"runner.address={dask_cluster.address}"],
                               only="data")
    except BaseException:
        print(dask_cluster.logs())  # shown with the failure: what the scheduler and workers saw
        raise
    finally:
        watchdog.cancel()
    print(f"data stages on the cluster, one worker killed: {time.monotonic() - started:.1f} s")

    # The kill happened where it was meant to: while normalize's first part wrote its scratch
    # files, and it took one whole `dask worker` (nanny and worker) with it; the other one ran the rest.
    killed_at = Path(dask_cluster.env[KILL_MARKER_ENV])
    assert killed_at.exists(), dask_cluster.logs()
    assert "/normalize/.tmp-parts-" in killed_at.read_text()
    codes = sorted(str(w.poll()) for w in dask_cluster.workers)
    assert codes == [str(-signal.SIGKILL), "None"], dask_cluster.logs()
    assert dask_cluster.n_workers() == 1

    assert_runner_run_matches(project, summary, base_root, base)
    # no scratch folder outlives its stage, the half-written one included
    assert not list((project / "data" / "warehouse" / "artifacts").glob("*/.tmp-*"))
    assert_ledger_balances(project, summary["run_id"])
