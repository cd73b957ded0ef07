"""Flow tests run against a throwaway Prefect server (prefect_test_harness) and a temp project."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root holding a copy of the samples and the demo recipe (so files can be edited)."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "data" / "samples", root / "data" / "samples")
    shutil.copytree(REPO / "deployments" / "recipes", root / "deployments" / "recipes")
    return root


@pytest.fixture
def run_pipeline():
    """Run the flow on a project root with its own warehouse; returns the run summary.

    Data-half tests stop after mix (`only="data"`); test_train_flow.py runs train and evaluate.
    """
    from flows.pipeline import sftflow_pipeline

    def run(root: Path, overrides: list[str] | None = None, recipe: str = "deployments/recipes/demo.yaml",
            only: str = "data"):
        return sftflow_pipeline(recipe_path=recipe, overrides=overrides or [], only=only, root=str(root),
                                warehouse=str(root / "data" / "warehouse"))

    return run
