"""The `sftflow` commands that read: what a run would compute (`plan`), and questions to the
catalog (`sql`, `explain`, `lineage`, `diff`), plus `gc` of row memos. Plain functions with
Typer annotations; flows/cli.py registers them on the app. Every catalog reader opens it
read-only, without file access.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()


def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. deployments/recipes/demo.yaml"),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: dotted.key=value (repeatable)."),
    only: str = typer.Option("all", "--only", help="How far a run would go: data | train | all."),
    format: str = typer.Option("table", "--format", help="table | csv | json"),
    root: Optional[Path] = typer.Option(None, help="Project root (default: current folder)."),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ROOT/data/warehouse)."),
) -> None:
    """What `sftflow run RECIPE` would compute and why (which key input changed), with its cost; runs nothing."""
    from sftflow.flows.plan import plan_run
    from sftflow.tasks.core.recipe import RecipeError
    from sftflow.tasks.core.workspace import PathNotAllowed

    only = "all" if only == "eval" else only  # as `sftflow run --only eval`
    if format not in ("table", "csv", "json") or only not in ("data", "train", "all"):
        raise typer.BadParameter("--format takes table, csv or json; --only takes data, train or all")
    try:
        planned = plan_run(recipe.resolve(), list(set_), only, root=root, warehouse=warehouse)  # type: ignore[arg-type]
    except (RecipeError, PathNotAllowed, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if format == "json":
        sys.stdout.write(json.dumps(planned, indent=2, default=str) + "\n")
        return
    columns = ["stage", "label", "status", "estimated_seconds", "why"]
    rows = [tuple(line[c] for c in columns) for line in planned["stages"]]
    if format == "csv":
        write_rows(columns, rows, format)
        return
    # One line per stage call, the reasons last and unwrapped: they are what the user reads.
    sys.stdout.write(f"{'stage':<10}{'source':<17}{'status':<30}{'est. s':>7}  why\n")
    for stage, label, status, seconds, why in rows:
        estimate = "" if seconds is None else f"{seconds:.1f}"
        sys.stdout.write(f"{stage:<10}{label:<17}{status:<30}{estimate:>7}  {why}\n".rstrip() + "\n")
    unknown = f" ({planned['n_without_estimate']} never computed before: no estimate)" \
        if planned["n_without_estimate"] else ""
    maybe = planned["n_if_input_changes"]
    sys.stdout.write(f"{planned['n_to_compute'] - maybe} of {len(planned['stages'])} stage calls compute, {maybe} more "
                     f"if their input changes: at most ~{planned['estimated_seconds']} s by earlier runs{unknown}\n")


def sql(
    query: str = typer.Argument(..., help="A read-only SQL query over the catalog."),
    format: str = typer.Option("table", "--format", help="table | csv | json"),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """Answer a question from the catalog; the database is opened read-only, without file access."""
    import duckdb

    from sftflow.tasks.core.catalog import connect_readonly
    from sftflow.tasks.core.workspace import Workspace

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter("--format takes table, csv or json")
    ws = Workspace.from_env(warehouse=warehouse)
    try:
        con = connect_readonly(ws.catalog_path)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        cursor = con.execute(query)
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        console.print(f"[red]query refused or failed:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        con.close()
    write_rows(columns, rows, format)


def write_rows(columns: list[str], rows: list[tuple], format: str) -> None:
    if format == "json":
        sys.stdout.write(json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=2) + "\n")
    elif format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")  # LF: output is piped into shell tools
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
    else:
        table = Table(show_lines=False)
        for col in columns:
            table.add_column(col, overflow="fold")
        for r in rows:  # Text, not markup: a value such as `[alpaca_sample]` is shown as it is
            table.add_row(*(Text("" if v is None else str(v)) for v in r))
        console.print(table)


def explain(
    example_id: str = typer.Argument(..., help="An example_id (or a unique prefix of 6+ characters)."),
    model: Optional[str] = typer.Option(None, "--model", help="Show the row as this model was trained on it "
                                        "(its own upstream artifacts), and only their decisions."),
    run: Optional[str] = typer.Option(None, "--run", help="Show the row as this run read it, and only its decisions."),
    format: str = typer.Option("table", "--format", help="table | json"),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """Why a row is (or is not) in the training data: its source line, normalized form, every decision."""
    from sftflow.tasks.core.artifacts import ArtifactStore
    from sftflow.tasks.core.audit import explain as explain_row

    ws, con = _audit_connection(warehouse, format)
    with con:
        report = _audit_call(lambda: explain_row(con, ArtifactStore(ws.artifacts_dir), example_id,
                                                 model_id=model, run_id=run))
    if format == "json":
        sys.stdout.write(json.dumps(report, default=str, indent=2, ensure_ascii=False) + "\n")
        return
    ex = report["example"]
    console.print(f"[bold]example {ex['example_id']}[/bold]  source {ex['source']} ({ex['source_format']}) "
                  f"{ex['source_uri']} row {ex['source_row']}  category {ex['category'] or '—'}")
    versions = report["versions"]
    as_of = report["as_of"]
    scope = (f"as model {as_of['model_id']} was trained on it" if as_of and "model_id" in as_of
             else f"as run {as_of['run_id']} read it" if as_of else "the newest")
    console.print(f"version {report['version']} of {len(versions)} ({scope}; ingest artifact {ex['artifact_id']})",
                  markup=False, highlight=False)
    console.print("[bold]source line[/bold]")
    console.print(report["raw"] if report["raw"] is not None else "—", markup=False, highlight=False)
    normalized = report["normalized"]
    console.print("[bold]normalized[/bold]")
    if normalized is None:
        console.print("never kept by normalize (see the decisions below)")
    elif normalized.get("messages") is None:
        console.print(normalized.get("missing", "—"))
    else:
        for m in normalized["messages"]:
            console.print(f"  {m['role']:>9}: {m['content']}", markup=False, highlight=False)
    write_rows(["stage", "kept", "reason", "score", "detail", "dup_of", "version", "run", "latest run"],
               [(d["stage"], d["kept"], d["reason"], d["score"],
                 json.dumps(d["detail"]) if isinstance(d["detail"], (dict, list)) else d["detail"],
                 d["dup_of"], d["version"], d["decided_in_run"], d["in_latest_run"]) for d in report["decisions"]],
               "table")
    if report["shards"]:
        write_rows(["shard", "split", "copies", "version", "latest run"],
                   [(s["shard_id"], s["split"], s["n_copies"], s["version"], s["in_latest_run"])
                    for s in report["shards"]], "table")
    if len(versions) > 1:  # the source was edited between runs: the row read differently
        write_rows(["version", "ingest artifact", "read by runs", "last read", "source line"],
                   [(v["version"], v["ingest_artifact_id"], ", ".join(v["runs"]), v["last_read"],
                     (v["raw"] or "")[:80]) for v in versions], "table")
    console.print(f"trained models: {', '.join(report['trained_models']) or '—'}")
    other = [m for m in report["models"] if not m["same_text"]]
    if other:
        console.print("trained on other text at this place: "
                      + ", ".join(f"{m['model_id']} (version {m['version']})" for m in other))


def lineage(
    model_id: str = typer.Argument(..., help="A model_id (or a unique prefix of 6+ characters)."),
    format: str = typer.Option("table", "--format", help="table | json"),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """What a model was trained on: upstream artifacts, sources, shard counts and every example id."""
    from sftflow.tasks.core.audit import lineage as model_lineage

    _ws, con = _audit_connection(warehouse, format)
    with con:
        report = _audit_call(lambda: model_lineage(con, model_id))
    if format == "json":
        sys.stdout.write(json.dumps(report, default=str, indent=2) + "\n")
        return
    m = report["model"]
    console.print(f"[bold]model {m['model_id']}[/bold]  base {m['base_model']}  method {m['method']}  "
                  f"run {m['run_id']}\n{m['path']}")
    write_rows(["stage", "artifact", "rows in", "rows out"],
               [(a["stage"], a["artifact_id"], a["n_in"], a["n_out"]) for a in report["upstream_artifacts"]],
               "table")
    write_rows(["source", "format", "path", "examples", "train rows"],
               [(s["source"], s["source_format"], s["source_uri"], s["n_examples"], s["n_train_rows"])
                for s in report["sources"]], "table")
    write_rows(["shard", "split", "category", "rows", "unique examples", "tokens"],
               [(s["shard_id"], s["split"], s["category"], s["n_rows"], s["n_unique_examples"], s["n_tokens"])
                for s in report["shards"]], "table")
    if report["dropped_by_train"]:
        write_rows(["dropped by train", "reason", "detail"],
                   [(d["example_id"], d["reason"], json.dumps(d["detail"]) if isinstance(d["detail"], dict)
                     else d["detail"]) for d in report["dropped_by_train"]], "table")
    console.print(f"[bold]{report['n_train_examples']} example ids trained on[/bold]")
    sys.stdout.write("\n".join(report["example_ids"]) + "\n")


def _audit_connection(warehouse: Optional[Path], format: str):
    from sftflow.tasks.core.catalog import connect_readonly
    from sftflow.tasks.core.workspace import Workspace

    if format not in ("table", "json"):
        raise typer.BadParameter("--format takes table or json")
    ws = Workspace.from_env(warehouse=warehouse)
    try:
        return ws, connect_readonly(ws.catalog_path)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _audit_call(call):
    from sftflow.tasks.core.audit import NotFound

    try:
        return call()
    except NotFound as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; remove nothing."),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """Prune the row memos no committed artifact references (artifacts themselves are never removed)."""
    from sftflow.tasks.core.locks import workspace_lock
    from sftflow.tasks.core.memo_gc import prune_memos
    from sftflow.tasks.core.workspace import Workspace

    ws = Workspace.from_env(warehouse=warehouse)
    with workspace_lock(ws.warehouse, command="gc"):  # no run adds to a memo meanwhile
        pruned = prune_memos(ws.warehouse, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path in pruned.folders + pruned.temporary_files:
        console.print(f"{verb} {path}")
    console.print(f"{verb} {len(pruned.folders)} memo folders and {len(pruned.temporary_files)} temporary files "
                  f"({pruned.bytes_freed / 2**20:.1f} MiB); kept {len(pruned.kept)} referenced memo folders")


def diff(
    run_a: str = typer.Argument(..., help="The run to compare from: a run_id or a unique prefix of 6+ characters."),
    run_b: str = typer.Argument(..., help="The run to compare to (the same)."),
    rows: bool = typer.Option(False, "--rows", help="Also list the changed example ids with their source lines."),
    limit: int = typer.Option(50, "--limit", min=0, help="With --rows: at most this many rows."),
    format: str = typer.Option("table", "--format",
                               help="table | csv (the changes per stage; with --rows the rows) | json (everything)"),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """What changed between two runs: rows newly dropped or kept per stage, mixture, shards, evals."""
    from sftflow.tasks.core.run_diff import diff_tables, run_diff

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter("--format takes table, csv or json")
    _ws, con = _audit_connection(warehouse, "table")  # the format (csv too) is checked above
    with con:
        report = _audit_call(lambda: run_diff(con, run_a, run_b, rows_limit=limit if rows else None))
    if format == "json":
        sys.stdout.write(json.dumps(report, default=str, indent=2, ensure_ascii=False) + "\n")
        return
    tables = diff_tables(report, compact=format == "table")
    if format == "csv":
        write_rows(*tables["rows" if rows else "changes"], "csv")
        return
    a, b, n = report["run_a"], report["run_b"], report["rows"]
    console.print(f"run {a['run_id']} ({a['recipe_name']}, {a['status']}) -> run {b['run_id']} ({b['recipe_name']}, "
                  f"{b['status']})\nrows read {n['n_read_a']} -> {n['n_read_b']}: {n['n_added']} added, "
                  f"{n['n_removed']} removed, {n['n_fate_changed']} with another fate, {n['n_text_changed']} "
                  f"with other text", markup=False, highlight=False)
    titles = {"stages": "rows dropped per stage", "changes": "changed rows by stage (fate in A -> fate in B)",
              "mixture": "mixture", "shards": f"shards changed ({report['shards']['n_unchanged']} unchanged)",
              "evals": "evaluation", "rows": f"changed rows (at most {limit})"}
    for name, title in titles.items():
        if tables.get(name, ([], []))[1]:
            console.print(f"[bold]{title}[/bold]")
            write_rows(*tables[name], "table")
    if report["evals"]["note"]:
        console.print(f"evaluation: {report['evals']['note']}", markup=False, highlight=False)
