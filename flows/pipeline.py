"""The sftflow pipeline, read top to bottom like its diagram.

ingest ─► normalize ─► dedup ─► filter ─► score ─► mix ─► train ─► evaluate
per source  per source  └── the registry's chain (tasks/core/stages.py) ──┘

Each stage module plans its own call (`plan`: what its key holds) and runs as its Prefect task
`<name>_stage`; the data stages after normalize run in registry order, each on the output of the
one before, so a stage added to the registry runs in its place without an edit here.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Callable

from prefect import flow
from prefect.runtime import flow_run

from sftflow.flows.gate import gate_failure
from sftflow.flows.publish import publish_run, publish_run_diff
from sftflow.flows.stage_runner import RunContext
from sftflow.tasks import evaluate, ingest, normalize, train
from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.cache_keys import project_code_version
from sftflow.tasks.core.locks import lock_wait_seconds, workspace_lock
from sftflow.tasks.core.parts import run_runner
from sftflow.tasks.core.recipe import Recipe, load_recipe
from sftflow.tasks.core.stages import RunLevel, chain_stages, check_flow_shape, n_stage_calls
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.train import TrainingFailed

Only = RunLevel  # how far to run: `data` stops after mix, `train` after train, `all` runs through evaluate


@flow(name="sftflow", persist_result=False, log_prints=True)
def sftflow_pipeline(
    recipe_path: str,
    overrides: list[str] | None = None,
    only: Only = "all",
    root: str | None = None,
    warehouse: str | None = None,
) -> dict[str, Any]:
    """Run a recipe: every stage cached by its key, every decision in the catalog."""
    check_flow_shape()  # a registry edit the flow cannot run fails before anything is read
    overrides = list(overrides or [])
    ws = Workspace.from_env(root=root, warehouse=warehouse)
    recipe = load_recipe(_recipe_file(recipe_path, ws), overrides)
    # One run per warehouse: a second one waits or stops here, before it writes anything.
    with workspace_lock(ws.warehouse, lock_wait_seconds(), recipe=recipe.name, flow_run_id=flow_run.get_id()):
        run = RunContext.start(ws, recipe, overrides, code_version=project_code_version(),
                               flow_run_id=flow_run.get_id(),
                               n_planned=n_stage_calls(len(recipe.sources), only))
        try:
            with contextlib.ExitStack() as runner_scope:  # where the data stages' parts run
                runner = runner_scope.enter_context(run_runner(recipe.runner))
                mixed = run_data(run, recipe, ws, runner, release_runner=runner_scope.close)
            data_card = run.publish_data_card()
            gated = None
            if only != "data":
                trained, evaluated = run_model(run, recipe, mixed, ws, data_card, only)
                if evaluated is not None:
                    gated = gate_failure(evaluated.stats, recipe.eval.on_regression,
                                         str(trained.file(trained.stats["model"]["path"])))
        except BaseException:
            run.finish("failed")
            raise
        # A gated run ran every stage and committed every artifact; only its verdict differs.
        run.finish("gated" if gated else "completed")
        summary = run.summary()
    try:
        publish_run(summary)
        publish_run_diff(ws.catalog_path, summary["run_id"])  # never raises: a warning at most
    finally:
        if gated:  # raised even if publishing failed: the verdict, not a report error, ends the run
            gated.summary = summary
            raise gated  # the flow run ends Failed, with the figures and what to change
    return summary


def run_data(run: RunContext, recipe: Recipe, ws: Workspace, runner: dict[str, Any],
             release_runner: Callable[[], None]) -> Manifest:
    """ingest and normalize per source, then dedup ─► filter ─► score ─► mix; returns mix's
    artifact. `run` executes a stage call (RunContext.run; `sftflow plan` passes its planner)."""
    ingested = [run.run(ingest.ingest_stage, ingest.plan(source, ws)) for source in recipe.sources]
    normalized = [run.run(normalize.normalize_stage, normalize.plan(recipe, m, ws, runner)) for m in ingested]
    # the runner goes after the last stage that uses it
    return run_chain(run, recipe, normalized, ws, runner, release_runner)


def run_model(run: RunContext, recipe: Recipe, mixed: Manifest, ws: Workspace, data_card: dict[str, Any],
              only: Only) -> tuple[Manifest, Manifest | None]:
    """train on mix's shards, then (`only="all"`) evaluate; returns both artifacts (evaluate's None
    when not run). Training is retried once when it failed (it resumes from its last checkpoint)."""
    trained = run.run(train.train_stage, train.plan(recipe, mixed, ws, data_card), retries=1,
                      retry_on=(TrainingFailed,))
    if only != "all":
        return trained, None
    return trained, run.run(evaluate.evaluate_stage, evaluate.plan(recipe, trained, mixed, ws))


def run_chain(run: RunContext, recipe: Recipe, normalized: list[Manifest], ws: Workspace,
              runner: dict[str, Any], release_runner: Callable[[], None]) -> Manifest:
    """The data stages that run once over all sources, in registry order, each planned on the
    output of the one before; returns the last one's (mix's) artifact.

    `release_runner` is called once no later stage uses the runner: a Dask cluster's workers (each
    holding filter's loaded models) are gone before score loads its scorer."""
    chain = chain_stages()
    last_runner_stage = max((i for i, spec in enumerate(chain) if spec.uses_runner), default=-1)
    upstream = normalized
    for i, spec in enumerate(chain):
        if i > last_runner_stage:
            release_runner()  # closing twice is a no-op
        module = importlib.import_module(spec.module)
        upstream = [run.run(getattr(module, f"{spec.name}_stage"), module.plan(recipe, upstream, ws, runner))]
    return upstream[0]


def _recipe_file(recipe_path: str, ws: Workspace) -> Path:
    """The recipe named by a parameter (relative to the root), confined to the allowed roots:
    a deployment parameter typed in the UI cannot make the flow read an arbitrary file."""
    return ws.resolve_input(recipe_path)
