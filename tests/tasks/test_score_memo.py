"""The score stage's row memo: a grown source scores only its new and edited rows, and its
artifact is the one a cold run writes; what changes a row's score reuses nothing, ranking reuses all."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from sftflow.tasks import score
from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_data import ScoreConfig
from sftflow.tasks.core.row_memo import TMP_PREFIX, RowMemo
from sftflow.tasks.core.stage import execute
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.scorers import ScoredPairs, Truncation, scorer_name
from tests.stage_helpers import records_from_rows

CATEGORIES = ("qa", "code", "math")
N_ROWS = 300


class HashScorer:
    """Fake scorer, the same score for a pair whatever its batch (as the memo requires): a number
    from the pair's hash; it reads 12 words, a prompt's start gives way first. Records every pair."""

    name = "fake:hash"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def score_truncated(self, pairs: list[tuple[str, str]]) -> ScoredPairs:
        self.pairs += pairs
        scores = [int(hashlib.sha256(f"{p}|{r}".encode()).hexdigest()[:12], 16) / 16**12 for p, r in pairs]
        truncations = []
        for prompt, response in pairs:
            n_prompt, n_response = len(prompt.split()), len(response.split())
            response_dropped = max(0, n_response - 12)
            truncations.append(Truncation(max(0, n_prompt - (12 - n_response + response_dropped)), response_dropped))
        return ScoredPairs(scores, truncations)

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.score_truncated(pairs).scores


def row(i: int, response: str | None = None) -> dict:
    prompt = f"question {i}?" + (" and some longer context" * 3 if i % 7 == 0 else "")
    return {"example_id": f"ex{i:04d}", "content_hash": f"h{i}", "source": "s", "source_format": "alpaca",
            "source_uri": "s.json", "source_row": i, "category": CATEGORIES[i % 3],
            "messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": response or f"answer {i}"}]}


def base_rows() -> list[dict]:
    rows = [row(i) for i in range(N_ROWS)]
    rows[11] = {**row(11), "messages": row(10)["messages"]}  # the same pair twice: scored once
    return rows


def grown_rows() -> tuple[list[dict], int]:
    """The base rows with 4 edited answers and 1% new rows; returns them and how many pairs are new."""
    rows = base_rows()
    for i in (3, 50, 120, 299):
        rows[i] = row(i, response=f"a better answer {i}")
    rows += [row(i) for i in range(N_ROWS, N_ROWS + N_ROWS // 100)]
    return rows, 4 + N_ROWS // 100


@pytest.fixture
def scorers(monkeypatch) -> list[HashScorer]:
    """Every scorer the stage loads, in order."""
    loaded: list[HashScorer] = []

    def load(cfg, resolve):
        loaded.append(HashScorer())
        return loaded[-1]

    monkeypatch.setattr(score, "load_quality_scorer", load)
    return loaded


def run(tmp_path, name: str, rows: list[dict], **score_section):
    """Plan and execute the score stage in the project `tmp_path/name` on `rows` (two records parts)."""
    ws = Workspace(root=tmp_path / name, warehouse=tmp_path / name / "warehouse")
    writer = ArtifactStore(ws.artifacts_dir).writer("filter", f"in-{len(rows)}")
    half = len(rows) // 2
    writer.write_table("records-00000.parquet", records_from_rows(rows[:half]))
    writer.write_table("records-00001.parquet", records_from_rows(rows[half:]))
    upstream = writer.commit(inputs=[], config_hash="c", code_hash="c", n_in=len(rows), n_out=len(rows), stats={})
    recipe = Recipe.model_validate({"name": "r", "sources": [{"name": "s", "format": "alpaca", "path": "s.json"}],
                                    "score": score_section})
    call = score.plan(recipe, [upstream], ws)
    manifest, hit = execute(call, score.score_stage.compute)
    assert not hit
    return call, manifest


def content(manifest) -> dict:
    """What the artifact holds: its records and decisions, row by row, and their files' bytes."""
    return {"records": pq.read_table(manifest.file("records-00000.parquet")).to_pylist(),
            "decisions": pq.read_table(manifest.file("decisions.parquet")).to_pylist(),
            "files": sorted((f.name, f.sha256) for f in manifest.files)}


def test_a_grown_source_scores_only_new_and_edited_rows_and_writes_what_a_cold_run_writes(tmp_path, scorers):
    run(tmp_path, "nightly", base_rows())
    assert len(scorers[0].pairs) == N_ROWS - 1  # rows 10 and 11 share their pair
    grown, n_new = grown_rows()
    _, incremental = run(tmp_path, "nightly", grown)
    changed = [r for r in grown if r["source_row"] >= N_ROWS or r != base_rows()[r["source_row"]]]
    assert sorted(scorers[1].pairs) == sorted(score._pairs(records_from_rows(changed)))
    assert len(scorers[1].pairs) == n_new
    assert (incremental.stats["n_scored"], incremental.stats["n_reused"]) == (n_new, len(grown) - n_new)

    _, cold = run(tmp_path, "cold", grown)
    assert len(scorers[2].pairs) == len(grown) - 1
    assert content(incremental) == content(cold)
    details = [d["detail"] for d in content(cold)["decisions"]]
    assert any('"prompt_tokens_dropped": 0' not in d for d in details)  # truncation came back from the memo
    for name in ("kept_by_category", "score_mean_by_category", "n_prompt_truncated", "n_response_truncated"):
        assert incremental.stats[name] == cold.stats[name]


def test_what_changes_a_rows_score_reuses_nothing(tmp_path, scorers):
    first, _ = run(tmp_path, "p", base_rows())
    other, manifest = run(tmp_path, "p", base_rows(), max_length_tokens=256)
    assert other.params[score.MEMO_PARAM] != first.params[score.MEMO_PARAM]
    assert len(scorers[1].pairs) == N_ROWS - 1
    assert (manifest.stats["n_scored"], manifest.stats["n_reused"]) == (N_ROWS - 1, 0)


def test_ranking_changes_reuse_every_score_and_load_no_scorer(tmp_path, scorers):
    first, _ = run(tmp_path, "p", base_rows())
    for section in [{"keep_top_fraction": 0.5}, {"per_category": False}]:
        call, manifest = run(tmp_path, "p", base_rows(), **section)
        assert call.params[score.MEMO_PARAM] == first.params[score.MEMO_PARAM]
        assert len(scorers) == 1  # every pair came from the memo: no model was loaded
        assert (manifest.stats["n_scored"], manifest.stats["n_reused"]) == (0, N_ROWS)
        assert manifest.stats["scorer"] == scorer_name(ScoreConfig())  # named without loading it
    _, cold = run(tmp_path, "cold", base_rows(), per_category=False)
    assert content(manifest) == content(cold)


def test_a_half_written_memo_file_is_ignored(tmp_path, scorers):
    call, _ = run(tmp_path, "p", base_rows()[:100])
    memo = RowMemo(tmp_path / "p" / "warehouse", "score", call.params[score.MEMO_PARAM])
    written = memo.files()
    assert len(written) == 2  # one per records part
    # a crash mid-write: the temporary file holds the start of a real memo file, and one is garbage
    (memo.folder / f"{TMP_PREFIX}crashed.parquet").write_bytes(written[0].read_bytes()[:200])
    (memo.folder / f"{TMP_PREFIX}other.parquet").write_bytes(b"PAR1 not parquet")
    for path in written:
        path.unlink()
    _, manifest = run(tmp_path, "p", base_rows()[:100], keep_top_fraction=0.5)
    assert len(scorers[1].pairs) == 99  # rows 10 and 11 share their pair
    assert manifest.stats["n_reused"] == 0
    _, cold = run(tmp_path, "cold", base_rows()[:100], keep_top_fraction=0.5)
    assert content(manifest) == content(cold)


def test_the_memo_fingerprint_follows_the_scorer_code_not_the_ranking_code(monkeypatch):
    from pathlib import Path

    from sftflow.tasks.core.cache_keys import _project_imports
    from sftflow.tasks.lib import scorers as scorer_module

    cfg = ScoreConfig()
    base = score.memo_fingerprint(cfg, ["weights", "device=cpu"])
    assert score.memo_fingerprint(cfg, ["weights", "device=cuda"]) != base
    assert score.memo_fingerprint(cfg.model_copy(update={"keep_top_fraction": 0.3, "batch_size": 2}),
                                  ["weights", "device=cpu"]) == base
    assert score.SCORER_MODULE == scorer_module.__name__
    # the reward model's module is reached from the scorer module (it is imported where it is used)
    assert "sftflow.tasks.lib.reward_model" in _project_imports(Path(scorer_module.__file__), score.SCORER_MODULE)
    real = score.code_fingerprint
    monkeypatch.setattr(score, "code_fingerprint", lambda name: "edited" if name == score.SCORER_MODULE else real(name))
    assert score.memo_fingerprint(cfg, ["weights", "device=cpu"]) != base
