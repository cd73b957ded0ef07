"""`sftflow plan`: what a run of a recipe would compute, and why, without running anything.

The plan walks the pipeline with the flow's own functions (flows/pipeline.py: run_data,
run_model: the same `plan` of every stage module, in the same order) and asks, for each call,
whether the artifact store holds its key. A stage that is not cached is explained by the key
inputs that changed against the newest artifact of that stage for the recipe
(tasks/core/why.py). A stage downstream of one that will compute cannot know its own key yet
(keys hold their inputs' data hashes, so an upstream stage whose output comes out byte-identical
stops the re-run there): when an artifact in the store matches all the rest of its key
(artifacts.key_inputs), it is listed as computing only if that input changes; when none does, it
computes whatever the input turns out to be. Costs are the median seconds of the stage's last
computed runs in stage_runs. Nothing is written: the catalog is opened read-only and no stage
runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftflow.tasks.core.artifacts import ArtifactStore, Manifest
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.recipe import load_recipe
from sftflow.tasks.core.stage import StageCall
from sftflow.tasks.core.stages import RunLevel
from sftflow.tasks.core.why import (
    BASELINES_SQL, CANDIDATES_SQL, COMPUTED_SECONDS_SQL, baselines, candidates, estimated_seconds, explain_call,
    input_name, matches_but_pending, why_text,
)
from sftflow.tasks.core.workspace import Workspace

CACHED, COMPUTES, IF_INPUT_CHANGES = "cached", "computes", "computes if its input changes"
PENDING_PREFIX = "pending:"  # the key of a stand-in for an artifact this plan would compute


@dataclass
class Planner:
    """Collects one line per stage call; `run` has the signature of RunContext.run, so the flow's
    own walk of the stages (flows/pipeline.py: run_data, run_model) plans them in the flow's order."""

    store: ArtifactStore
    baselines: dict[tuple[str, str], dict[str, Any]]
    seconds: dict[tuple[str, str], float]
    candidates: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)

    def run(self, _stage_task: Any, call: StageCall, **_options: Any) -> Manifest:
        # Not re-hashed here (a run verifies what it serves): a damaged artifact is planned as cached.
        cached = self.store.load(call.stage, call.key, verify=False)
        if cached is not None:
            self.lines.append(self._line(call, CACHED, []))
            return cached
        pending = {input_name(m.stage, m.label) for m in call.inputs if m.key.startswith(PENDING_PREFIX)}
        current = call.key_inputs()
        reasons = explain_call(current, call.key, call.label, self.baselines.get((call.stage, call.label)),
                               inputs_pending=bool(pending))
        # With an input not computed yet the key is unknown; an earlier artifact that matches all
        # the rest of it is served if that input comes out with the data it had then.
        reusable = [c["key"] for c in self.candidates.get((call.stage, call.label), []) if pending
                    and matches_but_pending(current, c["key_inputs"], call.label, pending)
                    and self.store.load(call.stage, c["key"], verify=False) is not None]
        names = ", ".join(sorted(pending))
        if reusable:
            line = self._line(call, IF_INPUT_CHANGES, [], f"after {names}: cached if that comes out "
                              f"as it did for artifact {reusable[0][:12]}")
            self.lines.append({**line, "reusable": reusable})  # the artifacts a run could serve
        else:
            if pending and not reasons:
                reasons = [{"kind": "input", "what": names, "old": None, "new": None}]
            self.lines.append(self._line(call, COMPUTES, reasons, why_text(reasons)))
        # A stand-in for the artifact this call would write: later calls plan on it, and see it pending.
        return Manifest(stage=call.stage, key=PENDING_PREFIX + call.key, path="", files=[], inputs=[],
                        config_hash=call.config_hash, code_hash=call.code_hash, n_in=0, n_out=0,
                        stats={"source": call.label}, created_at="", label=call.label)

    def _line(self, call: StageCall, status: str, reasons: list[dict[str, Any]], why: str = "") -> dict[str, Any]:
        baseline = self.baselines.get((call.stage, call.label))
        return {
            "stage": call.stage, "label": call.label, "key": call.key[:12], "status": status, "why": why,
            "reasons": reasons,
            "estimated_seconds": None if status == CACHED else self.seconds.get((call.stage, call.label)),
            "compared_with": baseline["key"][:12] if baseline and status != CACHED else None,
        }


def plan_run(recipe_path: Path, overrides: list[str], only: RunLevel = "all", root: Path | None = None,
             warehouse: Path | None = None) -> dict[str, Any]:
    """What `sftflow run RECIPE --set OVERRIDES --only ONLY` would compute, stage by stage."""
    from sftflow.flows.pipeline import run_data, run_model  # the flow's own walk of the stages

    ws = Workspace.from_env(root=root, warehouse=warehouse)
    recipe = load_recipe(ws.resolve_input(str(recipe_path)), overrides)
    earlier: dict[tuple[str, str], dict[str, Any]] = {}
    seconds: dict[tuple[str, str], float] = {}
    reusable: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if ws.catalog_path.is_file():
        with connect_readonly(ws.catalog_path) as con:
            earlier = baselines(con.execute(BASELINES_SQL, [recipe.name, ""]).fetchall())
            seconds = estimated_seconds(con.execute(COMPUTED_SECONDS_SQL, [recipe.name]).fetchall())
            reusable = candidates(con.execute(CANDIDATES_SQL).fetchall())
    planner = Planner(ArtifactStore(ws.artifacts_dir), earlier, seconds, reusable)
    mixed = run_data(planner, recipe, ws, recipe.runner.canonical(), release_runner=lambda: None)
    if only != "data":
        run_model(planner, recipe, mixed, ws, data_card={}, only=only)  # the data card is not in a key
    to_compute = [line for line in planner.lines if line["status"] != CACHED]
    return {
        "recipe": recipe.name, "overrides": list(overrides), "only": only,
        "stages": planner.lines,
        "n_cached": len(planner.lines) - len(to_compute),
        "n_to_compute": len(to_compute),  # at most: those `computes if its input changes` may be served
        "n_if_input_changes": sum(line["status"] == IF_INPUT_CHANGES for line in to_compute),
        # stages never computed before have no figure: the total says how many it leaves out
        "estimated_seconds": round(sum(line["estimated_seconds"] or 0 for line in to_compute), 1),
        "n_without_estimate": sum(line["estimated_seconds"] is None for line in to_compute),
    }
