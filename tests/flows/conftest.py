"""Flow tests run against a throwaway Prefect server (prefect_test_harness) and a temp project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.audit import UNACCOUNTED_ROWS_SQL
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core import stages

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# A small training budget for flow tests: the chain runs for real, in seconds, and still learns.
SMALL_TRAIN = ["train.max_steps=10", "train.save_steps=5", "train.logging_steps=1", "train.tiny.hidden_size=64",
               "train.tiny.num_hidden_layers=2", "train.tiny.intermediate_size=128", "train.max_length=256",
               "train.per_device_train_batch_size=4", "eval.max_new_tokens=4", "eval.max_general_texts=8"]


def _new_project(parent: Path) -> Path:
    root = parent / "project"
    shutil.copytree(REPO / "data" / "samples", root / "data" / "samples")
    shutil.copytree(REPO / "deployments" / "recipes", root / "deployments" / "recipes")
    return root


def _run(root: Path, overrides: list[str] | None = None, recipe: str = "deployments/recipes/demo.yaml",
         only: str = "data") -> dict:
    from sftflow.flows.pipeline import sftflow_pipeline

    return sftflow_pipeline(recipe_path=recipe, overrides=overrides or [], only=only, root=str(root),
                            warehouse=str(root / "data" / "warehouse"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root holding a copy of the samples and the demo recipe (so files can be edited)."""
    return _new_project(tmp_path)


@pytest.fixture(scope="session")
def small_train() -> list[str]:
    return list(SMALL_TRAIN)


@pytest.fixture(scope="session")
def completed_run(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    """One cold, complete run (ingest to evaluate, SMALL_TRAIN), shared read-only by tests."""
    root = _new_project(tmp_path_factory.mktemp("completed"))
    return root, _run(root, SMALL_TRAIN, only="all")


@pytest.fixture
def completed_project(completed_run, tmp_path: Path) -> tuple[Path, dict]:
    """A private copy of the completed run's project and warehouse, and the cold run's summary.

    The copy lives elsewhere, so it is also a moved warehouse: artifacts are found by key and
    their paths re-anchored.
    """
    source, summary = completed_run
    root = tmp_path / "project"
    shutil.copytree(source, root)
    return root, summary


@pytest.fixture
def run_pipeline():
    """Run the flow on a project root with its own warehouse; returns the run summary.

    `only="data"` by default (stop after mix); pass only="all" for train and evaluate.
    """
    return _run


def _assert_ledger_balances(root: Path, run_id: str) -> None:
    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        rows = con.execute(
            "SELECT stage, n_in, n_kept, n_dropped FROM ledger_by_run WHERE run_id = ?", [run_id]
        ).fetchall()
        # the data stages, and train when the run trained (it decides every distinct train row)
        data_stages = set(stages.data_stages())  # as registered now (a test may add a stage)
        assert data_stages <= {r[0] for r in rows} <= {*data_stages, "train"}
        for stage, n_in, n_kept, n_dropped in rows:
            assert n_in == n_kept + n_dropped, stage
        # Every row read is either in a shard of this run's mix or has a drop decision in this run.
        lost = con.execute(UNACCOUNTED_ROWS_SQL, [run_id]).fetchone()[0]
        assert lost == 0
        # the audit views answer for the latest run: nothing it put in a shard shows up as dropped
        # by a data stage (train drops rows that are in its mix's shards: no_supervised_tokens)
        if run_id == con.execute("SELECT run_id FROM runs WHERE status = 'completed' "
                                 "ORDER BY finished_at DESC LIMIT 1").fetchone()[0]:
            stale = con.execute("SELECT count(*) FROM drops d JOIN shard_examples se USING (example_id) "
                                "JOIN latest_shards s USING (shard_id) WHERE d.stage <> 'train'").fetchone()[0]
            assert stale == 0


@pytest.fixture
def assert_ledger_balances():
    """Every data stage: rows in = kept + dropped; every row read is in a shard or was dropped."""
    return _assert_ledger_balances


def _sftflow(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
             wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """`sftflow ARGS` in its own process (and process group) with ROOT as the current folder,
    reporting to the session's test server. wait=False returns the running Popen."""
    from prefect.settings import PREFECT_API_URL

    full_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), **(env or {})}
    command = [sys.executable, "-m", "sftflow.flows.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=root, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


@pytest.fixture
def sftflow_cli(prefect_harness):
    """Run the `sftflow` command line in a subprocess (a crash there cannot take pytest down)."""
    return _sftflow


@pytest.fixture(scope="session")
def changed_runs(completed_run, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """A copy of the completed run's project, then three data runs (`only="data"`, SMALL_TRAIN), each
    the base recipe with one change, made in this order and undone after its run: `recipe_field`
    (`filters.toxicity.threshold=0.3`), `source_edit` (one row of openai.jsonl: edits._edit_source_row)
    and `code_edit` (tasks/filters.py asks 3x the response tokens: edits._edit_filter_code; its patches
    end with its run). Returns (root, {"base": the completed run's summary, "recipe_field": ...,
    "source_edit": ..., "code_edit": ...}); shared read-only by tests."""
    from sftflow.tasks.core import cache_keys
    from tests.flows.edits import _edit_filter_code, _edit_source_row

    origin, base = completed_run
    root = tmp_path_factory.mktemp("changed") / "project"
    shutil.copytree(origin, root)
    source = root / "data" / "samples" / "openai.jsonl"
    pristine = source.read_bytes()
    summaries = {"base": base}
    changes = (("recipe_field", ["filters.toxicity.threshold=0.3"], None), ("source_edit", [], _edit_source_row),
               ("code_edit", [], _edit_filter_code))
    for name, overrides, edit in changes:
        try:
            with pytest.MonkeyPatch.context() as mp:
                if edit:
                    edit(root, mp)
                cache_keys.code_modules.cache_clear()  # fingerprints read the edited copy
                summaries[name] = _run(root, SMALL_TRAIN + overrides)
        finally:
            cache_keys.code_modules.cache_clear()  # and the real files again afterwards
            source.write_bytes(pristine)
    return root, summaries


@pytest.fixture
def runner_stages_removed(completed_project) -> tuple[Path, dict]:
    """A copy of the completed run whose artifacts and row memos of the stages that run on
    `recipe.runner` (normalize, filter) are gone: a run recomputes exactly those, on the runner
    under test, and serves the rest from the cache (so score's model is never loaded)."""
    from sftflow.tasks.core.row_memo import MEMO_DIR

    root, summary = completed_project
    warehouse = root / "data" / "warehouse"
    for spec in stages.STAGES:
        if spec.uses_runner:
            shutil.rmtree(warehouse / "artifacts" / spec.name)
            shutil.rmtree(warehouse / MEMO_DIR / spec.name, ignore_errors=True)
    return root, summary


def _assert_runner_run_matches(project: Path, summary: dict, base_root: Path, base: dict) -> None:
    """A data run on another runner, from `runner_stages_removed`, against the sequential run."""
    # The runner is not in any key: every data stage has the sequential run's key and files.
    base_keys = {(s["stage"], s["label"]): s["key"] for s in base["stages"] if s["stage"] in stages.data_stages()}
    keys = {(s["stage"], s["label"]): s["key"] for s in summary["stages"]}
    assert keys == base_keys
    # normalize and filter computed here, on the runner; the stages between and after them are
    # served: their inputs came out with the sequential run's data
    runner_stages = {s.name for s in stages.STAGES if s.uses_runner}
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


@pytest.fixture
def assert_runner_run_matches():
    """The runner is in no key: a run that recomputed the runner's stages elsewhere has every data
    stage's key and file bytes of the sequential run, and computed exactly those stages."""
    return _assert_runner_run_matches
