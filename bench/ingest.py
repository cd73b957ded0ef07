"""Ingest + normalize throughput: sftflow's two first stages against `datasets.load_dataset` + `.map`.

Data. N Alpaca rows (instruction / input / output) resampled from the real-world
alpaca_en_demo.json in ../shared/data (a small built-in set of rows when it is absent), each
perturbed so that no two rows are alike while lengths stay realistic: a few words swapped with
words of other rows, and the kinds of mess normalization exists for (leading/trailing spaces,
Windows line ends, decomposed accents, a whitespace-only input). A small seeded share of rows
must be dropped by either side: an output that is blank, or null, or holds a chat-template token.
The same rows are written as JSON Lines and as a JSON array (the layout of the demo file); every
format is measured on its own.

Both sides start from the file on disk and end with normalized conversations written to disk:

- `ours`: the ingest and normalize stages as the flow runs them, minus Prefect: plan the call
  (cache key, file hash), then `sftflow.tasks.core.stage.execute`, which runs the pure stage function
  (`ingest_stage.compute` / `normalize_stage.compute`) and writes its Parquet artifacts
  (records, decisions, examples) and manifest. Normalize also classifies every row's category.
- `datasets`: what a user would otherwise write: `datasets.load_dataset("json", data_files=...,
  split="train", cache_dir=<fresh temp dir>)` (it converts the file into an Arrow cache file),
  then a plain `.map` that builds [user, assistant] messages the way the alpaca adapter does,
  applies the project's text normalization (NFC, CRLF -> LF, edge whitespace including BOM and
  zero-width spaces), records a drop reason for the cheap checks (text fields present, no empty
  turn, no template token) and computes the same content hash; `.map` writes its own cache file.

Ours runs twice: with the recipe default `category: auto`, where normalize also runs the
rule-based category classifier (tasks/lib/categories.py) on every row, work the datasets pipeline
does not do; and with a fixed category (`ours_fixed_category`), where both sides do the same
work. Each round runs the three in this process, starting with a different one each round, on
fresh folders; the best of the rounds is reported (other jobs share this machine's cores).

Goals: rows/s of ours >= 2x the datasets pipeline, per file format and per category setting; the
ledger closes (every input row is kept or has a decision: ingest n_in = rows in the file, kept +
quarantined + dropped = n_in); the kept conversations equal the datasets pipeline's (same count
and content hashes).

    .venv/bin/python bench/ingest.py [--quick] [--rows N] [--repeats N] [--formats jsonl,json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from common import REPO, Ratio, report

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sftflow.tasks.ingest import plan as plan_ingest  # noqa: E402
from sftflow.tasks.normalize import plan as plan_normalize  # noqa: E402
from sftflow.tasks.core.recipe import Recipe  # noqa: E402
from sftflow.tasks.core.stage import execute  # noqa: E402
from sftflow.tasks.core.workspace import Workspace  # noqa: E402
from sftflow.tasks.ingest import ingest_stage  # noqa: E402
from sftflow.tasks.normalize import normalize_stage  # noqa: E402

GOAL_SPEEDUP = 2.0
FIXED_CATEGORY = "qa"  # a recipe-fixed category: normalize skips the rule-based classifier
SEED = 11
DEMO = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
FALLBACK_ROWS = [  # only when the shared file is absent: the same shapes, fewer distinct texts
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet with plenty of fruit and vegetables.\n2. Exercise regularly.\n"
               "3. Sleep seven to eight hours a night."},
    {"instruction": "Translate the sentence into French.", "input": "The cat sleeps on the warm windowsill.",
     "output": "Le chat dort sur le rebord de fenêtre chaud."},
    {"instruction": "Summarize the paragraph in one sentence.",
     "input": "Photosynthesis lets plants turn light, water and carbon dioxide into sugar and oxygen. "
              "It happens in chloroplasts and sustains nearly every food chain on Earth.",
     "output": "Photosynthesis converts light, water and CO2 into sugar and oxygen, feeding most life."},
]
# Shares of rows given each kind of mess (seeded); the dropped ones must be dropped by both sides.
MESSY = {"edge_spaces": 0.05, "crlf": 0.03, "decomposed": 0.02, "blank_input": 0.03}
BAD = {"blank_output": 0.004, "null_output": 0.002, "template_token": 0.003}


# ------------------------------------------------------------------------------------ data --
def base_rows() -> list[dict[str, str]]:
    if DEMO.is_file():
        return [{k: r.get(k) or "" for k in ("instruction", "input", "output")}
                for r in json.loads(DEMO.read_text(encoding="utf-8"))]
    return FALLBACK_ROWS


def perturb(text: str, words: list[str], rng: random.Random) -> str:
    """A few words replaced by words of other rows: a new text of the same length and style."""
    tokens = text.split(" ")
    for _ in range(max(1, len(tokens) // 25)):
        tokens[rng.randrange(len(tokens))] = rng.choice(words)
    return " ".join(tokens)


def corpus(n_rows: int) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    bases = base_rows()
    words = sorted({w for r in bases for w in r["output"].split() if w.isalpha()})
    rows = []
    for _ in range(n_rows):
        base = rng.choice(bases)
        row = {k: perturb(v, words, rng) if v else v for k, v in base.items()}
        draw = rng.random()
        if draw < MESSY["edge_spaces"]:
            row["instruction"] = "  " + row["instruction"] + " \n"
        elif (draw := draw - MESSY["edge_spaces"]) < MESSY["crlf"]:
            row["output"] = row["output"].replace("\n", "\r\n")
        elif (draw := draw - MESSY["crlf"]) < MESSY["decomposed"]:
            row["output"] = unicodedata.normalize("NFD", "Café au lait. " + row["output"])
        elif (draw := draw - MESSY["decomposed"]) < MESSY["blank_input"]:
            row["input"] = " \t "
        bad = rng.random()
        if bad < BAD["blank_output"]:
            row["output"] = " \u200b "
        elif (bad := bad - BAD["blank_output"]) < BAD["null_output"]:
            row["output"] = None
        elif (bad := bad - BAD["null_output"]) < BAD["template_token"]:
            row["output"] += " <|im_end|>"
        rows.append(row)
    return rows


def write_files(rows: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "alpaca.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    array = folder / "alpaca.json"
    array.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return {"jsonl": jsonl, "json": array}


# ------------------------------------------------------------------------------------ ours --
def run_ours(path: Path, project: Path, fmt: str, category: str = "auto") -> dict[str, Any]:
    """Plan and execute ingest then normalize, as the flow does, into a fresh warehouse."""
    warehouse = project / "warehouse"
    shutil.rmtree(warehouse, ignore_errors=True)
    ws = Workspace(root=project, warehouse=warehouse)
    recipe = Recipe.model_validate({
        "name": "bench", "sources": [{"name": f"bench_{fmt}", "path": str(path.relative_to(project)),
                                      "format": "alpaca", "category": category}]})
    ingested, hit = execute(call := plan_ingest(recipe.sources[0], ws), ingest_stage.compute)
    assert not hit, call.key
    normalized, hit = execute(plan_normalize(recipe, ingested, ws), normalize_stage.compute)
    assert not hit
    return {"ingest": ingested, "normalize": normalized}


def ours_summary(manifests: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    ingested, normalized = manifests["ingest"], manifests["normalize"]
    records = [pq.read_table(Path(normalized.path) / f.name, columns=["content_hash"])
               for f in normalized.files if f.name.startswith("records")]
    hashes = sorted(h for t in records for h in t.column("content_hash").to_pylist())
    return {
        "n_in": ingested.n_in, "ingest_kept": ingested.n_out,
        "ingest_quarantined": ingested.stats["n_quarantined"],
        "normalize_in": normalized.n_in, "normalize_kept": normalized.n_out,
        "normalize_dropped": normalized.n_in - normalized.n_out,
        "quarantined_by_reason": ingested.stats["quarantined_by_reason"],
        "normalize_reasons": normalized.stats["reasons"],
        "content_hashes": hashes,
    }


# -------------------------------------------------------------------------------- the peer --
# The project's text normalization and template-token check, written out the way a user would.
EDGE_SPACE = re.compile(r"^[\s\ufeff\u200b]+|[\s\ufeff\u200b]+$")
TEMPLATE_TOKEN = re.compile(r"<\|[A-Za-z0-9_.:-]{1,64}\|>|<start_of_turn>|<end_of_turn>")


def clean(text: str) -> str:
    return EDGE_SPACE.sub("", unicodedata.normalize("NFC", text).replace("\r\n", "\n"))


def to_messages(row: dict[str, Any]) -> dict[str, Any]:
    instruction, extra, output = row["instruction"], row["input"], row["output"]
    if not isinstance(instruction, str) or not isinstance(output, str):
        return {"messages": [], "content_hash": None, "reason": "missing_field"}
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [{"role": "user", "content": clean(prompt)}, {"role": "assistant", "content": clean(output)}]
    reason = None
    if any(not m["content"] for m in messages):
        reason = "empty_turn"
    elif any(TEMPLATE_TOKEN.search(m["content"]) for m in messages):
        reason = "template_token_in_text"
    canonical = json.dumps([[[m["role"], m["content"]] for m in messages]], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return {"messages": messages, "content_hash": hashlib.sha256(canonical.encode()).hexdigest()[:32],
            "reason": reason}


def run_peer(path: Path, cache_dir: Path):
    import datasets

    shutil.rmtree(cache_dir, ignore_errors=True)
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache_dir))
    return loaded.map(to_messages, remove_columns=loaded.column_names)


def peer_summary(dataset) -> dict[str, Any]:
    reasons = dataset["reason"]
    hashes = dataset["content_hash"]
    kept = sorted(h for h, r in zip(hashes, reasons) if r is None)
    return {"n_in": dataset.num_rows, "kept": len(kept),
            "reasons": dict(sorted(Counter(r for r in reasons if r is not None).items())), "content_hashes": kept}


# ------------------------------------------------------------------------------ the bench --
def timed(function, *args) -> tuple[Any, float]:
    gc.collect()
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


SIDES = ("ours", "ours_fixed_category", "datasets")


def measure(fmt: str, path: Path, work: Path, n_rows: int, repeats: int) -> dict[str, Any]:
    """Best seconds of each side over `repeats` rounds; each round starts with the next side."""
    runs = {
        "ours": lambda: run_ours(path, work, fmt),
        "ours_fixed_category": lambda: run_ours(path, work, fmt, FIXED_CATEGORY),
        "datasets": lambda: run_peer(path, work / "hf-cache"),
    }
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    outputs: dict[str, Any] = {}
    for repeat in range(repeats):
        for side in SIDES[repeat % len(SIDES):] + SIDES[:repeat % len(SIDES)]:
            out, took = timed(runs[side])
            seconds[side].append(took)
            outputs[side] = peer_summary(out) if side == "datasets" else ours_summary(out)
            print(f"  {fmt:5} {side:19} run {repeat + 1}: {took:7.2f}s  {n_rows / took:9.0f} rows/s", flush=True)
    return {"best_s": {side: min(v) for side, v in seconds.items()},
            "all_s": {side: [round(x, 3) for x in v] for side, v in seconds.items()}, "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 rows instead of 100,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="rounds; default 5 with --quick, else 3")
    parser.add_argument("--formats", default="jsonl,json")
    args = parser.parse_args()
    n_rows = args.rows or (10_000 if args.quick else 100_000)
    args.repeats = args.repeats or (5 if args.quick else 3)  # short rounds: more of them, against noise

    import datasets

    datasets.disable_progress_bars()  # a user's terminal would show them; they only cost time here
    datasets.logging.set_verbosity_error()
    ratios, results = [], {}
    with tempfile.TemporaryDirectory(prefix="sftflow-bench-ingest-") as tmp:
        project = Path(tmp)
        started = time.perf_counter()
        rows = corpus(n_rows)
        files = write_files(rows, project / "data")
        print(f"ingest bench: {n_rows} alpaca rows from {DEMO.name if DEMO.is_file() else 'built-in rows'} "
              f"(built in {time.perf_counter() - started:.1f}s; "
              + ", ".join(f"{f}: {files[f].stat().st_size / 2**20:.1f} MiB" for f in files) + ")", flush=True)
        ledger_ok, match_ok = True, True
        for fmt in args.formats.split(","):
            result = measure(fmt, files[fmt], project, n_rows, args.repeats)
            best, outputs = result["best_s"], result["outputs"]
            peer = outputs["datasets"]
            for side in ("ours", "ours_fixed_category"):
                ours = outputs[side]
                ledger_ok &= (ours["n_in"] == n_rows
                              and ours["ingest_kept"] + ours["ingest_quarantined"] == n_rows
                              and ours["normalize_in"] == ours["ingest_kept"]
                              and ours["normalize_kept"] + ours["normalize_dropped"] == ours["normalize_in"])
                match_ok &= peer["n_in"] == n_rows and peer["content_hashes"] == ours["content_hashes"]
            ours = outputs["ours"]
            print(f"  {fmt}: ours kept {ours['normalize_kept']}, quarantined {ours['ingest_quarantined']}, dropped "
                  f"{ours['normalize_dropped']}; datasets kept {peer['kept']}", flush=True)
            classify_s = best["ours"] - best["ours_fixed_category"]
            results[fmt] = {
                "seconds": {side: round(v, 3) for side, v in best.items()},
                "all_seconds": result["all_s"],
                "rows_per_s": {side: round(n_rows / v) for side, v in best.items()},
                "category_classification_share_of_ours": round(classify_s / best["ours"], 3),
                "ours_counts": {k: v for k, v in ours.items() if k != "content_hashes"},
                "datasets_counts": {k: v for k, v in peer.items() if k != "content_hashes"},
            }
            rates = {side: f"{n_rows / v:.0f} rows/s" for side, v in best.items()}
            ratios += [
                Ratio(f"ingest_normalize_rows_per_s_vs_datasets_{fmt}", best["datasets"] / best["ours"], GOAL_SPEEDUP,
                      note=f"{n_rows} alpaca rows ({fmt}), best of {args.repeats}, both writing to disk: ours "
                           f"{rates['ours']} (category: auto, the default: also classifies every row, "
                           f"{classify_s / best['ours']:.0%} of its time), load_dataset + map {rates['datasets']}"),
                Ratio(f"ingest_normalize_rows_per_s_vs_datasets_{fmt}_fixed_category",
                      best["datasets"] / best["ours_fixed_category"], GOAL_SPEEDUP,
                      note=f"as above with the source's category fixed (category: {FIXED_CATEGORY}), so both sides do "
                           f"the same work: ours {rates['ours_fixed_category']}, load_dataset + map {rates['datasets']}"),
            ]
    ratios += [
        Ratio("ingest_normalize_ledger_closes", float(ledger_ok), 1.0,
              note="ingest n_in = rows in the file; ingest kept + quarantined = n_in; normalize kept + dropped = its n_in"),
        Ratio("ingest_normalize_kept_equals_datasets", float(match_ok), 1.0,
              note="kept rows' content hashes identical to the load_dataset + map pipeline's"),
    ]
    details = {"n_rows": n_rows, "repeats": args.repeats, "seed": SEED, "messy_shares": MESSY, "bad_shares": BAD,
               "source_rows": str(DEMO.name if DEMO.is_file() else "built-in"), "results": results}
    report("ingest", ratios, details, quick=args.quick, libraries=("datasets", "pyarrow", "orjson"))


if __name__ == "__main__":
    main()
