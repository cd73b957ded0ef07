"""`sftflow diff` on real runs: the completed demo run, then one change each (conftest.changed_runs):
a recipe field, a source edit, a code edit. Every diff is checked against the fates worked out
row by row here, from the runs' decisions, and each change against what it must do.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftflow.flows.cli import app
from sftflow.tasks.core import stages
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.run_diff import run_diff

pytestmark = pytest.mark.slow
UPSTREAM_OF_FILTER = ("ingest", "normalize", "dedup")


def catalog(root: Path):
    return connect_readonly(root / "data" / "warehouse" / "catalog.duckdb")


def fates(con, run_id: str) -> dict[str, str]:
    """example_id -> `kept` or `stage: reason` of the first data stage that dropped it in the run."""
    order = stages.data_stages()
    rows = con.execute("""SELECT d.example_id, d.stage, d.kept, d.reason FROM decisions d
                          JOIN (SELECT DISTINCT key FROM stage_runs WHERE run_id = ?) k ON k.key = d.artifact_id""",
                       [run_id]).fetchall()
    fate: dict[str, str] = {}
    for example_id, stage, kept, reason in sorted((r for r in rows if r[1] in order), key=lambda r: order.index(r[1])):
        fate.setdefault(example_id, "kept")
        if not kept and fate[example_id] == "kept":
            fate[example_id] = f"{stage}: {reason}"
    return fate


def expected_changes(a: dict[str, str], b: dict[str, str]) -> Counter:
    """(stage, change, in A, in B) -> rows, by the rule `sftflow diff` documents."""
    counts: Counter = Counter()
    for example_id in a.keys() | b.keys():
        fa, fb = a.get(example_id, "absent"), b.get(example_id, "absent")
        if fa == fb:
            continue
        stage_a, stage_b = fa.split(":")[0] if ":" in fa else None, fb.split(":")[0] if ":" in fb else None
        if stage_b:
            change = "added" if fa == "absent" else "reason_changed" if stage_a == stage_b else "newly_dropped"
            counts[(stage_b, change, fa, fb)] += 1
        if stage_a and stage_a != stage_b:
            counts[(stage_a, "removed" if fb == "absent" else "newly_kept", fa, fb)] += 1
    return counts


def changes_of(diff: dict) -> Counter:
    return Counter({(s["stage"], c["change"], c["in_a"], c["in_b"]): c["n"] for s in diff["stages"] for c in s["changes"]})


def dropped_as(con, run_id: str, stage: str, reason: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT d.example_id FROM decisions d JOIN stage_runs sr ON sr.key = d.artifact_id "
        "WHERE sr.run_id = ? AND d.stage = ? AND d.reason = ?", [run_id, stage, reason]).fetchall()}


def newly_dropped_as(root: Path, runs: dict, name: str, stage: str, reason: str) -> set[str]:
    """Rows the `name` run's stage dropped with `reason` that the base run's did not."""
    with catalog(root) as con:
        return (dropped_as(con, runs[name]["run_id"], stage, reason)
                - dropped_as(con, runs["base"]["run_id"], stage, reason))


def shard_contents(con, run_id: str) -> dict[str, tuple[str, str, int, Counter]]:
    """The run's mix shards by name inside the mix artifact -> (split, category, rows, the copies
    of each example it holds)."""
    found: dict[str, tuple[str, str, int, Counter]] = {}
    for shard_id, key, split, category, n_rows, example_id, n_copies in con.execute("""
            SELECT s.shard_id, s.artifact_id, s.split, s.category, s.n_rows, se.example_id, se.n_copies
            FROM shards s JOIN stage_runs sr ON sr.key = s.artifact_id AND sr.run_id = ? AND sr.stage = 'mix'
            LEFT JOIN shard_examples se ON se.shard_id = s.shard_id""", [run_id]).fetchall():
        assert shard_id.startswith(key + "/")
        entry = found.setdefault(shard_id[len(key) + 1:], (split, category, n_rows, Counter()))
        if example_id is not None:
            entry[3][example_id] += n_copies
    return found


def expected_shards(a: dict, b: dict) -> dict:
    """The shard part of a diff, worked out shard by shard from shard_contents of A and B."""
    changed = []
    for name in a.keys() | b.keys():
        split, category = (a.get(name) or b[name])[:2]
        rows_a, rows_in_a = a[name][2:] if name in a else (None, Counter())
        rows_b, rows_in_b = b[name][2:] if name in b else (None, Counter())
        if rows_a is None or rows_b is None or rows_in_a != rows_in_b:
            changed.append({"shard": name, "split": split, "category": category, "rows_a": rows_a, "rows_b": rows_b,
                            "n_only_a": sum((rows_in_a - rows_in_b).values()),
                            "n_only_b": sum((rows_in_b - rows_in_a).values())})
    changed.sort(key=lambda s: (s["category"], s["shard"]))
    changed.sort(key=lambda s: s["split"], reverse=True)  # stable: train before eval, then as above
    return {"changed": changed, "n_unchanged": len(a.keys() | b.keys()) - len(changed)}


@pytest.fixture(scope="module")
def diffs(changed_runs) -> dict[str, dict]:
    """Each change's run against the base run, with every changed row listed."""
    root, runs = changed_runs
    with catalog(root) as con:
        return {name: run_diff(con, runs["base"]["run_id"], runs[name]["run_id"], rows_limit=1000)
                for name in ("recipe_field", "source_edit", "code_edit")}


@pytest.mark.parametrize("name", ["recipe_field", "source_edit", "code_edit"])
def test_each_diff_counts_what_the_decisions_say(changed_runs, diffs, name):
    root, runs = changed_runs
    diff = diffs[name]
    with catalog(root) as con:
        a, b = fates(con, runs["base"]["run_id"]), fates(con, runs[name]["run_id"])
    assert changes_of(diff) == expected_changes(a, b)
    assert [s["stage"] for s in diff["stages"]] == list(stages.data_stages())
    for s in diff["stages"]:
        assert s["n_dropped_a"] == sum(f.startswith(s["stage"] + ":") for f in a.values())
        assert s["n_dropped_b"] == sum(f.startswith(s["stage"] + ":") for f in b.values())
    assert diff["rows"]["n_read_a"] == len(a) and diff["rows"]["n_read_b"] == len(b)
    assert diff["rows"]["n_fate_changed"] == sum(a[e] != b[e] for e in a.keys() & b.keys())
    listed = {r["example_id"]: r for r in diff["changed_rows"]}
    assert len(listed) == diff["rows"]["n_changed_rows"]
    assert {e for e in a.keys() | b.keys() if a.get(e) != b.get(e)} <= set(listed)
    assert all((r["in_a"], r["in_b"]) == (a.get(e, "absent"), b.get(e, "absent")) for e, r in listed.items())
    # the base run trained and evaluated, the data runs did not
    evals = diff["evals"]
    assert evals["measured_a"] and not evals["measured_b"] and evals["model_a"] and evals["model_b"] is None
    assert evals["note"] == f"not measured in run {runs[name]['run_id']}"
    assert {m["metric"] for m in evals["metrics"]} >= {"gated"} and all(m["value_b"] is None for m in evals["metrics"])


def test_a_stricter_toxicity_threshold_newly_drops_toxic_rows_at_filter(changed_runs, diffs):
    root, runs = changed_runs
    diff = diffs["recipe_field"]
    newly_toxic = newly_dropped_as(root, runs, "recipe_field", "filter", "toxic")
    by_stage = {s["stage"]: s for s in diff["stages"]}
    assert len(newly_toxic) >= 10  # the demo data holds rows scored between 0.3 and the default
    assert by_stage["filter"]["n_newly_dropped"] == len(newly_toxic)
    assert by_stage["filter"]["n_newly_kept"] == 0
    assert {c["in_b"] for c in by_stage["filter"]["changes"]} == {"filter: toxic"}
    assert {c["change"] for c in by_stage["filter"]["changes"]} == {"newly_dropped"}
    assert all(not by_stage[s]["changes"] for s in UPSTREAM_OF_FILTER)
    assert diff["rows"]["n_text_changed"] == diff["rows"]["n_added"] == diff["rows"]["n_removed"] == 0
    assert {r["example_id"] for r in diff["changed_rows"] if r["in_b"] == "filter: toxic"} == newly_toxic
    # the mixture holds its shares, from fewer rows to choose from; the recomputed mix writes every
    # shard again, and each shard that held a newly toxic row holds other rows now
    assert [m["category"] for m in diff["mixture"]] == sorted(m["category"] for m in runs["base"]["mixture"])
    assert all(m["target_share_a"] == m["target_share_b"] for m in diff["mixture"])
    with catalog(root) as con:
        shards_a = shard_contents(con, runs["base"]["run_id"])
        shards_b = shard_contents(con, runs["recipe_field"]["run_id"])
    assert diff["shards"] == expected_shards(shards_a, shards_b)
    assert diff["shards"]["changed"] and diff["shards"]["n_unchanged"]
    assert all(s["rows_a"] is not None and s["rows_b"] is not None for s in diff["shards"]["changed"])
    held_toxic = {name for name, (*_, rows) in shards_a.items() if any(e in newly_toxic for e in rows)}
    assert held_toxic and held_toxic <= {s["shard"] for s in diff["shards"]["changed"]}


def test_a_source_edit_shows_the_edited_row_with_both_source_lines(changed_runs, diffs):
    root, runs = changed_runs
    diff = diffs["source_edit"]
    edited = [r for r in diff["changed_rows"] if r["text_changed"]]
    assert diff["rows"]["n_text_changed"] == len(edited) == 1
    row = edited[0]
    with catalog(root) as con:
        (first_row,) = con.execute("SELECT example_id FROM example_versions WHERE source = 'openai_sample' "
                                   "AND source_row = 1").fetchone()
    assert row["example_id"] == first_row
    assert (row["source"], row["source_uri"], row["source_row"]) == ("openai_sample", "data/samples/openai.jsonl", 1)
    added = " This sentence was added by an editor."
    assert added not in row["source_line_a"] and added in row["source_line_b"]
    pristine = (root / "data" / "samples" / "openai.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(row["source_line_a"]) == json.loads(pristine)
    assert row["source_line_b"].replace(added, "") == row["source_line_a"]
    # the edited row stays valid and clean: nothing changes before score (which ranks rows
    # against each other, so a changed score can move another row across the cut)
    assert all(not s["changes"] for s in diff["stages"] if s["stage"] in (*UPSTREAM_OF_FILTER, "filter"))


def test_a_code_edit_newly_drops_short_responses_at_filter(changed_runs, diffs):
    root, runs = changed_runs
    diff = diffs["code_edit"]
    newly_short = newly_dropped_as(root, runs, "code_edit", "filter", "too_short_response")
    by_stage = {s["stage"]: s for s in diff["stages"]}
    assert newly_short and by_stage["filter"]["n_newly_dropped"] == len(newly_short)
    assert {c["in_b"] for c in by_stage["filter"]["changes"]} == {"filter: too_short_response"}
    assert ("newly_dropped", "kept") in {(c["change"], c["in_a"]) for c in by_stage["filter"]["changes"]}
    assert all(not by_stage[s]["changes"] for s in UPSTREAM_OF_FILTER)
    assert diff["rows"]["n_text_changed"] == 0


def test_the_cli_takes_prefixes_and_writes_json_and_csv(changed_runs, diffs):
    root, runs = changed_runs
    warehouse = str(root / "data" / "warehouse")
    a, b = runs["base"]["run_id"][:8], runs["code_edit"]["run_id"][:8]
    cli = CliRunner()
    out = cli.invoke(app, ["diff", a, b, "--format", "json", "--rows", "--limit", "1000", "--warehouse", warehouse])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == json.loads(json.dumps(diffs["code_edit"], default=str))
    out = cli.invoke(app, ["diff", a, b, "--format", "csv", "--warehouse", warehouse])
    assert out.exit_code == 0, out.output
    lines = list(csv.reader(io.StringIO(out.stdout)))
    assert lines[0] == ["stage", "change", "in A", "in B", "rows"]
    assert Counter({tuple(r[:4]): int(r[4]) for r in lines[1:]}) == changes_of(diffs["code_edit"])
    out = cli.invoke(app, ["diff", a, b, "--format", "csv", "--rows", "--limit", "3", "--warehouse", warehouse])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["example_id"] for r in rows] == [r["example_id"] for r in diffs["code_edit"]["changed_rows"][:3]]
    out = cli.invoke(app, ["diff", a, b, "--rows", "--limit", "2", "--warehouse", warehouse])
    assert out.exit_code == 0, out.output
    assert "too_short_response" in out.stdout and "changed rows (at most 2)" in out.stdout
    assert f"not measured in run {runs['code_edit']['run_id']}" in " ".join(out.stdout.split())
    out = cli.invoke(app, ["diff", a, "ffffffffff", "--warehouse", warehouse])
    assert out.exit_code == 1 and "no run 'ffffffffff' in the catalog" in " ".join(out.stdout.split())


def test_each_run_publishes_its_diff_against_the_previous_completed_run(changed_runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    _root, runs = changed_runs
    with get_client(sync_client=True) as client:
        published = {name: client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sftflow-run-diff"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run["flow_run_id"]])))
            for name, run in runs.items()}
    assert all(len(artifacts) == 1 for artifacts in published.values()), published
    page = {name: artifacts[0].data for name, artifacts in published.items()}
    assert "No earlier completed run of recipe `demo`" in page["base"]
    assert f"Against `{runs['base']['run_id']}`" in page["recipe_field"]
    assert "| filter | newly_dropped | kept | filter: toxic |" in page["recipe_field"]
    # each run against the one before it, not against the first
    assert f"Against `{runs['recipe_field']['run_id']}`" in page["source_edit"]
    assert "1 with other text" in page["source_edit"] and "row 1: " in page["source_edit"]
    assert "(text edited)" in page["source_edit"]  # edited rows come first
    assert f"Against `{runs['source_edit']['run_id']}`" in page["code_edit"]
    assert "filter: too_short_response" in page["code_edit"]


def test_the_changed_runs_leave_no_edit_behind(changed_runs):
    import sftflow.tasks.filters as filters
    from sftflow.tasks.core import cache_keys

    root, _runs = changed_runs
    assert filters.decide.__qualname__ == "decide"
    assert cache_keys._module_file.__qualname__ == "_module_file"
    repo = Path(__file__).resolve().parents[2]
    for path in ("data/samples/openai.jsonl", "deployments/recipes/demo.yaml"):
        assert (root / path).read_bytes() == (repo / path).read_bytes(), path
