"""Score stage on a grown source: a cold run, then the same rows plus 1% new ones through the row memo.

The rows are demo-like: Alpaca conversations from ../shared/data/alpaca_en_demo.json, cycled with
a variant number appended to the instruction past the file's end, so every row is a distinct pair
(3,000 by default). The scorer is the offline embedding-relevance one (MiniLM) on this machine's
device. Each run is the whole stage as the flow runs it (`plan`, then `execute`: load the scorer,
read the parts, look up the memo, score, rank, write the artifact). Goal: the grown run takes at
most 15% of the cold one (`RATIO score_memo_grown_vs_cold`).

`--check` also runs the grown rows cold in a fresh warehouse and reports how many scores and
decisions differ from the incremental run: the embedding scorer's numbers depend on the batch a
pair is in, in their last float32 bits (docs/caching.md, "Row memo").

    .venv/bin/python bench/score_memo.py [--rows N] [--check] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from common import REPO, Ratio, report

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sftflow.tasks import score  # noqa: E402
from sftflow.tasks.core.artifacts import ArtifactStore  # noqa: E402
from sftflow.tasks.core.recipe import Recipe  # noqa: E402
from sftflow.tasks.core.records import RECORD_SCHEMA  # noqa: E402
from sftflow.tasks.core.stage import execute  # noqa: E402
from sftflow.tasks.core.workspace import Workspace  # noqa: E402

import pyarrow as pa  # noqa: E402

ALPACA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
GOAL_RATIO = 0.15
CATEGORIES = ("qa", "code", "writing", "math")


def rows(n: int) -> list[dict]:
    demo = json.loads(ALPACA.read_text(encoding="utf-8"))
    out = []
    for i in range(n):
        d = demo[i % len(demo)]
        prompt = "\n\n".join(p for p in (d["instruction"], d.get("input") or "") if p)
        if i >= len(demo):
            prompt += f" (variant {i // len(demo)})"
        out.append({"example_id": f"ex{i:06d}", "content_hash": f"h{i}", "source": "demo", "source_format": "alpaca",
                    "source_uri": str(ALPACA), "source_row": i, "category": CATEGORIES[i % len(CATEGORIES)],
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": d["output"]}]})
    return out


def run_stage(root: Path, records: list[dict]) -> tuple[float, object]:
    ws = Workspace(root=root, warehouse=root / "warehouse")
    writer = ArtifactStore(ws.artifacts_dir).writer("filter", f"rows-{len(records)}")
    writer.write_table("records-00000.parquet", pa.Table.from_pylist(records, schema=RECORD_SCHEMA))
    upstream = writer.commit(inputs=[], config_hash="c", code_hash="c", n_in=len(records), n_out=len(records),
                             stats={})
    recipe = Recipe.model_validate({"name": "bench", "sources": [{"name": "demo", "format": "alpaca",
                                                                  "path": str(ALPACA)}]})
    call = score.plan(recipe, [upstream], ws)
    started = time.perf_counter()
    manifest, hit = execute(call, score.score_stage.compute)
    assert not hit
    return time.perf_counter() - started, manifest


def decisions(manifest) -> list[dict]:
    return pq.read_table(manifest.file("decisions.parquet")).to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--check", action="store_true", help="also run the grown rows cold and compare")
    parser.add_argument("--quick", action="store_true", help="300 rows (make bench-quick)")
    args = parser.parse_args()
    if args.quick:
        args.rows = min(args.rows, 300)
    # imported before timing: in use, each run is a fresh process that imports it
    importlib.import_module("sentence_transformers")

    base = rows(args.rows)
    grown = rows(args.rows + args.rows // 100)
    with tempfile.TemporaryDirectory(prefix="sftflow-score-memo-") as tmp:
        cold_s, _ = run_stage(Path(tmp) / "nightly", base)
        grown_s, incremental = run_stage(Path(tmp) / "nightly", grown)
        details = {"rows": args.rows, "new_rows": len(grown) - len(base), "cold_seconds": round(cold_s, 2),
                   "grown_seconds": round(grown_s, 2), "n_scored": incremental.stats["n_scored"],
                   "n_reused": incremental.stats["n_reused"], "scorer": incremental.stats.get("scorer")}
        if args.check:
            _, cold_grown = run_stage(Path(tmp) / "cold", grown)
            ours, theirs = decisions(incremental), decisions(cold_grown)
            score_diffs = [abs(a["score"] - b["score"]) for a, b in zip(ours, theirs) if a["score"] != b["score"]]
            details.update({
                "check_scores_differing": len(score_diffs),
                "check_max_score_difference": max(score_diffs, default=0.0),
                "check_kept_differing": sum(a["kept"] != b["kept"] for a, b in zip(ours, theirs)),
                "check_decisions_identical": ours == theirs,
            })
    print(json.dumps(details, indent=2))
    ratio = Ratio("score_memo_grown_vs_cold", grown_s / cold_s, GOAL_RATIO, higher_is_better=False,
                  note=f"score stage, {args.rows} demo rows then +1%, embedding-relevance scorer")
    report("score_memo", [ratio], details, quick=args.rows < 3000,
           libraries=("sentence-transformers", "torch", "pyarrow"))


if __name__ == "__main__":
    main()
