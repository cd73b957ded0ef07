"""A nightly run over a grown source: whole `sftflow run` commands, cold, then the same source grown by 1%.

The project has one Alpaca source of demo-like rows (../shared/data/alpaca_en_demo.json, cycled
past the file's end with each instruction's variant answered by two other rows' answers joined,
so that every row is distinct and nearly all of them reach filter and score: a variant number
alone would leave near duplicates, which dedup drops before the stages with row memos;
3,000 rows, 600 with --quick) and the demo recipe's stages and models otherwise (auto categories,
MiniLM lengths, profanity-check, the demo's eval set, the offline MiniLM relevance scorer, the
builtin tiny Llama for 300 steps, evaluation). Run 1 is cold in a fresh warehouse. Then 1% new
rows are appended to the source file and run 2 runs in the same warehouse: every stage's key
changes (the source bytes did), so every stage runs again, and the row memos of filter and score
let those two measure only the new rows.

Both runs are whole commands (`sftflow run`, temporary Prefect server, imports included), once
`--only data` (ingest to mix) and once to the end (train and evaluate too, which depend on the
whole mix and re-run in full). Goals: the grown data run takes <= 30% of the cold one
(`RATIO incremental_data_run_grown_vs_cold`), and the score stage alone <= 15%
(`RATIO incremental_score_stage_grown_vs_cold`, from the stage's own seconds in the catalog). The
whole run to evaluate is reported beside it (`RATIO incremental_whole_run_grown_vs_cold`, same
goal): training 300 steps on the new mix is most of a grown run's time.

    .venv/bin/python bench/incremental.py [--quick] [--rows N] [--data-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from common import REPO, SFTFLOW, Ratio, report, timed_command

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ALPACA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
GOAL_RUN = 0.30
GOAL_SCORE = 0.15
GROWTH = 0.01


def alpaca_rows(start: int, stop: int) -> list[dict]:
    demo = json.loads(ALPACA.read_text(encoding="utf-8"))
    out = []
    for i in range(start, stop):
        d = dict(demo[i % len(demo)])
        variant = i // len(demo)
        if variant:
            # two other rows' answers, joined: no row shares most of its text with another one
            first, second = demo[(i + 97 * variant) % len(demo)], demo[(i + 389 * variant + 1) % len(demo)]
            d.update(instruction=f"{d['instruction']} (variant {variant})",
                     output=f"{first['output']}\n\n{second['output']}")
        out.append(d)
    return out


def new_project(parent: Path, n_rows: int) -> Path:
    root = parent / "project"
    shutil.copytree(REPO / "data" / "samples", root / "data" / "samples")
    (root / "data" / "grown.json").write_text(json.dumps(alpaca_rows(0, n_rows)), encoding="utf-8")
    recipe = yaml.safe_load((REPO / "deployments" / "recipes" / "demo.yaml").read_text(encoding="utf-8"))
    recipe["name"] = "grown"
    recipe["sources"] = [{"name": "grown", "path": "data/grown.json", "format": "alpaca", "category": "auto",
                          "origin": "synthetic", "license": "Apache-2.0"}]
    recipe["mix"] = {"eval_fraction": 0.05, "seed": 0}  # every kept row, whatever categories it has
    text = yaml.safe_dump(recipe, sort_keys=False)
    (root / "grown.yaml").write_text(text, encoding="utf-8")
    return root


def grow(root: Path, n_rows: int) -> int:
    path = root / "data" / "grown.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    n_new = max(1, round(n_rows * GROWTH))
    path.write_text(json.dumps(rows + alpaca_rows(n_rows, n_rows + n_new)), encoding="utf-8")
    return n_new


def timed_run(root: Path, only: str, env: dict[str, str]) -> float:
    return timed_command(SFTFLOW + ["run", "grown.yaml", "--root", str(root), "--only", only], root, env)


def last_run_stages(root: Path) -> dict[str, dict]:
    """The last run's stages: seconds, rows in, rows computed and reused (None without a memo)."""
    from sftflow.tasks.core.catalog import connect_readonly

    with connect_readonly(root / "data" / "warehouse" / "catalog.duckdb") as con:
        run_id = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        rows = con.execute(
            """SELECT sr.stage, sr.label, sr.seconds, sr.n_in, sr.cache_hit,
                      CAST(json_extract(a.stats, '$.n_reused') AS BIGINT)
               FROM stage_runs sr JOIN artifacts a ON a.artifact_id = sr.key WHERE sr.run_id = ?""",
            [run_id]).fetchall()
    return {f"{stage}{'/' + label if label else ''}": {
                "seconds": round(seconds, 2), "n_in": n_in, "cache_hit": hit,
                "rows_reused": reused, "rows_computed": None if reused is None else n_in - reused}
            for stage, label, seconds, n_in, hit, reused in rows}


def measure(workdir: Path, n_rows: int, only: str) -> dict:
    root = new_project(workdir / only, n_rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(workdir / only / "prefect-home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    cold_s = timed_run(root, only, env)
    cold = last_run_stages(root)
    n_new = grow(root, n_rows)
    grown_s = timed_run(root, only, env)
    grown = last_run_stages(root)
    return {"rows": n_rows, "new_rows": n_new, "cold_s": round(cold_s, 2), "grown_s": round(grown_s, 2),
            "cold_stages": cold, "grown_stages": grown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 rows instead of 3,000")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--data-only", action="store_true", help="skip the whole run to evaluate")
    args = parser.parse_args()
    n_rows = args.rows or (600 if args.quick else 3000)
    ratios, details = [], {}
    with tempfile.TemporaryDirectory(prefix="sftflow-incremental-") as tmp:
        runs = [("data", "incremental_data_run_grown_vs_cold")]
        if not args.data_only:
            runs.append(("all", "incremental_whole_run_grown_vs_cold"))
        for only, name in runs:
            found = measure(Path(tmp), n_rows, only)
            details[only] = found
            print(f"  --only {only}: cold {found['cold_s']:.1f} s, grown by {found['new_rows']} rows "
                  f"{found['grown_s']:.1f} s", flush=True)
            for stage, row in found["grown_stages"].items():
                cold_s = found["cold_stages"].get(stage, {}).get("seconds")
                print(f"    {stage:28s} cold {cold_s!s:>8} s  grown {row['seconds']:>8} s  "
                      f"computed {row['rows_computed']!s:>6}  reused {row['rows_reused']!s:>6}", flush=True)
            ratios.append(Ratio(name, found["grown_s"] / found["cold_s"], GOAL_RUN, higher_is_better=False,
                                note=f"{n_rows} rows grown by {found['new_rows']}: whole `sftflow run --only {only}` "
                                     f"commands, cold {found['cold_s']:.1f} s vs grown {found['grown_s']:.1f} s"))
            if only == "data":
                score_cold = found["cold_stages"]["score"]["seconds"]
                score_grown = found["grown_stages"]["score"]["seconds"]
                ratios.append(Ratio("incremental_score_stage_grown_vs_cold", score_grown / score_cold, GOAL_SCORE,
                                    higher_is_better=False,
                                    note=f"the score stage's own seconds: cold {score_cold:.1f} s vs grown "
                                         f"{score_grown:.1f} s (MiniLM relevance on CPU; "
                                         f"{found['cold_stages']['score']['n_in']:,} rows reached score cold)"))
    report("incremental", ratios, details, quick=args.quick,
           libraries=("prefect", "duckdb", "sentence-transformers", "torch"))


if __name__ == "__main__":
    main()
