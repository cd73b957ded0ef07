"""Run bookkeeping for a flow: call a stage task, trust only verified artifacts, record the result.

The flow process is the catalog's single writer: tasks compute artifacts, and this module (run
in the flow) registers them, records `stage_runs`, and publishes each stage's counts as a Prefect
table artifact.

Catalog writes run on one background thread, in stage order, while the next stage computes: at a
million rows, loading a stage's decisions (and ingest's raw rows) into DuckDB takes seconds to
tens of seconds that no stage needs, since stages read artifacts, never the catalog. Whatever
reads the catalog (the data card, the run summary, the run's end) first waits for every pending
write, and a failed write fails the run there or before the next stage starts. A crash between
an artifact's commit and its record is already recovered by the next run (it registers an
artifact the catalog lacks when it serves it), so the order of commit and record is unchanged.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prefect.logging import get_run_logger

from sftflow.flows.publish import publish_data_card, publish_stage

from sftflow.tasks.core.artifacts import ArtifactStore, Manifest
from sftflow.tasks.core.catalog import Catalog
from sftflow.tasks.core.recipe import Recipe, recipe_canonical_json
from sftflow.tasks.core.stage import StageCall
from sftflow.tasks.core.why import BASELINES_SQL, baselines, explain_call, why_text
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.model_card import render_data_card, toxicity_card


class EmptyStageError(RuntimeError):
    """A stage kept no rows: the run stops loudly (its decisions are already in the catalog)."""


@dataclass
class StageResult:
    call: StageCall
    manifest: Manifest
    cache_hit: bool
    seconds: float
    why: list[dict[str, Any]] | None = None  # computed: which key inputs changed (tasks/core/why.py)

    def row(self) -> dict[str, Any]:
        return {
            "stage": self.call.stage, "label": self.call.label, "key": self.call.key[:12],
            "cache_hit": self.cache_hit, "seconds": round(self.seconds, 2),
            "n_in": self.manifest.n_in, "n_out": self.manifest.n_out,
            "why": why_text(self.why) if self.why else "",
        }


@dataclass
class RunContext:
    """One pipeline run: its id, catalog, artifact store and the stages executed so far."""

    workspace: Workspace
    recipe: Recipe
    run_id: str
    flow_run_id: str | None
    catalog: Catalog
    overrides: list[str] = field(default_factory=list)
    code_version: str = ""
    n_planned: int = 0  # stages this run will execute, for the [i/n] progress lines
    results: list[StageResult] = field(default_factory=list)
    data_card_path: str | None = None  # runs/<run_id>/DATA_CARD.md once written
    # (stage, label) -> the newest artifact an earlier run of this recipe used: what "why" compares to
    baselines: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _recorder: ThreadPoolExecutor | None = None  # the catalog's writer thread (one: writes stay in order)
    _pending: list[Future] = field(default_factory=list)

    @classmethod
    def start(cls, workspace: Workspace, recipe: Recipe, overrides: list[str], code_version: str,
              flow_run_id: str | None, n_planned: int = 0) -> "RunContext":
        catalog = Catalog(workspace.catalog_path)
        # The caller holds the workspace lock: whatever a killed run left behind is dead.
        interrupted = catalog.recover()
        swept = ArtifactStore(workspace.artifacts_dir).sweep_partial()
        if interrupted or swept:
            get_run_logger().warning(
                "recovered from an earlier crash: %d run(s) marked interrupted (%s), %d unfinished "
                "artifact folder(s) removed", len(interrupted), ", ".join(interrupted), len(swept))
        run_id = uuid.uuid4().hex[:16]
        catalog.start_run(run_id, flow_run_id, recipe.name, recipe.recipe_hash(), code_version,
                          recipe_canonical_json(recipe), list(overrides))
        earlier = baselines(catalog.query(BASELINES_SQL, [recipe.name, run_id]))
        return cls(workspace=workspace, recipe=recipe, run_id=run_id, flow_run_id=flow_run_id,
                   catalog=catalog, overrides=list(overrides), code_version=code_version, n_planned=n_planned,
                   baselines=earlier)

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.workspace.artifacts_dir)

    def run(self, stage_task: Any, call: StageCall, retries: int = 0,
            retry_on: tuple[type[BaseException], ...] = ()) -> Manifest:
        """Execute (or reuse) one stage, register its artifact and record the stage run.

        `retries`: Prefect re-runs the task when it fails with one of `retry_on` (train resumes
        from its last checkpoint); deterministic errors such as a failed mask audit are final.
        """
        self._raise_failed_record()
        started = time.perf_counter()

        def transient(_task: Any, _task_run: Any, state: Any) -> bool:
            return isinstance(state.result(raise_on_failure=False), retry_on)

        task = stage_task.with_options(
            retries=retries,
            retry_condition_fn=transient if retry_on else None,
            task_run_name=f"{call.stage}[{call.label}]" if call.label else call.stage,
            result_storage=self.workspace.warehouse / "prefect-results",  # a Path: local storage, no block to save
        )
        state = task(call, return_state=True)
        result = state.result()
        cache_hit = state.name == "Cached" or not result["computed"]
        # Always take the manifest from the store, not the one Prefect remembered: the store
        # re-anchors paths (a moved warehouse). File hashes are checked only when Prefect served
        # the result; when the task body ran, it verified or just wrote them itself.
        manifest = self.store.load(call.stage, call.key, verify=state.name == "Cached")
        if manifest is None:
            # Prefect remembers a result whose artifact folder is gone or damaged: recompute.
            result = task.with_options(refresh_cache=True)(call, return_state=True).result()
            cache_hit = not result["computed"]
            manifest = self.store.load(call.stage, call.key)
            if manifest is None:
                raise RuntimeError(f"{call.stage}: artifact {call.key} missing right after it was written")
        seconds = time.perf_counter() - started
        # the key inputs the task recorded in the manifest it just wrote (the call's own, by construction)
        why = None if cache_hit else explain_call(manifest.key_inputs or call.key_inputs(), call.key, call.label,
                                                  self.baselines.get((call.stage, call.label)))
        self._record(manifest, call.label, cache_hit, seconds, why)
        outcome = StageResult(call, manifest, cache_hit, seconds, why)
        self.results.append(outcome)
        self._publish(outcome)
        if manifest.n_out == 0 and call.stage not in ("train", "evaluate"):
            where = f"{call.stage} [{call.label}]" if call.label else call.stage
            raise EmptyStageError(
                f"{where}: 0 of {manifest.n_in} rows kept, nothing left for the next stage. Why: "
                f"sftflow sql \"SELECT reason, count(*) FROM decisions WHERE artifact_id = '{manifest.key}' "
                f"GROUP BY ALL\""
            )
        return manifest

    def _publish(self, outcome: StageResult) -> None:
        row = outcome.row()
        get_run_logger().info(
            "[%d/%d] %-9s %-16s in %6d  out %6d  %s  %.2fs%s",
            len(self.results), self.n_planned, row["stage"], row["label"], row["n_in"], row["n_out"],
            "cache hit" if row["cache_hit"] else "computed ", row["seconds"], f"  why: {row['why']}" if row["why"] else "",
        )
        publish_stage(row, outcome.manifest, self.run_id)

    def publish_data_card(self) -> dict[str, Any]:
        """Write runs/<run_id>/DATA_CARD.md, show it in the UI; returns the card (train's input)."""
        card = self.data_card()
        path = self.workspace.warehouse / "runs" / self.run_id / "DATA_CARD.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        markdown = render_data_card({**card, "overrides": self.overrides, "code_version": self.code_version})
        path.write_text(markdown, encoding="utf-8")
        publish_data_card(markdown, self.run_id)
        self.data_card_path = str(path)
        return card

    def _record(self, manifest: Manifest, label: str, cache_hit: bool, seconds: float,
                why: list[dict[str, Any]] | None) -> None:
        """Register the artifact and this run's use of it, on the catalog's writer thread."""
        if self._recorder is None:
            self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftflow-catalog")
        self._pending.append(self._recorder.submit(self.catalog.record_stage, self.run_id, manifest, label,
                                                   cache_hit, seconds, why))

    def _raise_failed_record(self) -> None:
        """A catalog write that already failed stops the run before another stage starts."""
        if any(future.done() and future.exception() is not None for future in self._pending):
            self.wait_for_catalog()  # raises it

    def wait_for_catalog(self) -> None:
        """Every stage recorded so far is in the catalog; the first failed write raises here."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def finish(self, status: str) -> None:
        """Wait for the catalog's pending writes, then mark the run (failed if a write failed)."""
        try:
            self.wait_for_catalog()
        except BaseException:
            self.catalog.finish_run(self.run_id, "failed")
            raise
        finally:
            if self._recorder is not None:
                self._recorder.shutdown(wait=True)
                self._recorder = None
        self.catalog.finish_run(self.run_id, status)

    def data_card(self) -> dict[str, Any]:
        """What the model card says about its data: sources, drops by stage and reason, mixture."""
        self.wait_for_catalog()
        sources = self.catalog.query(
            """SELECT e.source, any_value(e.source_format), any_value(e.source_uri), any_value(e.origin),
                      any_value(e.license), count(*) FROM examples e
               JOIN decisions d ON d.example_id = e.example_id AND d.stage = 'ingest'
               JOIN stage_runs sr ON sr.key = d.artifact_id AND sr.run_id = ?
               GROUP BY e.source ORDER BY e.source""", [self.run_id])
        summary = self.summary()
        return {
            "run_id": self.run_id,
            "recipe": {"name": self.recipe.name, "hash": self.recipe.recipe_hash()},
            "sources": [dict(zip(("name", "format", "path", "origin", "license", "n_rows"), r)) for r in sources],
            "ledger": summary["ledger"],
            "drops": summary["drop_reasons"],
            "mixture": summary["mixture"],
            # the toxicity scorer, its window, and the rows it could not judge (script)
            "toxicity": toxicity_card(next((r.manifest.stats for r in reversed(self.results)
                                            if r.call.stage == "filter"), None)),
            "artifacts": [{"stage": r.call.stage, "label": r.call.label, "key": r.call.key,
                           "sha256": r.manifest.content_hash} for r in self.results],
        }

    def summary(self) -> dict[str, Any]:
        self.wait_for_catalog()
        ledger = self.catalog.query(
            "SELECT stage, n_in, n_kept, n_dropped FROM ledger_by_run JOIN stage_order USING (stage) "
            "WHERE run_id = ? ORDER BY ordinal", [self.run_id])
        reasons = self.catalog.query(
            """SELECT d.stage, d.reason, count(*) FROM decisions d
               JOIN stage_runs sr ON sr.key = d.artifact_id AND sr.run_id = ?
               WHERE NOT d.kept GROUP BY 1, 2 ORDER BY 1, 3 DESC""", [self.run_id])
        mix = next((r.manifest for r in reversed(self.results) if r.call.stage == "mix"), None)
        evaluated = next((r.manifest for r in reversed(self.results) if r.call.stage == "evaluate"), None)
        return {
            "run_id": self.run_id,
            "flow_run_id": self.flow_run_id,
            "recipe": self.recipe.name,
            "wall_seconds": round(time.perf_counter() - self.started, 2),
            "stages": [r.row() for r in self.results],
            "ledger": [dict(zip(("stage", "n_in", "n_kept", "n_dropped"), row)) for row in ledger],
            "drop_reasons": [dict(zip(("stage", "reason", "n"), row)) for row in reasons],
            "mixture": mix.stats.get("mixture", []) if mix else [],
            "evals": [{"metric": m["metric"], "value": m["value"]} for m in evaluated.stats.get("metrics", [])]
            if evaluated else [],
            "regressed": evaluated.stats.get("regressed") if evaluated else None,
            "gate": evaluated.stats.get("gate") if evaluated else None,
            "cards": self._cards(),
        }

    def _cards(self) -> dict[str, str]:
        """Card and report files of this run: the data card, and the train/evaluate artifacts' own."""
        cards = {"data_card": self.data_card_path} if self.data_card_path else {}
        for r in self.results:
            if r.call.stage == "train":
                cards["model_card"] = str(r.manifest.file("MODEL_CARD.md"))
            elif r.call.stage == "evaluate":
                cards["eval_report"] = str(r.manifest.file("report.md"))
        return cards
