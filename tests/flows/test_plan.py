"""`sftflow plan` and the recorded "why": on a catalog built from runs with one change each (a recipe
field, a source edit, a code edit: the `changed_runs` fixture), every computed stage names the key
input that changed, and a plan names it before anything runs, without writing anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sftflow.flows.plan import CACHED, COMPUTES, IF_INPUT_CHANGES, plan_run
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.stage import key_from_inputs

DEMO = Path("deployments/recipes/demo.yaml")
DATA_CHAIN = ("dedup", "filter", "score", "mix")


def _computed(summary: dict) -> dict[tuple[str, str], str]:
    return {(s["stage"], s["label"]): s["why"] for s in summary["stages"] if not s["cache_hit"]}


def _lines(planned: dict) -> dict[tuple[str, str], dict]:
    return {(line["stage"], line["label"]): line for line in planned["stages"]}


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_each_computed_stage_records_the_input_that_changed(changed_runs):
    root, runs = changed_runs
    field = _computed(runs["recipe_field"])
    assert field[("filter", "")].startswith("recipe filters.toxicity.threshold: ")
    assert field[("filter", "")].endswith(" -> 0.3")
    # nothing upstream of filter computed; downstream, only because its input changed
    assert set(field) <= {("filter", ""), ("score", ""), ("mix", "")}
    assert {why for stage, why in field.items() if stage != ("filter", "")} <= {"input filter changed",
                                                                                 "input score changed"}
    source = _computed(runs["source_edit"])
    assert source[("ingest", "openai_sample")] == "source file changed"
    assert source[("normalize", "openai_sample")] == "input ingest[openai_sample] changed"
    assert not {k for k in source if k[0] in ("ingest", "normalize") and k[1] != "openai_sample"}
    code = _computed(runs["code_edit"])
    # against the source-edit run's filter artifact: the code, and its input (the edit was undone)
    assert code[("filter", "")].split("; ") == ["code sftflow.tasks.filters edited", "input dedup changed"]
    assert not {k for k in code if k[0] in ("ingest", "normalize", "dedup")}

    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        recorded = con.execute("SELECT stage, label, why FROM stage_runs WHERE run_id = ? AND NOT cache_hit",
                               [runs["code_edit"]["run_id"]]).fetchall()
        keyed = con.execute("SELECT artifact_id, key_inputs FROM artifacts WHERE key_inputs IS NOT NULL").fetchall()
    assert [(r["kind"], r["what"]) for stage, _, why in recorded if stage == "filter" for r in json.loads(why)] == [
        ("code", "sftflow.tasks.filters"), ("input", "dedup")]
    # every artifact's recorded key inputs are complete: they hash to its key (train and evaluate too)
    assert len(keyed) >= 12
    assert all(key_from_inputs(json.loads(record)) == key for key, record in keyed)


def test_plan_names_the_changed_field_and_writes_nothing(changed_runs):
    root, runs = changed_runs
    before = _files(root / "data" / "warehouse")
    planned = plan_run(root / DEMO, ["filters.toxicity.threshold=0.25"], "data", root=root)
    assert _files(root / "data" / "warehouse") == before

    lines = _lines(planned)
    assert all(line["status"] == CACHED for (stage, _), line in lines.items()
               if stage in ("ingest", "normalize", "dedup"))
    whys = lines[("filter", "")]["why"].split("; ")
    assert lines[("filter", "")]["status"] == COMPUTES
    # against the newest filter artifact of the recipe: the code-edit run's (its edit is gone now)
    assert [w for w in whys if w.startswith("recipe ")] == [
        next(w for w in whys if w.startswith("recipe filters.toxicity.threshold: ") and w.endswith(" -> 0.25"))]
    assert "code sftflow.tasks.filters edited" in whys
    assert lines[("score", "")]["status"] == lines[("mix", "")]["status"] == IF_INPUT_CHANGES
    assert lines[("filter", "")]["estimated_seconds"] > 0  # from the runs that computed filter
    assert planned["n_to_compute"] == 3 and planned["n_cached"] == len(lines) - 3


def test_plan_of_an_edited_source(changed_runs, tmp_path):
    source_root, _ = changed_runs
    root = tmp_path / "project"
    shutil.copytree(source_root, root)
    path = root / "data" / "samples" / "alpaca.json"
    path.write_text(path.read_text(encoding="utf-8").replace("a", "A", 1), encoding="utf-8")
    lines = _lines(plan_run(root / DEMO, [], "all", root=root))
    assert lines[("ingest", "alpaca_sample")]["why"] == "source file changed"
    assert lines[("normalize", "alpaca_sample")]["status"] == IF_INPUT_CHANGES
    assert lines[("ingest", "openai_sample")]["status"] == CACHED
    assert [line["stage"] for line in lines.values()][-2:] == ["train", "evaluate"]


def test_plan_without_history(project):
    planned = plan_run(project / DEMO, [], "data", root=project)
    assert {line["status"] for line in planned["stages"]} == {COMPUTES}
    assert {line["why"] for line in planned["stages"]} == {"no earlier artifact of this stage for this recipe"}
    assert planned["n_without_estimate"] == planned["n_to_compute"] == len(planned["stages"]) == 10
    assert not (project / "data" / "warehouse" / "catalog.duckdb").exists()


def test_plan_cli_json(changed_runs, sftflow_cli):
    root, _ = changed_runs
    done = sftflow_cli(root, "plan", str(DEMO), "--only", "data", "--format", "json",
                       "--set", "filters.toxicity.threshold=0.25")
    assert done.returncode == 0, done.stdout + done.stderr
    planned = json.loads(done.stdout)
    filter_line = _lines(planned)[("filter", "")]
    assert any(r["kind"] == "recipe" and r["what"] == "filters.toxicity.threshold" and r["new"] == 0.25
               for r in filter_line["reasons"])
    typo = sftflow_cli(root, "plan", str(DEMO), "--set", "filters.toxicity.treshold=0.25")
    assert typo.returncode == 2 and "treshold" in typo.stdout
