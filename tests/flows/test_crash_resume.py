"""Kill the pipeline (SIGKILL, whole process group) at each stage, re-run, compare with a clean run.

One chain on one project: run k is killed at CRASH_POINTS[k] (tasks/core/failpoints.py), run k+1
starts from whatever run k left. Every moment of a stage's write is tried somewhere in the chain
(rows computed, parts written without a manifest, artifact committed but unknown to the
catalog, catalog rows inserted but not committed), and training is killed right after its first
checkpoint. After every kill: the published catalog and the writer's database open, and neither
holds a row for an artifact that is not committed on disk. In every run: exactly the stages
committed before it are cache hits. At the end: every data artifact is byte-identical to the
uninterrupted `completed_run` (same keys, same file hashes), training resumed from its
checkpoint and saw the same batches (the same loss at every step and the same final weights, bit
for bit), and the ledger balances. Before
the last run, a Prefect result file is cut short too: the stage must still be a cache hit.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import duckdb
import pytest

from sftflow.tasks.core.artifacts import MANIFEST, TMP_PREFIX, ArtifactStore
from sftflow.tasks.core.catalog import connect_readonly, writer_path
from sftflow.tasks.core.stages import data_stages
from sftflow.tasks.core.failpoints import FAILPOINT_ENV

pytestmark = pytest.mark.slow

RECIPE = "deployments/recipes/demo.yaml"
CRASH_POINTS = [
    "ingest:written",
    "ingest:recording",
    "normalize:computed",
    "normalize:committed",
    "dedup:written",
    "filter:committed",
    "score:recording",
    "mix:written",
    "train:checkpoint",
    "evaluate:computed",
]


def _committed(warehouse: Path) -> set[tuple[str, str]]:
    """(stage, key) of every artifact folder whose manifest is there and whose files verify."""
    store = ArtifactStore(warehouse / "artifacts")
    found = set()
    for manifest_path in (warehouse / "artifacts").glob(f"*/*/{MANIFEST}"):
        stage, key = manifest_path.parent.parent.name, manifest_path.parent.name
        if store.load(stage, key) is not None:
            found.add((stage, key))
    return found


def _catalog_artifacts(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    return set(con.execute("SELECT stage, artifact_id FROM artifacts").fetchall())


def _assert_catalog_sound(warehouse: Path) -> None:
    """Both databases open after the kill; every artifact they name is committed on disk."""
    on_disk = _committed(warehouse)
    published = warehouse / "catalog.duckdb"
    with connect_readonly(published) as con:
        assert _catalog_artifacts(con) <= on_disk
    with duckdb.connect(str(writer_path(published)), read_only=True) as con:  # replays the WAL, if any
        assert _catalog_artifacts(con) <= on_disk


def _stage_uses(warehouse: Path, run_id: str) -> list[tuple[str, str, bool]]:
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        return con.execute("SELECT stage, key, cache_hit FROM stage_runs WHERE run_id = ?", [run_id]).fetchall()


def _run_ids(warehouse: Path) -> list[tuple[str, str]]:
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        return con.execute("SELECT run_id, status FROM runs ORDER BY started_at").fetchall()


def _losses(log_history: list[dict]) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}


def test_killed_at_every_stage_resumes_to_the_uninterrupted_result(completed_run, small_train, project,
                                                                    sftflow_cli, assert_ledger_balances):
    baseline_root, baseline = completed_run
    root = project
    warehouse = root / "data" / "warehouse"
    args = ["run", RECIPE, "--only", "all", *[a for o in small_train for a in ("--set", o)]]

    committed_before: dict[str, set[tuple[str, str]]] = {}  # run_id -> artifacts on disk when it started
    known_runs: set[str] = set()
    for point in [*CRASH_POINTS, None]:
        before = _committed(warehouse) if warehouse.exists() else set()
        if point is None:  # and a Prefect result file cut short, as a kill mid-write would leave it
            dedup_key = next(key for stage, key in before if stage == "dedup")
            result = warehouse / "prefect-results" / dedup_key
            result.write_bytes(result.read_bytes()[:60])
        done = sftflow_cli(root, *args, env={FAILPOINT_ENV: point or ""})
        new_runs = [r for r, _ in _run_ids(warehouse) if r not in known_runs]
        assert len(new_runs) == 1, (point, done.stdout[-3000:], done.stderr[-3000:])
        known_runs.add(new_runs[0])
        committed_before[new_runs[0]] = before
        if point is None:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            final_run = new_runs[0]
        else:
            assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stdout[-3000:], done.stderr[-3000:])
            _assert_catalog_sound(warehouse)
            if point.endswith(":written"):  # a folder without a manifest was left: it must never be used
                assert list((warehouse / "artifacts" / point.split(":")[0]).glob(f"{TMP_PREFIX}*"))

    # Every run after a crash marked the crashed one interrupted; only the last one completed.
    statuses = dict(_run_ids(warehouse))
    assert statuses.pop(final_run) == "completed"
    assert set(statuses.values()) == {"interrupted"}
    assert not list((warehouse / "artifacts").glob(f"*/{TMP_PREFIX}*"))  # swept

    # In every run, a stage was a cache hit exactly when its artifact was committed before the run.
    for run_id, before in committed_before.items():
        uses = _stage_uses(warehouse, run_id)
        assert uses or run_id != final_run
        for stage, key, cache_hit in uses:
            assert cache_hit == ((stage, key) in before), (run_id, stage)

    # Data artifacts: the same keys and byte-identical files as the uninterrupted run.
    base_store = ArtifactStore(baseline_root / "data" / "warehouse" / "artifacts")
    store = ArtifactStore(warehouse / "artifacts")
    final_uses = _stage_uses(warehouse, final_run)
    base_keys = {(s["stage"], s["label"]): s["key"] for s in baseline["stages"]}
    assert len(final_uses) == len(baseline["stages"])
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        final_labeled = con.execute("SELECT stage, label, key FROM stage_runs WHERE run_id = ?", [final_run]).fetchall()
    for stage, label, key in final_labeled:
        if stage not in data_stages():
            continue
        assert key[:12] == base_keys[(stage, label)], (stage, label)
        ours, theirs = store.load(stage, key), base_store.load(stage, key)
        assert ours is not None and theirs is not None
        assert [(f.name, f.sha256) for f in ours.files] == [(f.name, f.sha256) for f in theirs.files], stage

    # Training resumed from the checkpoint the kill left, and saw the same batches in the same order.
    train_key = next(key for stage, _label, key in final_labeled if stage == "train")
    train = store.load("train", train_key)
    assert train.stats["train_metrics"]["resumed_from_checkpoint"].endswith("checkpoint-5")
    base_train_key = next(k for (s, _l), k in base_keys.items() if s == "train")
    base_train = next(p for p in (baseline_root / "data" / "warehouse" / "artifacts" / "train").iterdir()
                      if p.name.startswith(base_train_key))
    ours_log = json.loads(train.file("log_history.json").read_text())
    base_log = json.loads((base_train / "log_history.json").read_text())
    ours_loss, base_loss = _losses(ours_log), _losses(base_log)
    assert sorted(base_loss) == list(range(1, 11)) and sorted(ours_loss) == list(range(1, 11))
    assert ours_loss == base_loss  # bit for bit: same weights, same batches, same order (CPU is deterministic)
    assert train.file("model/model.safetensors").read_bytes() == (base_train / "model" / "model.safetensors").read_bytes()

    assert_ledger_balances(root, final_run)
