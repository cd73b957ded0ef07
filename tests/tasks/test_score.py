"""Score stage logic on literal rows, with a fake scorer (the real scorers: tests/tasks/lib/test_scorers.py, test_reward_model.py)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe_data import ScoreConfig
from sftflow.tasks.core.records import DECISION_SCHEMA, RECORD_SCHEMA
from tests.stage_helpers import records_from_rows, score_records
from sftflow.tasks.core.stage import StageCall, execute
from sftflow.tasks.score import GLOBAL_GROUP, keep_count, rank_groups, score_parts, score_stage
from sftflow.tasks.lib.scorers import ScoredPairs, Truncation


class ResponseNumberScorer:
    """Fake scorer: the response text is the score ("0.25" scores 0.25); records its calls."""

    name = "fake:response-number"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.calls.append(list(pairs))
        return [float(response) for _, response in pairs]


def row(example_id: str, category: str | None, score: float, prompt: str = "question?") -> dict:
    return {
        "example_id": example_id, "content_hash": f"h-{example_id}", "source": "s", "source_format": "alpaca",
        "source_uri": "data/s.json", "source_row": 0, "category": category,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": repr(float(score))}],
    }


def table(rows: list[dict]) -> pa.Table:
    return records_from_rows(rows)


def decisions_by_id(out) -> dict[str, dict]:
    return {d["example_id"]: d for d in out.decisions.to_pylist()}


def qa_and_code() -> pa.Table:
    # 10 qa rows scored 0..9 (ids in reverse score order so id order != score order), 5 code rows.
    qa = [row(f"qa{9 - s}", "qa", s) for s in range(10)]
    code = [row(f"code{s}", "code", s / 10) for s in range(5)]
    return table(qa + code)


# ------------------------------------------------------------------------------- keep counts --
def test_keep_count_rounds_up_and_forgives_binary_fractions():
    assert [keep_count(10, 0.8), keep_count(5, 0.8), keep_count(1, 0.01), keep_count(0, 0.8)] == [8, 4, 1, 0]
    assert 0.55 * 100 > 55  # the float trap the slack guards against
    assert keep_count(100, 0.55) == 55
    assert keep_count(3, 1.0) == 3
    assert keep_count(10, 0.71) == 8


def test_keeps_exact_top_rows_per_category():
    scorer = ResponseNumberScorer()
    out = score_records(qa_and_code(), ScoreConfig(keep_top_fraction=0.8), scorer)

    kept = out.records.to_pylist()
    assert sorted(r["example_id"] for r in kept if r["category"] == "qa") == [f"qa{i}" for i in range(8)]
    assert sorted(r["example_id"] for r in kept if r["category"] == "code") == ["code1", "code2", "code3", "code4"]
    assert out.stats["kept_by_category"] == {"code": 4, "qa": 8}
    assert out.stats["dropped_by_category"] == {"code": 1, "qa": 2}
    assert out.stats["n_in"] == 15
    assert out.stats["scorer"] == "fake:response-number"
    assert out.stats["score_mean_by_category"] == pytest.approx({"qa": 4.5, "code": 0.2})
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 15  # one call, every row
    assert scorer.calls[0][0] == ("question?", "0.0")

    decisions = decisions_by_id(out)
    assert out.decisions.schema == DECISION_SCHEMA
    assert len(decisions) == 15
    assert {d["reason"] for i, d in decisions.items() if not d["kept"]} == {Reason.BELOW_TOP_FRACTION.value}
    assert sorted(i for i, d in decisions.items() if not d["kept"]) == ["code0", "qa8", "qa9"]
    assert decisions["qa0"]["score"] == 9.0 and decisions["qa0"]["reason"] == Reason.KEPT.value
    assert json.loads(decisions["qa9"]["detail"]) == {"percentile": 0.0, "group": "qa", "cutoff_score": 2.0}
    assert json.loads(decisions["code4"]["detail"]) == {"percentile": 1.0, "group": "code", "cutoff_score": 0.1}


def test_output_keeps_input_order_and_base_columns_and_adds_score_columns():
    records = qa_and_code()
    out = score_records(records, ScoreConfig(keep_top_fraction=0.8), ResponseNumberScorer())
    assert out.records.schema.names == RECORD_SCHEMA.names + ["score", "score_percentile"]
    assert out.records.schema.field("score").type == pa.float64()
    assert out.records.schema.field("score_percentile").type == pa.float64()
    input_order = [i for i in records.column("example_id").to_pylist()]
    kept_ids = out.records.column("example_id").to_pylist()
    assert kept_ids == [i for i in input_order if i in set(kept_ids)]
    first = out.records.to_pylist()[0]
    assert first["messages"] == records.to_pylist()[2]["messages"]  # qa rows 0 and 1 (scores 0, 1) dropped
    assert first["score"] == 2.0


def test_percentiles_span_zero_to_one_within_each_category():
    out = score_records(qa_and_code(), ScoreConfig(keep_top_fraction=1.0), ResponseNumberScorer())
    by_category: dict[str, list[float]] = {}
    for r in out.records.to_pylist():
        by_category.setdefault(r["category"], []).append(r["score_percentile"])
    assert sorted(by_category["code"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sorted(by_category["qa"]) == pytest.approx([i / 9 for i in range(10)])
    assert out.records.num_rows == 15


def test_single_row_group_has_percentile_one_and_is_kept():
    out = score_records(table([row("a", "math", -3.0)]), ScoreConfig(keep_top_fraction=0.1), ResponseNumberScorer())
    assert out.records.to_pylist()[0]["score_percentile"] == 1.0
    assert json.loads(out.decisions.to_pylist()[0]["detail"]) == {"percentile": 1.0, "group": "math", "cutoff_score": -3.0}


def test_global_ranking_ignores_categories():
    cfg = ScoreConfig(keep_top_fraction=0.5, per_category=False)
    out = score_records(qa_and_code(), cfg, ResponseNumberScorer())
    # 15 rows, keep 8: qa scores 2..9 beat every code score (0..0.4).
    assert sorted(out.records.column("example_id").to_pylist()) == [f"qa{i}" for i in range(8)]
    assert out.stats["kept_by_category"] == {"code": 0, "qa": 8}
    details = [json.loads(d["detail"]) for d in out.decisions.to_pylist()]
    assert {d["group"] for d in details} == {GLOBAL_GROUP}
    assert sorted(d["percentile"] for d in details) == pytest.approx([i / 14 for i in range(15)])


def test_ties_break_by_example_id_whatever_the_input_order():
    rows = [row(f"id{i:02d}", "qa", 1.0) for i in range(10)]
    cfg = ScoreConfig(keep_top_fraction=0.3)
    outcomes = []
    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        out = score_records(table(shuffled), cfg, ResponseNumberScorer())
        outcomes.append({d["example_id"]: (d["kept"], json.loads(d["detail"])["percentile"])
                         for d in out.decisions.to_pylist()})
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert sorted(i for i, (kept, _) in outcomes[0].items() if kept) == ["id00", "id01", "id02"]
    assert outcomes[0]["id00"][1] == 1.0 and outcomes[0]["id09"][1] == 0.0


def test_rank_groups_cutoff_is_lowest_kept_score():
    ranks = rank_groups(["a", "b", "c", "d"], ["g", "g", "h", "h"], [5.0, 7.0, 1.0, 1.0], 0.5)
    assert [(r.kept, r.cutoff_score, r.percentile) for r in ranks] == [
        (False, 7.0, 0.0), (True, 7.0, 1.0), (True, 1.0, 1.0), (False, 1.0, 0.0)
    ]


def test_disabled_keeps_every_row_with_null_scores_and_never_scores():
    scorer = ResponseNumberScorer()
    out = score_records(qa_and_code(), ScoreConfig(enabled=False), scorer)
    assert scorer.calls == []
    assert out.records.num_rows == 15
    assert out.records.column("score").null_count == 15
    assert out.records.column("score_percentile").null_count == 15
    assert out.records.schema.field("score").type == pa.float64()
    assert {(d["kept"], d["reason"], d["score"]) for d in out.decisions.to_pylist()} == {(True, "kept", None)}
    assert out.stats["kept_by_category"] == {"code": 5, "qa": 10}
    assert out.stats["scorer"] is None


def test_enabled_without_scorer_is_an_error():
    with pytest.raises(ValueError, match="no scorer"):
        score_records(qa_and_code(), ScoreConfig(), None)


def test_row_without_assistant_turn_names_its_example_id():
    bad = row("bad1", "qa", 0.0)
    bad["messages"] = [{"role": "user", "content": "only a question"}]
    with pytest.raises(ValueError, match="example_id bad1: conversation has no assistant turn"):
        score_records(table([row("ok", "qa", 1.0), bad]), ScoreConfig(), ResponseNumberScorer())


def test_empty_input_gives_empty_output():
    scorer = ResponseNumberScorer()
    out = score_records(table([]), ScoreConfig(), scorer)
    assert out.records.num_rows == 0 and out.decisions.num_rows == 0
    assert out.records.schema.names[-2:] == ["score", "score_percentile"]
    assert scorer.calls == []


def test_rescoring_replaces_old_score_columns():
    first = score_records(qa_and_code(), ScoreConfig(keep_top_fraction=1.0), ResponseNumberScorer())
    again = score_records(first.records, ScoreConfig(keep_top_fraction=0.8), ResponseNumberScorer())
    assert again.records.schema.names.count("score") == 1
    assert again.records.num_rows == 12


def test_stage_wrapper_reads_input_artifact(tmp_path):
    # Disabled scoring exercises the wrapper's wiring without loading a model.
    warehouse = tmp_path / "warehouse"
    store = ArtifactStore(warehouse / "artifacts")
    writer = store.writer("filter", "k1")
    writer.write_table("records-00000.parquet", qa_and_code())
    manifest = writer.commit(inputs=[], config_hash="c", code_hash="x", n_in=15, n_out=15, stats={})
    call = StageCall(stage="score", key="k2", code_hash="x", config=ScoreConfig(enabled=False).canonical(),
                     config_hash="c", inputs=[manifest], root=str(tmp_path), warehouse=str(warehouse))
    manifest, _ = execute(call, score_stage.compute)
    assert (manifest.n_in, manifest.n_out) == (15, 15)
    assert pq.read_table(manifest.file("decisions.parquet")).num_rows == 15
    assert score_stage.stage == "score"


@pytest.mark.parametrize("per_category", [True, False])
def test_parts_rank_across_parts_like_one_table(per_category):
    # the ranking is global: scoring 3 parts gives the decisions and rows of the whole table
    whole = qa_and_code()
    cfg = ScoreConfig(keep_top_fraction=0.6, per_category=per_category)
    reference = score_records(whole, cfg, ResponseNumberScorer())
    parted = score_parts(lambda: [whole.slice(0, 4), whole.slice(4, 6), whole.slice(10)], cfg, ResponseNumberScorer())
    parts = list(parted.parts)
    assert len(parts) == 3
    assert pa.concat_tables([p.decisions for p in parts]).to_pylist() == reference.decisions.to_pylist()
    assert pa.concat_tables([p.records for p in parts]).to_pylist() == reference.records.to_pylist()
    assert parted.stats() == reference.stats


# ------------------------------------------------------------------------------- truncation --
class CuttingScorer(ResponseNumberScorer):
    """Fake scorer that also reports truncation: it 'reads' 10 words, the prompt's end first."""

    name = "fake:cutting"

    def score_truncated(self, pairs: list[tuple[str, str]]) -> ScoredPairs:
        truncations = []
        for prompt, response in pairs:
            n_prompt, n_response = len(prompt.split()), len(response.split())
            response_dropped = max(0, n_response - 10)
            truncations.append(Truncation(max(0, n_prompt - (10 - n_response + response_dropped)), response_dropped))
        return ScoredPairs(self.score(pairs), truncations)


def test_truncation_is_recorded_in_each_decision_and_counted_in_stats():
    rows = [row("short", "qa", 1.0), row("long", "qa", 2.0, prompt="word " * 30), row("plain", "qa", 3.0)]
    out = score_records(table(rows), ScoreConfig(keep_top_fraction=1.0), CuttingScorer())
    details = {d["example_id"]: json.loads(d["detail"]) for d in out.decisions.to_pylist()}
    assert details["long"]["prompt_tokens_dropped"] == 21 and details["long"]["response_tokens_dropped"] == 0
    assert details["short"]["prompt_tokens_dropped"] == 0 and details["short"]["response_tokens_dropped"] == 0
    assert (out.stats["n_prompt_truncated"], out.stats["n_response_truncated"]) == (1, 0)
    # parts give the same stats as the whole table
    parted = score_parts(lambda: [table(rows[:1]), table(rows[1:])], ScoreConfig(keep_top_fraction=1.0), CuttingScorer())
    list(parted.parts)
    assert parted.stats() == out.stats


def test_a_scorer_that_does_not_report_truncation_leaves_it_unknown():
    out = score_records(qa_and_code(), ScoreConfig(), ResponseNumberScorer())
    assert out.stats["n_prompt_truncated"] is None and out.stats["n_response_truncated"] is None
    assert all("prompt_tokens_dropped" not in json.loads(d["detail"]) for d in out.decisions.to_pylist())
