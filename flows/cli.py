"""The `sftflow` command line: run a recipe, serve it, and (flows/cli_audit.py) plan a run and ask
the catalog questions."""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.table import Table

from sftflow.flows import cli_audit
from sftflow.flows.cli_audit import console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="sftflow: raw instruction data in, audited SFT shards (and models) out.")
BUSY_EXIT_CODE = 3  # another run holds the warehouse; nothing was written, try again later


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. deployments/recipes/demo.yaml"),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: dotted.key=value (repeatable)."),
    only: str = typer.Option("all", "--only", help="How far to run: data (to mix) | train | all (to evaluate)."),
    root: Optional[Path] = typer.Option(None, help="Project root (default: current folder)."),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ROOT/data/warehouse)."),
    wait_seconds: Optional[float] = typer.Option(
        None, "--wait-seconds", min=0,
        help="If another run holds the warehouse, wait up to this long for it (default: stop at once)."),
) -> None:
    """Run the pipeline on RECIPE; every stage is cached, every row's fate lands in the catalog."""
    from sftflow.tasks.core.locks import LOCK_WAIT_ENV, WorkspaceBusy
    from sftflow.tasks.core.recipe import RecipeError, load_recipe
    from sftflow.tasks.core.workspace import PathNotAllowed, Workspace

    if only == "eval":
        only = "all"
    if only not in ("all", "data", "train"):
        raise typer.BadParameter("--only takes data, train or all (eval is an alias of all)")
    try:
        # Fail fast, before Prefect starts: the recipe validates and every source path is allowed.
        ws = Workspace.from_env(root=root, warehouse=warehouse)
        recipe = ws.resolve_input(str(recipe.resolve()))  # recipes, like sources, stay in the allowed roots
        checked = load_recipe(recipe, list(set_))
        for source in checked.sources:
            if source.path:
                ws.resolve_input(source.path)
    except (RecipeError, PathNotAllowed) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    from sftflow.flows.operate import (
        TemporaryServer, ephemeral_startup_timeout_s, history_database_env, running_local_server)

    api_url = running_local_server()
    temporary = None
    if api_url:
        # Report to the `sftflow ui` server that is up (set before Prefect is imported).
        os.environ["PREFECT_API_URL"] = api_url
        console.print(f"reporting to the Prefect server at {api_url}")
    elif not os.environ.get("PREFECT_API_URL"):
        # The temporary server, and Prefect's own if it falls back to that, records the run in
        # the warehouse's database, where `sftflow ui` shows it later. Set before Prefect is
        # imported: it loads its process-wide settings, which its own server inherits, at import.
        os.environ.update(history_database_env(ws.warehouse))
        temporary = TemporaryServer()  # comes up while the pipeline is imported below
        # Stopped at exit, after Prefect's own exit hooks (registered later, so run earlier)
        # have sent the run's last logs and events to it.
        atexit.register(temporary.stop)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(ephemeral_startup_timeout_s())))

    if wait_seconds is not None:
        os.environ[LOCK_WAIT_ENV] = str(wait_seconds)  # read by the flow, wherever it runs
    from sftflow.flows.gate import GATED_EXIT_CODE, ModelGated

    try:
        from sftflow.flows.pipeline import sftflow_pipeline

        with _reporting_to(temporary):
            summary = sftflow_pipeline(
                recipe_path=str(recipe), overrides=list(set_), only=only,
                root=str(root) if root else None, warehouse=str(warehouse) if warehouse else None,
            )
    except WorkspaceBusy as exc:
        console.print(f"[red]busy:[/red] {exc}")
        raise typer.Exit(BUSY_EXIT_CODE) from None
    except ModelGated as exc:
        if exc.summary:
            print_summary(exc.summary, show_gate=False)  # the error below says it, with the model's place
        console.print(f"[red]gated:[/red] {exc}")
        raise typer.Exit(GATED_EXIT_CODE) from None
    except (RecipeError, PathNotAllowed, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    print_summary(summary)


@contextlib.contextmanager
def _reporting_to(temporary: Any) -> Iterator[None]:
    """Point Prefect at the run's early-started temporary server, when it is up and Prefect's
    settings (a profile may name a server) leave the run to a temporary server at all."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from sftflow.flows.operate import ephemeral_startup_timeout_s

    settings = get_current_settings()
    if temporary is None or settings.api.url or not settings.server.ephemeral.enabled:
        yield
        return
    if not temporary.wait_ready(ephemeral_startup_timeout_s()):
        console.print(f"[yellow]note:[/yellow] the early Prefect server {temporary.failure()}; "
                      "Prefect starts its own temporary server instead")
        temporary.stop()
        yield
        return
    # Child processes (part workers) read the environment; this process reads its settings, in
    # the run's context and, from threads that have none (the process pool's relay of its
    # workers' events and logs), in Prefect's process-wide settings: both are refreshed, or
    # those threads would start a second temporary server of their own.
    os.environ["PREFECT_API_URL"] = temporary.api_url
    refresh_global_settings_context()
    try:
        with temporary_settings(updates={PREFECT_API_URL: temporary.api_url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()


def print_summary(summary: dict[str, Any], show_gate: bool = True) -> None:
    stages = Table(title=f"run {summary['run_id']} · recipe {summary['recipe']} · {summary['wall_seconds']} s")
    for col in ("stage", "source", "rows in", "rows out", "cache", "seconds"):
        stages.add_column(col, justify="right" if col not in ("stage", "source", "cache") else "left")
    for s in summary["stages"]:
        stages.add_row(s["stage"], s["label"] or "", str(s["n_in"]), str(s["n_out"]),
                       "hit" if s["cache_hit"] else "computed", f"{s['seconds']:.2f}")
    console.print(stages)
    from sftflow.tasks.core.why import input_name

    computed = [s for s in summary["stages"] if s.get("why")]
    if len(computed) == len(summary["stages"]) > 1 and len({s["why"] for s in computed}) == 1:  # a first run
        console.print(f"why computed: {computed[0]['why']} (every stage computed)", markup=False, highlight=False,
                      soft_wrap=True)
    elif computed:
        console.print("why computed (the key inputs that changed since this recipe's last run):")
        for s in computed:  # no markup: `[source]` is text, not a style
            console.print(f"  {input_name(s['stage'], s['label'])}: {s['why']}",
                          markup=False, highlight=False, soft_wrap=True)
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
        for col in ("category", "target", "realized", "train rows", "unique", "eval rows", "outcome"):
            mixture.add_column(col, justify="left" if col in ("category", "outcome") else "right")
        for m in summary["mixture"]:
            # realized_share is in the targets' unit (tokens under mix.total_tokens); outcome says
            # whether the category held its share, was scaled down, filled, or short
            mixture.add_row(m["category"], f"{m['target_share']:.3f}", f"{m['realized_share']:.3f}",
                            str(m["n_rows"]), str(m["n_unique"]), str(m["n_eval"]), str(m.get("outcome", "")))
        console.print(mixture)
    if summary.get("evals"):
        from sftflow.flows.gate import gate_verdict, metric_text

        evals = Table(title="evaluation (tuned model; *_base = the model before training)")
        evals.add_column("metric")
        evals.add_column("value", justify="right")
        for m in summary["evals"]:
            evals.add_row(m["metric"], metric_text(m["value"]))
        console.print(evals)
        if not show_gate:
            return
        status, why = gate_verdict(summary.get("gate"))
        if status == "gated":
            console.print(f"[yellow]model gate: gated[/yellow] — {why}")
        elif status == "not_measured":
            console.print(f"[yellow]model gate: not measured[/yellow] ({why})")
        else:
            console.print(f"model gate: passed ({why})")


@app.command()
def ui(
    port: int = typer.Option(4200, help="Port on 127.0.0.1."),
    warehouse: Optional[Path] = typer.Option(None, help="Warehouse folder (default: ./data/warehouse)."),
) -> None:
    """Start the Prefect server and UI on loopback (SQLite database in WAREHOUSE/prefect/)."""
    from sftflow.flows.operate import local_api_url, ui_server_command
    from sftflow.tasks.core.workspace import Workspace

    ws = Workspace.from_env(warehouse=warehouse)
    command, env = ui_server_command(port, ws.warehouse)
    console.print(f"Prefect UI: http://127.0.0.1:{port}  (API {local_api_url(port)}); "
                  "`sftflow run` and `sftflow serve` report to it while it is up.")
    os.execvpe(command[0], command, env)


@app.command()
def serve(
    name: Optional[str] = typer.Option(None, help="Deployment name in deployments/prefect.yaml (default: the first)."),
    root: Optional[Path] = typer.Option(None, help="Project root (default: current folder)."),
    api_url: Optional[str] = typer.Option(None, help="Prefect API (default: PREFECT_API_URL, else `sftflow ui`'s)."),
) -> None:
    """Serve the nightly deployment from this process: same schedule and parameters as prefect.yaml."""
    from sftflow.flows.operate import local_api_url, serve as serve_deployment, server_is_up
    from sftflow.tasks.core.workspace import Workspace

    url = api_url or os.environ.get("PREFECT_API_URL") or local_api_url()
    if not server_is_up(url):
        console.print(f"[red]error:[/red] no Prefect server answers at {url}: start one with `sftflow ui` "
                      "(or `make ui`) in another terminal, or pass --api-url")
        raise typer.Exit(2)
    ws = Workspace.from_env(root=root)
    try:
        serve_deployment(ws.root, name, url)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


for _command in (cli_audit.plan, cli_audit.sql, cli_audit.explain, cli_audit.lineage, cli_audit.diff,
                 cli_audit.gc):
    app.command()(_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
