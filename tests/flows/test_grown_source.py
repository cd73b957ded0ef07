"""A nightly run over a grown source: the data half, run again in the same warehouse after a source
gained rows and had one edited, writes exactly what a cold run of the grown source writes in a
fresh warehouse, while filter and score compute only the new and edited rows from their row memos.

Artifact keys name their inputs by content hash, so equal keys at every stage of the two runs mean
byte-equal artifacts all the way down: the fate of every row (each stage's decisions) and the mix
shards. The scorer is a fake one that scores a pair the same in any batch, as the memo requires
(the built-in scorers vary in their last float bits with the batch: docs/caching.md, "Row memo").
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from sftflow.tasks import score
from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.lib.scorers import ScoredPairs

pytestmark = pytest.mark.slow


class HashScorer:
    name = "fake:hash"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def score_truncated(self, pairs: list[tuple[str, str]]) -> ScoredPairs:
        self.pairs += pairs
        return ScoredPairs([int(hashlib.sha256(f"{p}|{r}".encode()).hexdigest()[:12], 16) / 16**12 for p, r in pairs])

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.score_truncated(pairs).scores


NEW_ROWS = [
    {"messages": [{"role": "user", "content": f"Name a river that flows through city number {i} of the atlas."},
                  {"role": "assistant", "content": f"The river Avon flows through city number {i}; it is a slow, "
                   "wide river with stone bridges, mills along its banks and a towpath walkers use all year."}]}
    for i in range(4)
]


def grow(root) -> None:
    """Four new rows appended to openai.jsonl and its first row's answer edited."""
    path = root / "data" / "samples" / "openai.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[0] = lines[0].replace('"}]}', ' It has at least ninety-five known moons."}]}', 1)
    path.write_text("".join(lines + [json.dumps(row) + "\n" for row in NEW_ROWS]), encoding="utf-8")


def keys(summary: dict) -> dict[str, str]:
    return {f"{s['stage']}[{s['label']}]": s["key"] for s in summary["stages"]}


def manifest(root, stage: str, summary: dict):
    row = next(s for s in summary["stages"] if s["stage"] == stage)
    store = ArtifactStore(root / "data" / "warehouse" / "artifacts")
    found = [m for m in (store.load(stage, p.name) for p in store.stage_dir(stage).iterdir() if p.name.startswith(row["key"]))
             if m is not None]
    assert len(found) == 1
    return found[0]


def test_a_grown_source_writes_what_a_cold_run_writes(project, run_pipeline, monkeypatch):
    loaded: list[HashScorer] = []
    monkeypatch.setattr(score, "load_quality_scorer", lambda cfg, resolve: loaded.append(HashScorer()) or loaded[-1])
    run_pipeline(project)
    cold_root = project.parent / "cold" / "project"
    grow(project)
    incremental = run_pipeline(project)

    shutil.copytree(project / "data" / "samples", cold_root / "data" / "samples")
    shutil.copytree(project / "deployments", cold_root / "deployments")
    cold = run_pipeline(cold_root)

    assert not any(s["cache_hit"] for s in cold["stages"])
    assert keys(incremental) == keys(cold)  # every artifact, decisions and shards included, byte-equal
    for stage in ("filter", "score"):
        grown, fresh = manifest(project, stage, incremental), manifest(cold_root, stage, cold)
        assert sorted((f.name, f.sha256) for f in grown.files) == sorted((f.name, f.sha256) for f in fresh.files)
        # only the rows dedup kept of the 4 new and the edited one were computed
        assert 0 < grown.stats["n_in"] - grown.stats["n_reused"] <= len(NEW_ROWS) + 1, stage
        assert fresh.stats["n_reused"] == 0
    assert len(loaded[1].pairs) <= len(NEW_ROWS) + 1  # the second run's scorer saw only new pairs
