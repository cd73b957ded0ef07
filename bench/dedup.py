"""Near-duplicate dedup: the dedup stage end to end against rensa, datatrove and per-row datasketch.

Data. N synthetic documents of ~200 words (150-250), drawn from a 20,000-word vocabulary with
Zipf-like frequencies, so common words repeat as in prose. A fifth of them are planted variants:
each is made from its own base document by random word substitutions, insertions and deletions,
applied until the EXACT Jaccard of the two 5-word shingle sets (the stage's own `shingles`) falls
to a target level. Levels: 0.3, 0.5, 0.6, 0.7 (must stay) and 0.85, 0.9, 0.95 (must go), in equal
numbers; the exact Jaccard reached is recorded per pair. The 0.7-0.85 band is left empty on
purpose: with 128 permutations the estimate's standard deviation at J = 0.8 is about 0.035, so
pairs right at the 0.8 threshold fall either way by chance, whatever the implementation. The
per-level detection rates are in the JSON record.

Every side gets the same rows and the recipe-default NearDedupConfig (5-grams, 128 permutations,
threshold 0.8, bands and rows derived from it: 13 x 7, backend `rensa`):

- `ours`: `sftflow.tasks.dedup.deduplicate` (exact pass, shingles, signatures, LSH, exact-Jaccard
  verification, greedy representatives, one decision per row), timed end to end.
- `rensa`: what a rensa user writes (bench/peers/rensa_minhash.py): Python shingles of the same
  document texts into `RMinHash.digest_matrix_from_token_sets`, then `RMinHashLSH.insert_matrix`
  and `query_duplicate_flags_matrix` with the same 13 x 7 bands; timed from the texts to a
  candidate flag per document (less than a decision: no verification, no representatives).
  rensa's own time from pre-built shingles is in the record.
- `numpy`: `deduplicate` with `backend="numpy"` (datasketch's hash and permutations, pairs
  verified by the MinHash estimate), whose decisions must equal the reference's.
- `per_row`: what common tools do: one `datasketch.MinHash` per row updated shingle by shingle
  (`MinHash.update`), inserted into a `MinHashLSH` and queried back, candidates verified with
  `MinHash.jaccard`, then the same greedy representatives in the same survivor order; the same
  text extraction and shingling functions.
- `reference`: `deduplicate` with `backend="datasketch"` (MinHash.bulk + MinHashLSH).
- `datatrove`: datatrove's four-step MinHash pipeline (bench/peers/datatrove_minhash.py), in its
  own virtual environment under build/bench-venvs/ (created from PyPI on first use), on the same
  documents written as JSONL; its own wall time of the four steps, imports excluded. Skipped,
  and said so in the record, when it cannot be installed.

Goals: docs/s of ours >= 0.5x rensa, >= 4x per_row and >= 1x datatrove; recall >= 0.95 on planted
pairs with Jaccard >= 0.8 (the variant dropped as a near duplicate of its base); precision >= 0.99
(near-duplicate drops whose exact Jaccard to the row they duplicate is >= 0.8); the numpy
backend's decisions identical to the reference's.

    .venv/bin/python bench/dedup.py [--quick] [--docs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from common import REPO, Ratio, report
from peers import rensa_minhash

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sftflow.tasks.core.recipe_data import DedupConfig  # noqa: E402
from sftflow.tasks.dedup import deduplicate  # noqa: E402
from sftflow.tasks.lib.minhash import greedy_representatives  # noqa: E402
from sftflow.tasks.lib.shingles import conversation_text, response_units, row_shingles, shingles  # noqa: E402

GOAL_SPEEDUP = 4.0
GOAL_VS_DATATROVE = 1.0
GOAL_VS_RENSA = 0.5
DATATROVE_VENV = REPO / "build" / "bench-venvs" / "datatrove"
# datatrove and the packages its MinHash steps and JSONL reader import (not all are its dependencies).
DATATROVE_PACKAGES = ("datatrove==0.10.1", "regex", "tokenizers", "orjson")
GOAL_RECALL = 0.95
GOAL_PRECISION = 0.99
NEGATIVE_LEVELS = (0.3, 0.5, 0.6, 0.7)
POSITIVE_LEVELS = (0.85, 0.9, 0.95)
PLANTED_SHARE = 0.2
VOCABULARY = 20_000
SEED = 7


# ------------------------------------------------------------------------------------ data --
def vocabulary(rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters, size=int(rng.integers(2, 10)))))
    return sorted(words)


def exact_jaccard(a: list[bytes], b: list[bytes]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def planted_variant(base: list[str], target: float, words: list[str], ngram: int,
                    rng: np.random.Generator) -> tuple[list[str], float]:
    """`base` edited (substitute / insert / delete a word) until its shingle Jaccard <= target.

    The number of edits is found by bisection over one fixed random edit sequence, so the result
    is the least-edited variant at or just below the target.
    """
    edits = []
    length = len(base)
    for _ in range(length):
        kind = rng.choice(3, p=(0.6, 0.2, 0.2))
        edits.append((int(kind), float(rng.random()), words[int(rng.integers(len(words)))]))
    base_grams = shingles(" ".join(base), ngram)

    def apply(k: int) -> list[str]:
        doc = list(base)
        for kind, where, word in edits[:k]:
            at = min(int(where * len(doc)), len(doc) - 1)
            if kind == 0:
                doc[at] = word
            elif kind == 1:
                doc.insert(at, word)
            elif len(doc) > ngram + 1:
                del doc[at]
        return doc

    low, high = 1, len(edits)
    while low < high:  # the smallest k whose Jaccard is <= target
        middle = (low + high) // 2
        if exact_jaccard(base_grams, shingles(" ".join(apply(middle)), ngram)) <= target:
            high = middle
        else:
            low = middle + 1
    variant = apply(low)
    return variant, exact_jaccard(base_grams, shingles(" ".join(variant), ngram))


def corpus(n_docs: int, ngram: int) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The records table (example_id, content_hash, messages) and the planted pairs."""
    rng = np.random.default_rng(SEED)
    words = vocabulary(rng)
    ranks = np.arange(1, VOCABULARY + 1)
    frequency = 1.0 / ranks**0.8
    frequency /= frequency.sum()
    n_planted = int(n_docs * PLANTED_SHARE)
    n_base = n_docs - n_planted
    levels = NEGATIVE_LEVELS + POSITIVE_LEVELS
    docs: list[list[str]] = []
    for _ in range(n_base):
        picked = rng.choice(VOCABULARY, size=int(rng.integers(150, 251)), p=frequency)
        docs.append([words[i] for i in picked])
    pairs = []
    for index in range(n_planted):
        base = index  # bases 0..n_planted-1 each get one variant
        target = levels[index % len(levels)]
        variant, jaccard = planted_variant(docs[base], target, words, ngram, rng)
        pairs.append({"base": base, "variant": len(docs), "level": target, "jaccard": jaccard})
        docs.append(variant)
    # Ids in a shuffled order, so which of base and variant survives (the longer response, then
    # the smaller id) does not follow from the order they were made in.
    order = rng.permutation(len(docs))
    example_ids = [f"doc-{int(rank):07d}" for rank in order]
    texts = [" ".join(doc) for doc in docs]
    records = pa.table({
        "example_id": example_ids,
        "content_hash": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
        "messages": [[{"role": "user", "content": "Summarize."}, {"role": "assistant", "content": t}]
                     for t in texts],
    })
    for pair in pairs:
        pair["base"], pair["variant"] = example_ids[pair["base"]], example_ids[pair["variant"]]
    return records, pairs


# ----------------------------------------------------------------------------- the baseline --
def per_row_dedup(records: pa.Table, cfg: DedupConfig) -> dict[str, str]:
    """Near duplicates found the per-row way: {dropped example_id: example_id it duplicates}."""
    from datasketch import MinHash, MinHashLSH

    near = cfg.near
    ids = records.column("example_id").to_pylist()
    messages = records.column("messages").to_pylist()
    # the stage's survivor order (no source priority here): longest response, then smallest id
    order = sorted(range(len(ids)), key=lambda p: (-response_units(messages[p]), ids[p]))
    eligible, signatures = [], []
    for position in order:
        grams = row_shingles(messages[position], near)
        if len(grams) < near.min_shingles:
            continue
        signature = MinHash(num_perm=near.num_perm, seed=near.seed)
        for gram in grams:
            signature.update(gram)
        eligible.append(position)
        signatures.append(signature)
    lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm, params=near.lsh_params)
    for index, signature in enumerate(signatures):
        lsh.insert(index, signature)
    verified = set()
    for index, signature in enumerate(signatures):
        for other in lsh.query(signature):
            jaccard = signature.jaccard(signatures[other])
            if other > index and jaccard >= near.threshold:
                verified.add((index, other, jaccard))
    dropped = {}
    for member, assignment in enumerate(greedy_representatives(len(eligible), sorted(verified))):
        if assignment is not None:
            dropped[ids[eligible[member]]] = ids[eligible[assignment[0]]]
    return dropped


def datatrove_python() -> tuple[Path | None, str]:
    """The datatrove venv's interpreter (created on first use), or None and why not."""
    python = DATATROVE_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(DATATROVE_VENV)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *DATATROVE_PACKAGES],
                           check=True, capture_output=True, text=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            return None, f"datatrove could not be installed: {detail.strip().splitlines()[-1:]}"
    return python, "installed"


def datatrove_peer(records: pa.Table, cfg: DedupConfig) -> dict[str, Any]:
    """Run datatrove's MinHash pipeline on the same texts: {"seconds", "removed"} or {"skipped"}."""
    python, status = datatrove_python()
    if python is None:
        return {"skipped": status}
    near = cfg.near
    with tempfile.TemporaryDirectory(prefix="sftflow-bench-datatrove-") as tmp:
        source = Path(tmp) / "input" / "docs.jsonl"
        source.parent.mkdir()
        with source.open("w", encoding="utf-8") as out:
            for example_id, messages in zip(records.column("example_id").to_pylist(),
                                            records.column("messages").to_pylist()):
                out.write(json.dumps({"id": example_id, "text": conversation_text(messages, near.roles)}) + "\n")
        done = subprocess.run(
            [str(python), str(REPO / "bench" / "peers" / "datatrove_minhash.py"), str(source),
             str(Path(tmp) / "work"), *map(str, near.lsh_params), str(near.ngram)],
            capture_output=True, text=True)
        if done.returncode != 0:
            return {"skipped": f"datatrove run failed: {done.stderr.strip().splitlines()[-1:]}"}
        return json.loads(done.stdout.strip().splitlines()[-1])


def near_drops(decisions: pa.Table) -> dict[str, str]:
    rows = decisions.to_pylist()
    return {r["example_id"]: r["dup_of"] for r in rows if r["reason"] == "near_duplicate"}


def quality(dropped: dict[str, str], pairs: list[dict[str, Any]], records: pa.Table, cfg: DedupConfig) -> dict[str, Any]:
    """Recall on planted pairs with Jaccard >= 0.8; precision of the drops against exact Jaccard."""
    positives = [p for p in pairs if p["jaccard"] >= 0.8]

    def found(pair: dict[str, Any]) -> bool:  # either row may survive (longest response first)
        return dropped.get(pair["variant"]) == pair["base"] or dropped.get(pair["base"]) == pair["variant"]

    by_level: dict[float, list[bool]] = defaultdict(list)
    for pair in pairs:
        by_level[pair["level"]].append(found(pair))
    grams = dict(zip(records.column("example_id").to_pylist(),
                     (row_shingles(m, cfg.near) for m in records.column("messages").to_pylist())))
    correct = sum(exact_jaccard(grams[d], grams[r]) >= 0.8 for d, r in dropped.items())
    return {
        "recall": sum(map(found, positives)) / len(positives),
        "precision": correct / len(dropped) if dropped else 1.0,
        "n_positive_pairs": len(positives),
        "n_near_drops": len(dropped),
        "detection_rate_by_level": {str(level): round(sum(v) / len(v), 4) for level, v in sorted(by_level.items())},
        "planted_jaccard_range_by_level": {
            str(level): [round(min(p["jaccard"] for p in pairs if p["level"] == level), 4),
                         round(max(p["jaccard"] for p in pairs if p["level"] == level), 4)]
            for level in sorted(by_level)},
    }


def timed(function, *args) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 documents instead of 100,000")
    parser.add_argument("--docs", type=int, default=None)
    args = parser.parse_args()
    n_docs = args.docs or (10_000 if args.quick else 100_000)

    cfg = DedupConfig()
    numpy_cfg = DedupConfig.model_validate({"near": {"backend": "numpy"}})
    reference_cfg = DedupConfig.model_validate({"near": {"backend": "datasketch"}})
    started = time.perf_counter()
    records, pairs = corpus(n_docs, cfg.near.ngram)
    print(f"dedup bench: {n_docs} documents, {len(pairs)} planted pairs "
          f"(built in {time.perf_counter() - started:.1f}s)", flush=True)

    import datasketch  # noqa: F401  both sides use it: its import (scipy, ~1 s) is timed by neither
    import rensa  # noqa: F401  likewise

    ours, ours_seconds = timed(deduplicate, records, cfg)
    print(f"  ours       {ours_seconds:8.2f}s  {n_docs / ours_seconds:9.0f} docs/s", flush=True)
    texts = [conversation_text(m, cfg.near.roles) for m in records.column("messages").to_pylist()]
    rensa_peer = rensa_minhash.run(texts, cfg.near.threshold, *cfg.near.lsh_params, cfg.near.ngram, cfg.near.seed)
    rensa_seconds = rensa_peer["seconds"]
    print(f"  rensa      {rensa_seconds:8.2f}s  {n_docs / rensa_seconds:9.0f} docs/s "
          f"(signatures + LSH alone: {rensa_peer['signature_seconds']:.2f}s)", flush=True)
    numpy_run, numpy_seconds = timed(deduplicate, records, numpy_cfg)
    print(f"  numpy      {numpy_seconds:8.2f}s  {n_docs / numpy_seconds:9.0f} docs/s", flush=True)
    reference, reference_seconds = timed(deduplicate, records, reference_cfg)
    print(f"  reference  {reference_seconds:8.2f}s  {n_docs / reference_seconds:9.0f} docs/s", flush=True)
    baseline, baseline_seconds = timed(per_row_dedup, records, cfg)
    print(f"  per_row    {baseline_seconds:8.2f}s  {n_docs / baseline_seconds:9.0f} docs/s", flush=True)

    peer = datatrove_peer(records, cfg)
    if "seconds" in peer:
        print(f"  datatrove  {peer['seconds']:8.2f}s  {n_docs / peer['seconds']:9.0f} docs/s", flush=True)
    else:
        print(f"  datatrove  skipped: {peer['skipped']}", flush=True)

    identical = numpy_run.decisions.equals(reference.decisions) and numpy_run.records.equals(reference.records)
    same_as_per_row = near_drops(numpy_run.decisions) == baseline
    measured = quality(near_drops(ours.decisions), pairs, records, cfg)
    measured_numpy = quality(near_drops(numpy_run.decisions), pairs, records, cfg)
    speedup = baseline_seconds / ours_seconds
    ratios = [
        Ratio("dedup_docs_per_s_vs_rensa", rensa_seconds / ours_seconds, GOAL_VS_RENSA,
              note=f"{n_docs} docs: ours {n_docs / ours_seconds:.0f} docs/s (decisions), rensa "
                   f"{n_docs / rensa_seconds:.0f} docs/s (Python shingles + bulk signatures + LSH flags)"),
        Ratio("dedup_docs_per_s_vs_datasketch_per_row", speedup, GOAL_SPEEDUP,
              note=f"{n_docs} docs: ours {n_docs / ours_seconds:.0f} docs/s, per-row datasketch "
                   f"{n_docs / baseline_seconds:.0f} docs/s"),
        *([Ratio("dedup_docs_per_s_vs_datatrove", peer["seconds"] / ours_seconds, GOAL_VS_DATATROVE,
                 note=f"datatrove's 4-step MinHash pipeline, 1 worker: {n_docs / peer['seconds']:.0f} docs/s")]
          if "seconds" in peer else []),
        Ratio("dedup_recall_planted_j_ge_0.8", measured["recall"], GOAL_RECALL,
              note=f"{measured['n_positive_pairs']} planted pairs with exact Jaccard >= 0.8"),
        Ratio("dedup_precision", measured["precision"], GOAL_PRECISION,
              note=f"{measured['n_near_drops']} near-duplicate drops, exact Jaccard >= 0.8 to their representative"),
        Ratio("dedup_decisions_identical_to_datasketch", float(identical), 1.0,
              note="backend=numpy: every decision and kept row equal to backend=datasketch (MinHash.bulk + MinHashLSH)"),
    ]
    details = {
        "n_docs": n_docs, "n_planted_pairs": len(pairs), "config": cfg.near.model_dump(),
        "seconds": {"ours": round(ours_seconds, 3), "rensa": round(rensa_seconds, 3),
                    "rensa_signatures_and_lsh_only": round(rensa_peer["signature_seconds"], 3),
                    "numpy": round(numpy_seconds, 3), "reference": round(reference_seconds, 3),
                    "per_row": round(baseline_seconds, 3)},
        "docs_per_s": {"ours": round(n_docs / ours_seconds), "rensa": round(n_docs / rensa_seconds),
                       "numpy": round(n_docs / numpy_seconds), "reference": round(n_docs / reference_seconds),
                       "per_row": round(n_docs / baseline_seconds)},
        "rensa_n_flagged": rensa_peer["n_flagged"],
        "numpy_near_drops_equal_per_row_baseline": same_as_per_row,
        "numpy_quality": {k: measured_numpy[k] for k in ("recall", "precision", "n_near_drops", "detection_rate_by_level")},
        "datatrove": ({"seconds": round(peer["seconds"], 3), "docs_per_s": round(n_docs / peer["seconds"]),
                       "n_removed": len(peer["removed"]),
                       "n_removed_also_dropped_by_ours": len(set(peer["removed"]) & set(near_drops(ours.decisions))),
                       "packages": list(DATATROVE_PACKAGES)}
                      if "seconds" in peer else peer),
        "stats": ours.stats,
        **measured,
    }
    report("dedup", ratios, details, quick=args.quick, libraries=("datasketch", "numpy", "pyarrow", "rensa"))


if __name__ == "__main__":
    main()
