"""The `sftflow` command line: run a recipe, and ask the catalog questions in SQL."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="sftflow: raw instruction data in, audited SFT shards (and models) out.")
console = Console()


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. deployments/recipes/demo.yaml"),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: dotted.key=value (repeatable)."),
    only: str = typer.Option("all", "--only", help="How far to run: data (to mix) | train | all (to evaluate)."),
    root: Optional[Path] = typer.Option(None, help="Project root (default: current folder)."),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ROOT/data/warehouse)."),
) -> None:
    """Run the pipeline on RECIPE; every stage is cached, every row's fate lands in the catalog."""
    from tasks.core.recipe import RecipeError, load_recipe
    from tasks.core.workspace import PathNotAllowed, Workspace

    if only == "eval":
        only = "all"
    if only not in ("all", "data", "train"):
        raise typer.BadParameter("--only takes data, train or all (eval is an alias of all)")
    try:
        # Fail fast, before Prefect starts: the recipe validates and every source path is allowed.
        ws = Workspace.from_env(root=root, warehouse=warehouse)
        checked = load_recipe(recipe.resolve(), list(set_))
        for source in checked.sources:
            if source.path:
                ws.resolve_input(source.path)
    except (RecipeError, PathNotAllowed) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    from flows.pipeline import sftflow_pipeline

    try:
        summary = sftflow_pipeline(
            recipe_path=str(recipe.resolve()), overrides=list(set_), only=only,
            root=str(root) if root else None, warehouse=str(warehouse) if warehouse else None,
        )
    except (RecipeError, PathNotAllowed, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    stages = Table(title=f"run {summary['run_id']} · recipe {summary['recipe']} · {summary['wall_seconds']} s")
    for col in ("stage", "source", "rows in", "rows out", "cache", "seconds"):
        stages.add_column(col, justify="right" if col not in ("stage", "source", "cache") else "left")
    for s in summary["stages"]:
        stages.add_row(s["stage"], s["label"] or "", str(s["n_in"]), str(s["n_out"]),
                       "hit" if s["cache_hit"] else "computed", f"{s['seconds']:.2f}")
    console.print(stages)
    ledger = Table(title="ledger (rows in = kept + dropped)")
    for col in ("stage", "in", "kept", "dropped"):
        ledger.add_column(col, justify="left" if col == "stage" else "right")
    for r in summary["ledger"]:
        ledger.add_row(r["stage"], str(r["n_in"]), str(r["n_kept"]), str(r["n_dropped"]))
    console.print(ledger)
    if summary["drop_reasons"]:
        reasons = Table(title="drops by reason")
        for col in ("stage", "reason", "rows"):
            reasons.add_column(col)
        for r in summary["drop_reasons"]:
            reasons.add_row(r["stage"], r["reason"], str(r["n"]))
        console.print(reasons)
    if summary["mixture"]:
        mixture = Table(title="realized mixture (train split)")
        for col in ("category", "target", "realized", "train rows", "unique", "eval rows"):
            mixture.add_column(col, justify="left" if col == "category" else "right")
        for m in summary["mixture"]:
            mixture.add_row(m["category"], f"{m['target_share']:.3f}", f"{m['realized_share']:.3f}",
                            str(m["n_rows"]), str(m["n_unique"]), str(m["n_eval"]))
        console.print(mixture)
    if summary.get("evals"):
        evals = Table(title="evaluation (tuned model; *_base = the model before training)")
        evals.add_column("metric")
        evals.add_column("value", justify="right")
        for m in summary["evals"]:
            evals.add_row(m["metric"], f"{m['value']:.4g}")
        console.print(evals)
        if summary.get("regressed"):
            console.print("[yellow]general perplexity regressed beyond eval.regression_tolerance[/yellow]")


@app.command()
def sql(
    query: str = typer.Argument(..., help="A read-only SQL query over the catalog."),
    format: str = typer.Option("table", "--format", help="table | csv | json"),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """Answer a question from the catalog; the database is opened read-only, without file access."""
    import duckdb

    from tasks.core.catalog import connect_readonly
    from tasks.core.workspace import Workspace

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
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
    else:
        table = Table(show_lines=False)
        for col in columns:
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
