"""Orchestration overhead: an unchanged re-run against the cold run, measured as a user runs it.

Both runs are whole `sftflow run RECIPE` commands (process start, imports, planning, Prefect,
catalog writes, summary), timed with a wall clock, on a fresh copy of the project's samples:

- `served`: against a Prefect server already running on loopback (`sftflow ui`), the set-up
  docs/README describe for a team; runs report to it.
- `ephemeral`: with no server, so every command starts Prefect's temporary server first.

Prints `RATIO unchanged_rerun_vs_cold_<mode> <measured> 0.05 <pass|fail>` and the Prefect
overhead of the cold run (flow wall time minus the stages' own compute seconds, over the cold
command's wall time), and writes build/bench/orchestration.json (bench/common.py).

    .venv/bin/python bench/orchestration.py [--quick] [--recipe deployments/recipes/demo.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SFTFLOW, Ratio, report, timed_command

GOAL_RERUN = 0.05
GOAL_OVERHEAD = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_project(parent: Path) -> Path:
    root = parent / "project"
    shutil.copytree(REPO / "data" / "samples", root / "data" / "samples")
    shutil.copytree(REPO / "deployments" / "recipes", root / "deployments" / "recipes")
    return root


def timed_run(root: Path, recipe: str, overrides: list[str], env: dict[str, str]) -> float:
    overrides_args = [a for o in overrides for a in ("--set", o)]
    return timed_command(SFTFLOW + ["run", recipe, "--root", str(root)] + overrides_args, root, env)


def stage_seconds(root: Path) -> dict[str, float]:
    """Per run: the flow's wall time and the stages' own compute seconds (from the manifests)."""
    from sftflow.tasks.core.catalog import connect_readonly

    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        runs = con.execute("SELECT run_id, epoch(finished_at - started_at) FROM runs ORDER BY started_at").fetchall()
        compute = con.execute(
            """SELECT sum(CAST(json_extract(a.stats, '$.compute_seconds') AS DOUBLE)) FROM stage_runs sr
               JOIN artifacts a ON a.artifact_id = sr.key WHERE sr.run_id = ? AND NOT sr.cache_hit""",
            [runs[0][0]]).fetchone()[0]
    return {"cold_flow_s": runs[0][1], "cold_compute_s": compute or 0.0, "warm_flow_s": runs[-1][1]}


def measure(mode: str, recipe: str, overrides: list[str], workdir: Path) -> dict:
    root = new_project(workdir / mode)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(workdir / mode / "prefect-home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    server = None
    if mode == "served":
        port = free_port()
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        server = subprocess.Popen(SFTFLOW + ["ui", "--port", str(port), "--warehouse", str(workdir / mode / "ui")],
                                  cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from sftflow.flows.operate import server_is_up

        deadline = time.monotonic() + 120
        while not server_is_up(env["PREFECT_API_URL"]):
            if time.monotonic() > deadline:
                server.kill()
                sys.exit("the Prefect server did not start within 120 s")
            time.sleep(0.5)
    try:
        cold = timed_run(root, recipe, overrides, env)
        warm = timed_run(root, recipe, overrides, env)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    flows = stage_seconds(root)
    return {"mode": mode, "cold_s": round(cold, 2), "warm_s": round(warm, 2), "ratio": round(warm / cold, 4),
            "orchestration_overhead_share": round((flows["cold_flow_s"] - flows["cold_compute_s"]) / cold, 4),
            **{k: round(v, 2) for k, v in flows.items()}}


QUICK_TRAIN = ["train.max_steps=10", "train.tiny.hidden_size=64", "train.tiny.num_hidden_layers=2",
               "train.tiny.intermediate_size=128", "eval.max_new_tokens=4", "eval.max_general_texts=8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="deployments/recipes/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--modes", default="served,ephemeral")
    parser.add_argument("--quick", action="store_true", help="a 10-step training run instead of the recipe's")
    args = parser.parse_args()
    overrides = [*(QUICK_TRAIN if args.quick else []), *args.overrides]
    results, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="sftflow-bench-") as tmp:
        for mode in args.modes.split(","):
            result = measure(mode, args.recipe, overrides, Path(tmp))
            results.append(result)
            print(f"{mode}: cold {result['cold_s']} s, unchanged re-run {result['warm_s']} s "
                  f"(flow {result['warm_flow_s']} s); cold flow {result['cold_flow_s']} s of which stage compute "
                  f"{result['cold_compute_s']} s", flush=True)
            ratios += [
                Ratio(f"unchanged_rerun_vs_cold_{mode}", result["ratio"], GOAL_RERUN, higher_is_better=False,
                      note=f"{mode}: whole `sftflow run` commands, cold {result['cold_s']} s vs unchanged "
                           f"{result['warm_s']} s"),
                Ratio(f"orchestration_overhead_of_cold_{mode}", result["orchestration_overhead_share"], GOAL_OVERHEAD,
                      higher_is_better=False,
                      note=f"{mode}: (flow wall {result['cold_flow_s']} s - stage compute {result['cold_compute_s']} s)"
                           f" / cold command {result['cold_s']} s"),
            ]
    report("orchestration", ratios, {"recipe": args.recipe, "overrides": overrides, "results": results},
           quick=args.quick, libraries=("prefect", "duckdb"))


if __name__ == "__main__":
    main()
