"""Per-part stage work: one task per records part of a stage's input, run where `runner` says.

Row-local stages (normalize, filter) do not need the whole corpus at once: each records part of
their input (at most PART_ROWS rows) is computed on its own. The recipe's `runner` section picks
where those part tasks run, without changing a byte of the artifact:

- `sequential` (default): one after another in the stage's own process;
- `processes`: Prefect's ProcessPoolTaskRunner, `workers` local processes;
- `dask`: prefect-dask's DaskTaskRunner, on the Dask scheduler at `address`, or on a
  LocalCluster of `workers` single-threaded processes when no address is given.

On `processes` and `dask`, every part task writes its output tables as Parquet into a scratch
folder next to the artifact (so a Dask cluster needs the warehouse on a shared filesystem) and
returns only JSON: its stats (`sequential` hands the tables on in memory; the round trip through
the scratch file is lossless, tests/core/test_parts.py checks the bytes).
The stage then reads the parts back in input order and writes the artifact itself, so the
artifact bytes depend on the input and the code, never on which runner ran the parts or in
which order they finished. The runner is not part of any cache key for the same reason.
"""

from __future__ import annotations

import importlib
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq

from sftflow.tasks.core.artifacts import TMP_PREFIX
from sftflow.tasks.core.recipe import RunnerConfig
from sftflow.tasks.core.records import PartedOutput, StageOutput

RECORDS, DECISIONS, EXTRA_DIR = "records.parquet", "decisions.parquet", "extra"


def compute_part(function: str, call: dict[str, Any], input_path: str, out_dir: str) -> dict[str, Any]:
    """Run `function` ("module:name", taking (StageCall, records part) and returning a
    StageOutput) on one records part; write its tables under `out_dir`; return its stats.

    Module-level and addressed by name, so any worker process can import and run it."""
    from sftflow.tasks.core.stage import StageCall

    output = _function(function)(StageCall.model_validate(call), pq.read_table(input_path))
    out = Path(out_dir)
    (out / EXTRA_DIR).mkdir(parents=True, exist_ok=True)
    for table, path in [(output.records, out / RECORDS), (output.decisions, out / DECISIONS),
                        *((t, out / EXTRA_DIR / f"{n}.parquet") for n, t in output.extra.items())]:
        # Arrow's own list field names ("item"), not Parquet's compliant "element": the table read
        # back is then the very table computed, and the artifact bytes those of a direct write.
        pq.write_table(table, path, compression="none", use_compliant_nested_type=False)
    return {"stats": output.stats}


def _function(function: str) -> Callable[[Any, Any], StageOutput]:
    module, name = function.split(":")
    return getattr(importlib.import_module(module), name)


def read_part(out_dir: Path) -> StageOutput:
    extra = {p.stem: pq.read_table(p) for p in sorted((out_dir / EXTRA_DIR).glob("*.parquet"))}
    return StageOutput(records=pq.read_table(out_dir / RECORDS), decisions=pq.read_table(out_dir / DECISIONS),
                       extra=extra)


def task_runner(cfg: RunnerConfig):
    """The Prefect task runner for `cfg`, or None for sequential."""
    if cfg.kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=cfg.workers)
    if cfg.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:  # an optional extra: say how to get it
            raise RuntimeError("runner.kind: dask needs prefect-dask: pip install 'sftflow[dask]'") from error
        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return None


@contextmanager
def run_runner(cfg: RunnerConfig) -> Iterator[dict[str, Any]]:
    """The runner settings a whole run passes to its stages: `dask` without an address gets one
    LocalCluster for the run (started here, stopped after it), not one per stage."""
    if cfg.kind != "dask" or cfg.address:
        yield cfg.canonical()
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield {**cfg.canonical(), "address": cluster.scheduler_address}


def map_parts(call: Any, function: str, merge_stats: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> PartedOutput:
    """Compute `function` over every records part of the stage's input; a PartedOutput in input order.

    `merge_stats` turns the parts' stats (in input order) into the stage's stats."""
    from sftflow.tasks.core.stage import records_paths as input_parts

    records_paths = input_parts(call.inputs)
    cfg = RunnerConfig.model_validate(call.params.get("runner") or {})
    scratch = call.store.stage_dir(call.stage) / f"{TMP_PREFIX}parts-{call.key}"
    payload = call.model_dump(mode="json")
    collected: list[dict[str, Any]] = []

    def part_dir(index: int) -> Path:
        return scratch / f"part-{index:05d}"

    def parts() -> Iterator[StageOutput]:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            runner = task_runner(cfg)
            if runner is None:  # compute one, hand it on, next; no scratch file needed in-process
                for path in records_paths:
                    output = _function(function)(call, pq.read_table(path))
                    collected.append({"stats": output.stats})
                    yield output
                return
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            part_task = task(compute_part, name=f"{call.stage}-part", persist_result=False, cache_policy=NO_CACHE)
            with runner:
                futures = [
                    runner.submit(part_task.with_options(task_run_name=f"{call.stage}[part {index}]"),
                                  {"function": function, "call": payload, "input_path": str(path),
                                   "out_dir": str(part_dir(index))})
                    for index, path in enumerate(records_paths)
                ]
                # Each part is handed on as soon as it and those before it are done, so the stage
                # writes part i into its artifact while the workers compute the parts after it,
                # instead of writing every part after the last one finished.
                for index, future in enumerate(futures):
                    collected.append(future.result())
                    yield read_part(part_dir(index))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return PartedOutput(parts=parts(), stats=lambda: merge_stats([c["stats"] for c in collected]))


def sum_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    """Key-wise sums, keys sorted.

    >>> sum_counts([{"kept": 2, "x": 1}, {"kept": 3}])
    {'kept': 5, 'x': 1}
    """
    total: dict[str, int] = {}
    for counts in dicts:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))
