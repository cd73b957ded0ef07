"""Scale: N synthetic conversations through the data stages, peak memory and rows/s per stage.

The whole command a user runs, `sftflow run RECIPE --only data`, in a fresh project whose one
source is a JSONL file of N OpenAI-format conversations (1,000,000 by default; 50,000 with
--quick), generated once with a fixed seed and kept under build/bench-data/. The rows are
varied so every stage has work: 1-2 user/assistant exchanges of 5-60 and 20-150 words drawn from
the 20,000 most frequent words of ../shared/data's C4 and Alpaca samples, by frequency; about 2% exact copies and 2% one-word edits of earlier rows (dedup), 0.5%
broken rows (ingest and normalize quarantine them), 1% with a very short answer (length filter).

The recipe (written next to the data) runs normalize's and filter's parts on 2 local processes
(`runner: processes`, one per core) and uses the offline scorers: profanity-check for toxicity
on assistant turns, the MiniLM tokenizer for lengths. Reward scoring is off (`score.enabled:
false`): the offline MiniLM relevance scorer embeds every row, hours at this size on 2 cores;
its rows/s at small sizes is in the demo's stage table. Mix keeps every available row.

Peak memory is sampled every 0.1 s from /proc over the whole process tree of the command (the
flow process and the temporary Prefect server it starts), summing RSS; the flow process's own
high-water mark (VmHWM) is reported beside it. The samples are also cut at each stage's commit
time (its artifact's created_at) to report the peak of the tree and of the flow process while each
stage ran. Goal: the tree's peak <= 4 GiB. Rows/s per stage
come from the catalog's stage_runs; the ledger check is the one the tests use: every stage's
n_in = kept + dropped, and every row read is in a shard or has a drop decision.

    .venv/bin/python bench/scale.py [--quick] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO, Ratio, report

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GOAL_PEAK_GIB = 4.0
GOAL_MINUTES_PER_MILLION = 6.0  # the whole `--only data` command, per 1,000,000 conversations
GOAL_FILTER_ROWS_PER_S = 10_000
DATA_DIR = REPO / "build" / "bench-data"
SEED = 12  # the data layout changed: a new seed names a new cached file
VOCABULARY = 20_000
SHARED_TEXT = (REPO.parent / "shared" / "data" / "c4_demo.jsonl", REPO.parent / "shared" / "data" / "alpaca_en_demo.json")
RECIPE = """\
name: scale
description: bench/scale.py - synthetic conversations through the data stages.
sources:
  - {{name: synthetic, path: {source}, format: openai, category: auto, origin: synthetic, license: CC0-1.0}}
filters:
  length: {{min_response_tokens: 5, max_total_tokens: 4096}}
  toxicity: {{backend: profanity-check, threshold: 0.5, roles: [assistant]}}
score: {{enabled: false}}
runner: {{kind: processes, workers: 2}}
"""


# ------------------------------------------------------------------------------------ data --
def vocabulary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(words, sampling weights): English words with their frequencies in ../shared/data's C4 and
    Alpaca samples when present (tokenizers then see real words), else random letter strings
    with Zipf-like weights."""
    counts: Counter[str] = Counter()
    for path in SHARED_TEXT:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").replace("\\n", " ")  # JSON-escaped line ends
            counts.update(re.findall(r"[A-Za-z]+(?:'[a-z]+)?", text))
    if len(counts) >= 5_000:
        common = counts.most_common(VOCABULARY)
        words = np.array([w for w, _ in common])
        weights = np.array([c for _, c in common], dtype=np.float64)
    else:
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        words = np.array(sorted({"".join(rng.choice(letters, size=int(rng.integers(2, 10))))
                                 for _ in range(VOCABULARY)}))
        weights = 1.0 / np.arange(1, len(words) + 1) ** 0.9
    return words, weights / weights.sum()


def generate(path: Path, n_rows: int) -> None:
    """Write the synthetic JSONL (a temporary name first: an interrupted run leaves no half file)."""
    rng = np.random.default_rng(SEED)
    words, weights = vocabulary(rng)
    partial = path.with_suffix(".partial")
    written: list[str] = []  # recent rows, for copies and edits
    with partial.open("w", encoding="utf-8") as out:
        for start in range(0, n_rows, 10_000):
            n = min(10_000, n_rows - start)
            kinds = rng.random(n)
            pool = rng.choice(len(words), size=n * 700, p=weights)
            used = 0
            for k in range(n):
                if kinds[k] < 0.02 and written:  # an exact copy of a recent row
                    line = written[int(rng.integers(len(written)))]
                elif kinds[k] < 0.04 and written:  # the same row with one word changed
                    line = written[int(rng.integers(len(written)))].replace(" ", " x", 1)
                elif kinds[k] < 0.045:  # broken: no assistant answer, or not JSON at all
                    line = '{"messages": [{"role": "user", "content": "hello?"}]}' if kinds[k] < 0.0425 else "{oops"
                else:
                    turns = []
                    for _ in range(int(rng.integers(1, 3))):
                        n_user = int(rng.integers(5, 61))
                        n_assistant = 3 if kinds[k] < 0.055 else int(rng.integers(20, 151))
                        user = " ".join(words[pool[used : used + n_user]])
                        used += n_user
                        assistant = " ".join(words[pool[used : used + n_assistant]])
                        used += n_assistant
                        turns += [{"role": "user", "content": user.capitalize() + "?"},
                                  {"role": "assistant", "content": assistant.capitalize() + "."}]
                    line = json.dumps({"messages": turns})
                    if len(written) < 5_000:
                        written.append(line)
                    else:
                        written[int(rng.integers(5_000))] = line
                out.write(line + "\n")
                if used > len(pool) - 1_300:  # refill the word pool
                    pool, used = rng.choice(len(words), size=n * 700, p=weights), 0
    partial.replace(path)


# ---------------------------------------------------------------------------------- memory --
class TreeMemory:
    """Peak summed RSS of a process and its descendants, sampled from /proc."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes = 0
        self.root_hwm_bytes = 0
        self.samples: list[tuple[float, int, int]] = []  # (epoch seconds, tree RSS, flow process RSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def peaks_between(self, start_s: float, end_s: float) -> tuple[int, int]:
        """(tree, flow process) peak RSS bytes sampled in (start_s, end_s]."""
        window = [(tree, root) for t, tree, root in self.samples if start_s < t <= end_s]
        return max((tree for tree, _ in window), default=0), max((root for _, root in window), default=0)

    def _children(self) -> dict[int, list[int]]:
        tree: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                tree.setdefault(parent, []).append(int(entry.name))
        return tree

    @staticmethod
    def _status_kib(pid: int, field: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            tree, todo, total = self._children(), [self.pid], 0
            while todo:
                pid = todo.pop()
                total += self._status_kib(pid, "VmRSS") * 1024
                todo += tree.get(pid, [])
            self.peak_bytes = max(self.peak_bytes, total)
            self.samples.append((time.time(), total, self._status_kib(self.pid, "VmRSS") * 1024))
            self.root_hwm_bytes = max(self.root_hwm_bytes, self._status_kib(self.pid, "VmHWM") * 1024)
            self._stop.wait(self.interval_s)


# -------------------------------------------------------------------------------- the run --
def ledger(catalog: Path, run_id: str) -> dict[str, Any]:
    from sftflow.tasks.core.audit import UNACCOUNTED_ROWS_SQL
    from sftflow.tasks.core.catalog import connect_readonly

    with connect_readonly(catalog) as con:
        rows = con.execute("SELECT stage, n_in, n_kept, n_dropped FROM ledger_by_run l JOIN stage_order o "
                           "USING (stage) WHERE run_id = ? ORDER BY ordinal", [run_id]).fetchall()
        lost = con.execute(UNACCOUNTED_ROWS_SQL, [run_id]).fetchone()[0]
        stages = con.execute("SELECT stage, label, n_in, n_out, seconds, cache_hit FROM stage_runs sr "
                             "JOIN stage_order o USING (stage) WHERE run_id = ? ORDER BY ordinal, label",
                             [run_id]).fetchall()
        # When each stage's last artifact was committed (second precision): the memory timeline
        # is cut at these instants to attribute its peaks to stages.
        ends = con.execute("SELECT stage, max(epoch(created_at)) FROM artifacts JOIN stage_order o USING (stage) "
                           "WHERE run_id = ? GROUP BY stage, ordinal ORDER BY ordinal", [run_id]).fetchall()
    return {
        "by_stage": [dict(zip(("stage", "n_in", "n_kept", "n_dropped"), r)) for r in rows],
        "balanced": all(n_in == kept + dropped for _, n_in, kept, dropped in rows) and lost == 0,
        "rows_lost": lost,
        "stage_ends": [(stage, float(end)) for stage, end in ends],
        "stages": [{"stage": s, "label": label, "n_in": n_in, "n_out": n_out, "seconds": round(sec, 2),
                    "rows_per_s": round(n_in / sec) if sec else None, "cache_hit": hit}
                   for s, label, n_in, n_out, sec, hit in stages],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50,000 conversations instead of 1,000,000")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    n_rows = args.rows or (50_000 if args.quick else 1_000_000)

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    source = DATA_DIR / f"scale-{n_rows}-seed{SEED}.jsonl"
    if not source.exists():
        started = time.perf_counter()
        generate(source, n_rows)
        print(f"generated {source.name} ({source.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - started:.0f}s", flush=True)

    with tempfile.TemporaryDirectory(prefix="sftflow-bench-scale-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        os.symlink(source, root / "data" / "scale.jsonl")
        (root / "scale.yaml").write_text(RECIPE.format(source="data/scale.jsonl"), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(SFTFLOW_ROOT=str(root), SFTFLOW_DATA_DIRS=str(DATA_DIR), PREFECT_HOME=str(root / "prefect-home"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
        command = [sys.executable, "-m", "sftflow.flows.cli", "run", "scale.yaml", "--only", "data"]
        started, started_epoch = time.perf_counter(), time.time()
        process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        with TreeMemory(process.pid) as memory:
            output, _ = process.communicate()
        wall = time.perf_counter() - started
        if process.returncode != 0:
            print(output[-4000:])
            sys.exit(f"sftflow run failed with exit code {process.returncode}")
        catalog = root / "data" / "warehouse" / "catalog.duckdb"
        from sftflow.tasks.core.catalog import connect_readonly

        with connect_readonly(catalog) as con:
            run_id = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        checked = ledger(catalog, run_id)
        shutil.rmtree(root / "data" / "warehouse", ignore_errors=True)

    peak_gib = memory.peak_bytes / 2**30
    # Peak tree RSS while each stage ran: from the previous stage's commit (or the start) to this
    # stage's commit; "finish" is the catalog's last writes and the server's shutdown.
    peaks, previous = {}, started_epoch
    for stage, end in checked.pop("stage_ends"):
        peaks[stage] = memory.peaks_between(previous, end + 1.0)
        previous = end + 1.0
    peaks["finish"] = memory.peaks_between(previous, float("inf"))
    for stage in checked["stages"]:
        stage["peak_rss_tree_bytes"], stage["peak_rss_flow_process_bytes"] = peaks.get(stage["stage"], (None, None))
    for stage in checked["stages"]:
        print(f"  {stage['stage']:<9} {stage['label']:<10} in {stage['n_in']:>8}  out {stage['n_out']:>8}  "
              f"{stage['seconds']:>8.1f}s  {stage['rows_per_s'] or 0:>8} rows/s  "
              f"peak tree {(stage['peak_rss_tree_bytes'] or 0) / 2**30:.2f} GiB, flow process "
              f"{(stage['peak_rss_flow_process_bytes'] or 0) / 2**30:.2f} GiB", flush=True)
    print(f"  wall {wall:.0f}s, peak RSS (process tree) {peak_gib:.2f} GiB, flow process VmHWM "
          f"{memory.root_hwm_bytes / 2**30:.2f} GiB, ledger balanced: {checked['balanced']}", flush=True)
    filter_stage = next(stage for stage in checked["stages"] if stage["stage"] == "filter")
    ratios = [
        Ratio("scale_peak_rss_gib", peak_gib, GOAL_PEAK_GIB, higher_is_better=False,
              note=f"{n_rows:,} conversations, `sftflow run --only data`, whole process tree, {wall:.0f}s wall"),
        Ratio("scale_minutes_per_million_rows", wall / 60 * 1_000_000 / n_rows, GOAL_MINUTES_PER_MILLION,
              higher_is_better=False,
              note=f"the whole command's wall time per 1,000,000 conversations: {wall:.0f}s for {n_rows:,}"
                   + ("" if n_rows == 1_000_000 else " (scaled linearly: fixed start-up costs weigh more here)")),
        Ratio("scale_filter_rows_per_s", float(filter_stage["rows_per_s"] or 0), GOAL_FILTER_ROWS_PER_S,
              note=f"the filter stage's rows in / its seconds ({filter_stage['seconds']:.1f}s for "
                   f"{filter_stage['n_in']:,} rows; offline backends: MiniLM token counts, windowed "
                   "profanity-check, decontamination; 2 worker processes)"),
        Ratio("scale_ledger_balanced", float(checked["balanced"]), 1.0,
              note=f"n_in = kept + dropped at every stage; rows read but neither sharded nor dropped: "
                   f"{checked['rows_lost']}"),
    ]
    details = {"n_rows": n_rows, "source_bytes": source.stat().st_size, "wall_seconds": round(wall, 1),
               "peak_rss_tree_bytes": memory.peak_bytes, "peak_rss_tree_bytes_after_mix": peaks["finish"][0],
               "flow_process_vmhwm_bytes": memory.root_hwm_bytes,
               "command": " ".join(command[2:]), "recipe": RECIPE.format(source="data/scale.jsonl"), **checked}
    report("scale", ratios, details, quick=args.quick, libraries=("pyarrow", "duckdb", "prefect", "rensa", "tokenizers",
                                                                   "alt-profanity-check"))


if __name__ == "__main__":
    main()
