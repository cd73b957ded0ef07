"""Orchestration overhead: an unchanged re-run against the cold run, measured as a user runs it.

Both runs are whole `sftflow run RECIPE` commands (process start, imports, planning, Prefect,
catalog writes, summary), timed with a wall clock, on a fresh copy of the project's samples:

- `served`: against a Prefect server already running on loopback (`sftflow ui`), the set-up
  docs/README describe for a team; runs report to it.
- `ephemeral`: with no server, so every command starts Prefect's temporary server first.

Prints `RATIO unchanged_rerun_vs_cold_<mode> <measured> 0.05 <pass|fail>` and the Prefect
overhead of the cold run (flow wall time minus the stages' own compute seconds, over the cold
command's wall time), and writes build/bench/orchestration.json.

    .venv/bin/python bench/orchestration.py [--recipe deployments/recipes/demo.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFTFLOW = [sys.executable, "-m", "flows.cli"]
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
    command = SFTFLOW + ["run", recipe, "--root", str(root)] + [a for o in overrides for a in ("--set", o)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def stage_seconds(root: Path) -> dict[str, float]:
    """Per run: the flow's wall time and the stages' own compute seconds (from the manifests)."""
    from tasks.core.catalog import connect_readonly

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
        from flows.operate import server_is_up

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="deployments/recipes/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--modes", default="served,ephemeral")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="sftflow-bench-") as tmp:
        for mode in args.modes.split(","):
            result = measure(mode, args.recipe, args.overrides, Path(tmp))
            results.append(result)
            print(f"{mode}: cold {result['cold_s']} s, unchanged re-run {result['warm_s']} s "
                  f"(flow {result['warm_flow_s']} s); cold flow {result['cold_flow_s']} s of which stage compute "
                  f"{result['cold_compute_s']} s", flush=True)
            print(f"RATIO unchanged_rerun_vs_cold_{mode} {result['ratio']:.4f} {GOAL_RERUN} "
                  f"{'pass' if result['ratio'] <= GOAL_RERUN else 'fail'}", flush=True)
            print(f"RATIO orchestration_overhead_of_cold_{mode} {result['orchestration_overhead_share']:.4f} {GOAL_OVERHEAD} "
                  f"{'pass' if result['orchestration_overhead_share'] <= GOAL_OVERHEAD else 'fail'}", flush=True)
    out = REPO / "build" / "bench" / "orchestration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "recipe": args.recipe, "overrides": args.overrides, "results": results}, indent=2))


if __name__ == "__main__":
    main()
