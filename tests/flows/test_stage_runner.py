"""The flow's run bookkeeping: catalog writes run beside the next stage, never lost or reordered."""

from __future__ import annotations

import threading
import time

import pytest

from sftflow.flows.stage_runner import RunContext
from sftflow.tasks.core.catalog import Catalog, connect_readonly


def test_catalog_writes_overlap_the_next_stage_and_a_failed_one_fails_the_run(completed_project, run_pipeline,
                                                                              monkeypatch):
    """A slow write does not hold up the next stage; a failed one ends the run, marked failed."""
    root, _ = completed_project
    real = Catalog.record_stage
    events: list[tuple[str, str]] = []

    def record_stage(self, run_id, manifest, label, cache_hit, seconds, why=None):
        events.append(("record", manifest.stage))
        assert threading.current_thread() is not threading.main_thread()  # off the stage path
        if manifest.stage == "dedup":
            time.sleep(1.0)  # the filter stage is planned and served meanwhile
            events.append(("recorded", manifest.stage))
            raise RuntimeError("disk full while writing the catalog")
        return real(self, run_id, manifest, label, cache_hit, seconds, why)

    real_run = RunContext.run

    def run(self, stage_task, call, *args, **kwargs):
        events.append(("run", call.stage))
        return real_run(self, stage_task, call, *args, **kwargs)

    monkeypatch.setattr(Catalog, "record_stage", record_stage)
    monkeypatch.setattr(RunContext, "run", run)
    with pytest.raises(RuntimeError, match="disk full while writing the catalog"):
        run_pipeline(root)
    # the filter stage started while dedup's write was still under way: it did not wait for it
    assert events.index(("run", "filter")) < events.index(("recorded", "dedup"))
    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        status = con.execute("SELECT status FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    assert status == "failed"
