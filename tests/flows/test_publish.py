"""What the Prefect UI shows per stage and per run: drops by reason for every data stage, counted
from the stage's decisions (the numbers the catalog holds), without running a flow.

Issue 13, item 12: the stage table artifact used to list reasons from `stats["reasons"]`, which
only normalize and filter write, so ingest, dedup, score and mix showed no drop reasons.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

import sftflow.flows.publish as publish
from sftflow.tasks.core.artifacts import ArtifactStore, Manifest
from sftflow.tasks.core.catalog import Catalog
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DecisionLog

# (stage, label, {reason: rows}) shaped like a demo run; kept reasons are not drops.
STAGE_DECISIONS = [
    ("ingest", "alpaca_sample", {Reason.KEPT: 40, Reason.INVALID_JSON: 2, Reason.MISSING_FIELD: 1}),
    ("normalize", "openai_sample", {Reason.KEPT: 30, Reason.KEPT_TRIMMED: 2, Reason.EMPTY_TURN: 3,
                                    Reason.NON_ALTERNATING: 1}),
    ("dedup", "", {Reason.KEPT: 50, Reason.EXACT_DUPLICATE: 4, Reason.NEAR_DUPLICATE: 6}),
    ("filter", "", {Reason.KEPT: 45, Reason.TOO_SHORT_RESPONSE: 3, Reason.TOXIC: 1, Reason.CONTAMINATED: 2}),
    ("score", "", {Reason.KEPT: 36, Reason.BELOW_TOP_FRACTION: 9}),
    ("mix", "", {Reason.SELECTED: 30, Reason.HELD_OUT_EVAL: 2, Reason.NOT_SAMPLED: 4}),
]
DATA_STAGES = {stage for stage, _, _ in STAGE_DECISIONS}
STAGE_DECISIONS_BY_STAGE = {stage: counts for stage, _, counts in STAGE_DECISIONS}
KEPT_REASONS = {Reason.KEPT, Reason.KEPT_TRIMMED, Reason.SELECTED, Reason.HELD_OUT_EVAL}


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    """No Prefect server: these tests capture what publish would send (overrides the conftest's)."""
    yield


@pytest.fixture
def captured(monkeypatch) -> dict[str, list]:
    sent: dict[str, list] = {"tables": [], "markdown": []}
    monkeypatch.setattr(publish, "create_table_artifact",
                        lambda key, table, description: sent["tables"].append((key, table)))
    monkeypatch.setattr(publish, "create_markdown_artifact",
                        lambda key, markdown, description: sent["markdown"].append((key, markdown)))
    return sent


def write_stage(store: ArtifactStore, stage: str, counts: dict[Reason, int], seed: int) -> Manifest:
    """A committed artifact holding only a decisions file, rows in seeded order."""
    reasons = [reason for reason, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(reasons)
    log = DecisionLog()
    for i, reason in enumerate(reasons):
        log.add(f"{stage}-{i:03d}", reason)
    writer = store.writer(stage, f"key-{stage}")
    writer.write_table("decisions.parquet", log.to_table())
    n_kept = sum(n for r, n in counts.items() if r in KEPT_REASONS)
    # As the real stages do: only normalize and filter count reasons (kept ones too) in their stats.
    stats = {"reasons": dict(Counter(r.value for r in reasons))} if stage in ("normalize", "filter") else {}
    return writer.commit(inputs=[], config_hash="c", code_hash="x", n_in=len(reasons), n_out=n_kept, stats=stats)


@pytest.fixture
def manifests(tmp_path: Path) -> list[tuple[str, str, Manifest]]:
    store = ArtifactStore(tmp_path / "warehouse" / "artifacts")
    return [(stage, label, write_stage(store, stage, counts, seed))
            for seed, (stage, label, counts) in enumerate(STAGE_DECISIONS)]


def stage_row(stage: str, label: str, manifest: Manifest) -> dict:
    return {"stage": stage, "label": label, "key": manifest.key[:12], "cache_hit": False, "seconds": 0.1,
            "n_in": manifest.n_in, "n_out": manifest.n_out}


def test_every_data_stage_artifact_shows_its_drops_by_reason(manifests, captured, tmp_path):
    for stage, label, manifest in manifests:
        publish.publish_stage(stage_row(stage, label, manifest), manifest, "run1")
    tables = dict(captured["tables"])
    catalog = Catalog(tmp_path / "warehouse" / "catalog.duckdb")
    catalog.start_run("run1", None, "demo", "h", "v", "{}", [])
    for stage, label, manifest in manifests:
        catalog.record_stage("run1", manifest, label, False, 0.1)
    assert len(tables) == len(DATA_STAGES)
    for stage, label, manifest in manifests:
        table = tables[publish.stage_artifact_key(stage, label)]
        assert all(tuple(line) == publish.STAGE_TABLE_COLUMNS for line in table)  # one shape
        counts, *reason_lines = table
        shown = {line["reason"]: line["dropped"] for line in reason_lines if line["reason"]}
        expected = {r.value: n for r, n in STAGE_DECISIONS_BY_STAGE[stage].items() if r not in KEPT_REASONS}
        assert shown == expected, stage
        assert counts["dropped"] == sum(expected.values()) == manifest.n_in - manifest.n_out
        assert (counts["rows in"], counts["rows out"], counts["artifact"]) == (manifest.n_in, manifest.n_out,
                                                                               manifest.key)
        # the same numbers as the catalog, which loads the same decisions file
        in_catalog = dict(catalog.query("SELECT reason, count(*) FROM decisions WHERE artifact_id = ? AND NOT kept "
                                        "GROUP BY 1", [manifest.key]))
        assert shown == in_catalog, stage
    # most frequent reason first
    dedup = tables["sftflow-dedup"]
    assert [line["reason"] for line in dedup[1:]] == ["near_duplicate", "exact_duplicate"]


def test_a_stage_with_a_row_memo_shows_rows_computed_and_reused(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    manifest = store.writer("score", "k").commit(inputs=[], config_hash="c", code_hash="x", n_in=100, n_out=80,
                                                 stats={"n_scored": 7, "n_reused": 93})
    counts = publish.stage_table(stage_row("score", "", manifest), manifest)[0]
    assert (counts["rows computed"], counts["rows reused"]) == (7, 93)
    hit = publish.stage_table({**stage_row("score", "", manifest), "cache_hit": True}, manifest)[0]
    assert (hit["rows computed"], hit["rows reused"]) == (None, None)  # a cache hit computed nothing
    dedup = store.writer("dedup", "k").commit(inputs=[], config_hash="c", code_hash="x", n_in=5, n_out=5, stats={})
    assert publish.stage_table(stage_row("dedup", "", dedup), dedup)[0]["rows reused"] is None  # no memo


def test_a_stage_without_decisions_shows_its_counts_only(tmp_path, captured):
    store = ArtifactStore(tmp_path / "artifacts")
    writer = store.writer("evaluate", "k")
    (writer.tmp / "report.md").write_text("# report", encoding="utf-8")
    writer.write_json("metrics.json", {})
    manifest = writer.commit(inputs=[], config_hash="c", code_hash="x", n_in=0, n_out=0, stats={})
    assert publish.drops_by_reason(manifest) == {}
    table = publish.stage_table(stage_row("evaluate", "", manifest), manifest)
    assert len(table) == 1 and table[0]["dropped"] == 0


def test_run_summary_shows_drops_by_stage_and_reason_in_stage_order(captured):
    summary = {
        "run_id": "run1", "recipe": "demo", "stages": [{"stage": s} for s in ("ingest", "dedup", "filter")],
        "ledger": [{"stage": s, "n_in": 10, "n_kept": 8, "n_dropped": 2} for s in ("ingest", "dedup", "filter")],
        # as the summary's catalog query returns them: by stage name, then count
        "drop_reasons": [{"stage": "dedup", "reason": "exact_duplicate", "n": 2},
                         {"stage": "filter", "reason": "toxic", "n": 1},
                         {"stage": "filter", "reason": "contaminated", "n": 1},
                         {"stage": "ingest", "reason": "invalid_json", "n": 2}],
        "mixture": [],
    }
    publish.publish_run(summary)
    (key, markdown), = captured["markdown"]
    assert key == "sftflow-run"
    section = markdown.split("## Drops by reason", 1)[1].split("## Realized mixture", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:] == [
        "| ingest | invalid_json | 2 |",
        "| dedup | exact_duplicate | 2 |",
        "| filter | contaminated | 1 |",
        "| filter | toxic | 1 |",
    ]
    publish.publish_run({**summary, "drop_reasons": []})
    assert "No rows dropped." in captured["markdown"][-1][1]


def test_run_summary_of_a_diverged_gated_model_publishes(captured):
    """A model whose loss went NaN reaches the summary with null metric values (JSON has no NaN):
    the run artifact still renders and shows the gate, rather than ending the run with a format error."""
    summary = {
        "run_id": "run1", "recipe": "demo", "stages": [], "ledger": [], "drop_reasons": [], "mixture": [],
        "evals": [{"metric": "general_ppl", "value": None}, {"metric": "general_ppl_base", "value": 2124.56}],
        "gate": {"status": "gated", "message": "general perplexity rose from 2124.56 (base) to a figure that is not finite (tuned)"},
    }
    publish.publish_run(summary)
    markdown = captured["markdown"][-1][1]
    assert "| general_ppl | not finite |" in markdown and "| general_ppl_base | 2125 |" in markdown
    assert "**Model gate: GATED.**" in markdown
