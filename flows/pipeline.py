"""The sftflow pipeline, read top to bottom like its diagram (the stage order of tasks/core/stages.py).

ingest ─► normalize ─► dedup ─► filter ─► score ─► mix ─► train ─► evaluate
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.gate import gate_failure
from flows.plans import (plan_dedup, plan_evaluate, plan_filter, plan_ingest, plan_mix, plan_normalize,
                         plan_score, plan_train)
from flows.publish import publish_run
from flows.stage_runner import RunContext
from tasks.core.cache_keys import project_code_version
from tasks.core.locks import lock_wait_seconds, workspace_lock
from tasks.core.parts import run_runner
from tasks.core.recipe import load_recipe
from tasks.core.stages import RunLevel, n_stage_calls
from tasks.core.workspace import Workspace
from tasks.dedup import dedup_stage
from tasks.evaluate import evaluate_stage
from tasks.filters import filter_stage
from tasks.ingest import ingest_stage
from tasks.mix import mix_stage
from tasks.normalize import normalize_stage
from tasks.score import score_stage
from tasks.train import TrainingFailed, train_stage

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
    overrides = list(overrides or [])
    ws = Workspace.from_env(root=root, warehouse=warehouse)
    recipe = load_recipe(_recipe_file(recipe_path, ws), overrides)
    # One run per warehouse: a second one waits or stops here, before it writes anything.
    with workspace_lock(ws.warehouse, lock_wait_seconds(), recipe=recipe.name, flow_run_id=flow_run.get_id()):
        run = RunContext.start(ws, recipe, overrides, code_version=project_code_version(),
                               flow_run_id=flow_run.get_id(),
                               n_planned=n_stage_calls(len(recipe.sources), only))
        try:
            with run_runner(recipe.runner) as runner:  # where normalize's and filter's parts run
                ingested = [run.run(ingest_stage, plan_ingest(source, ws)) for source in recipe.sources]
                normalized = [run.run(normalize_stage, plan_normalize(recipe, m, ws, runner)) for m in ingested]
                deduped = run.run(dedup_stage, plan_dedup(recipe, normalized, ws))
                filtered = run.run(filter_stage, plan_filter(recipe, deduped, ws, runner))
            scored = run.run(score_stage, plan_score(recipe, filtered, ws))
            mixed = run.run(mix_stage, plan_mix(recipe, scored, ws))
            data_card = run.publish_data_card()
            gated = None
            if only != "data":
                trained = run.run(train_stage, plan_train(recipe, mixed, ws, data_card),
                                  retries=1, retry_on=(TrainingFailed,))
                if only == "all":
                    evaluated = run.run(evaluate_stage, plan_evaluate(recipe, trained, mixed, ws))
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
    finally:
        if gated:  # raised even if publishing failed: the verdict, not a report error, ends the run
            gated.summary = summary
            raise gated  # the flow run ends Failed, with the figures and what to change
    return summary


def _recipe_file(recipe_path: str, ws: Workspace) -> Path:
    """The recipe named by a parameter (relative to the root), confined to the allowed roots:
    a deployment parameter typed in the UI cannot make the flow read an arbitrary file."""
    return ws.resolve_input(recipe_path)
