"""Mix stage: exact counts per category, capped upsampling, a hash-based eval split, shards."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.recipe import MixConfig
from tasks.core.records import RECORD_SCHEMA
from tasks.core.stage import StageCall, execute
from tasks.mix import (
    apportion,
    eval_assignment,
    mix_records,
    sample_copies,
    target_counts,
    target_shares,
)

SCHEMA = RECORD_SCHEMA.append(pa.field("n_tokens_total", pa.int64())).append(pa.field("score", pa.float64()))


def make_records(sizes: dict[str, int], tokens: dict[str, int] | None = None, schema: pa.Schema = SCHEMA) -> pa.Table:
    """`sizes[c]` rows of category c, ids "<c>-000"…; n_tokens_total = tokens[c] (default 10)."""
    rows = []
    for category, n in sizes.items():
        for i in range(n):
            rows.append({
                "example_id": f"{category}-{i:03d}", "content_hash": f"h-{category}-{i}", "source": "s",
                "source_format": "alpaca", "source_uri": "mem://s", "source_row": i, "category": category,
                "messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}],
                "n_tokens_total": (tokens or {}).get(category, 10), "score": i / 100,
            })
    return pa.Table.from_pylist(rows, schema=schema)


def cfg(**kwargs) -> MixConfig:
    return MixConfig(**{"eval_fraction": 0.0, **kwargs})


def mixture_by_category(out) -> dict[str, dict]:
    return {m["category"]: m for m in out.stats["mixture"]}


def shard_rows_of(out, split: str) -> list[dict]:
    return [row for name, table in sorted(out.extra.items()) if name.startswith(f"shards/{split}/")
            for row in table.select(["example_id", "category", "split"]).to_pylist()]


def decisions_by_id(out) -> dict[str, dict]:
    return {d["example_id"]: d for d in out.decisions.to_pylist()}


# ------------------------------------------------------------------------------ pure pieces --
def test_apportion_largest_remainder_sums_exactly():
    assert apportion({"code": 3.15, "conversation": 2.45, "qa": 1.4}, 7) == {"code": 3, "conversation": 3, "qa": 1}
    assert apportion({"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}  # tie: by name
    assert apportion({"a": 0.0, "b": 0.0}, 5) == {"a": 0, "b": 0}


def test_target_shares_proportional_by_default_and_shares_when_given():
    assert target_shares({"qa": 60, "code": 40}, MixConfig()) == {"code": 0.4, "qa": 0.6}
    given = target_shares({"qa": 60, "code": 40}, MixConfig(shares={"qa": 0.7, "math": 0.3}))
    assert given == {"code": 0.0, "math": 0.3, "qa": 0.7}


def test_target_counts_from_tokens_uses_each_category_mean():
    shares = {"code": 0.5, "qa": 0.5}
    total, counts = target_counts(shares, {"code": 20, "qa": 20}, MixConfig(total_tokens=2000),
                                  {"code": 100.0, "qa": 50.0, "*": 75.0})
    assert (total, counts) == (30, {"code": 10, "qa": 20})


def test_sample_copies_full_copies_plus_remainder_without_replacement():
    copies = sample_copies(10, 25, seed=0, category="code")
    assert sum(copies) == 25
    assert Counter(copies) == {2: 5, 3: 5}
    assert sample_copies(10, 25, seed=0, category="code") == copies
    assert sample_copies(0, 5, seed=0, category="code") == []


# ------------------------------------------------------------------------------ exact counts --
def test_three_categories_exact_train_counts_sum_to_total_rows():
    records = make_records({"code": 50, "conversation": 30, "qa": 20})
    out = mix_records(records, cfg(shares={"code": 0.45, "conversation": 0.35, "qa": 0.2}, total_rows=70))
    mix = mixture_by_category(out)
    # 31.5 / 24.5 / 14: floors 31+24+14 = 69; the one unit left goes to code (tie .5, by name)
    assert {c: m["n_rows"] for c, m in mix.items()} == {"code": 32, "conversation": 24, "qa": 14}
    assert out.stats["total_rows_target"] == 70
    assert Counter(r["category"] for r in shard_rows_of(out, "train")) == {"code": 32, "conversation": 24, "qa": 14}
    assert mix["code"]["realized_share"] == pytest.approx(32 / 70)
    assert mix["qa"]["target_share"] == 0.2
    assert {c: m["n_unique"] for c, m in mix.items()} == {"code": 32, "conversation": 24, "qa": 14}
    assert {c: m["n_available"] for c, m in mix.items()} == {"code": 50, "conversation": 30, "qa": 20}
    assert {c: m["n_tokens"] for c, m in mix.items()} == {"code": 320, "conversation": 240, "qa": 140}
    assert out.stats["n_in"] == 100 and out.stats["n_out"] == 70


def test_default_total_is_train_available_rows():
    out = mix_records(make_records({"code": 30, "qa": 10}), cfg())
    assert out.stats["total_rows_target"] == 40
    assert {m["category"]: m["n_rows"] for m in out.stats["mixture"]} == {"code": 30, "qa": 10}
    assert set(out.decisions["reason"].to_pylist()) == {"selected"}


def test_upsampling_is_capped_by_max_upsample_without_redistribution():
    records = make_records({"code": 10, "qa": 100})
    out = mix_records(records, cfg(shares={"code": 0.5, "qa": 0.5}, total_rows=100, max_upsample=2.5))
    mix = mixture_by_category(out)
    assert mix["code"]["n_rows"] == 25 and mix["code"]["n_target"] == 50 and mix["code"]["n_shortfall"] == 25
    assert mix["qa"]["n_rows"] == 50 and mix["qa"]["n_shortfall"] == 0  # not topped up with code's shortfall
    assert out.stats["shortfall_rows"] == 25
    code_copies = Counter(r["example_id"] for r in shard_rows_of(out, "train") if r["category"] == "code")
    assert sorted(Counter(code_copies.values()).items()) == [(2, 5), (3, 5)]
    assert mix["code"]["n_unique"] == 10 and mix["code"]["realized_share"] == pytest.approx(25 / 75)


def test_share_of_missing_category_is_reported_with_zero_realized():
    records = make_records({"code": 20, "qa": 10})
    out = mix_records(records, cfg(shares={"code": 0.5, "math": 0.5}))
    mix = mixture_by_category(out)
    assert out.stats["missing_categories"] == ["math"]
    assert mix["math"] == {"category": "math", "target_share": 0.5, "realized_share": 0.0, "n_available": 0,
                           "n_rows": 0, "n_unique": 0, "n_eval": 0, "n_tokens": 0, "n_target": 15,
                           "n_shortfall": 15}
    assert mix["qa"]["target_share"] == 0.0 and mix["qa"]["n_rows"] == 0  # in data, not in shares
    assert mix["code"]["n_rows"] == 15 and mix["code"]["realized_share"] == 1.0
    reasons = Counter((d["example_id"].split("-")[0], d["reason"]) for d in out.decisions.to_pylist())
    assert reasons == {("code", "selected"): 15, ("code", "not_sampled"): 5, ("qa", "not_sampled"): 10}


def test_temperature_flattens_and_sharpens_natural_shares():
    records = make_records({"code": 80, "qa": 20})

    def counts(temperature):
        out = mix_records(records, cfg(total_rows=100, temperature=temperature))
        return {m["category"]: m["n_rows"] for m in out.stats["mixture"]}

    assert counts(None) == {"code": 80, "qa": 20}
    assert counts(2.0) == {"code": 67, "qa": 33}  # 0.8^0.5 : 0.2^0.5 = 2/3 : 1/3
    assert counts(0.5) == {"code": 94, "qa": 6}  # 0.64 : 0.04 = 94.1 : 5.9
    assert counts(1000.0) == {"code": 50, "qa": 50}


# ----------------------------------------------------------------------------------- eval --
def test_eval_split_is_deterministic_and_order_independent():
    records = make_records({"code": 60, "conversation": 40, "qa": 25})
    config = cfg(shares={"code": 0.3, "conversation": 0.3, "qa": 0.4}, total_rows=130, eval_fraction=0.2, seed=7)
    out = mix_records(records, config)
    order = list(range(records.num_rows))
    random.Random(1).shuffle(order)
    shuffled = mix_records(records.take(order), config)
    assert out.decisions.equals(shuffled.decisions)
    assert sorted(out.extra) == sorted(shuffled.extra)
    for name, table in out.extra.items():
        assert table.equals(shuffled.extra[name]), name
    assert out.stats == shuffled.stats

    ids = records["example_id"].to_pylist()
    verdicts = dict(zip(ids, eval_assignment(ids, 0.2, 7)))
    subset = ids[::3]  # a row's verdict does not depend on which other rows are present
    assert eval_assignment(subset, 0.2, 7) == [verdicts[i] for i in subset]
    assert eval_assignment(ids, 0.2, 8) != list(verdicts.values())


def test_eval_fraction_is_roughly_right_and_eval_rows_never_train():
    ids = [f"ex-{i:05d}" for i in range(2000)]
    share = sum(eval_assignment(ids, 0.1, seed=0)) / len(ids)
    assert abs(share - 0.1) <= 0.015

    records = make_records({"code": 120, "qa": 80})
    out = mix_records(records, cfg(total_rows=400, eval_fraction=0.25))
    decisions = decisions_by_id(out)
    held_out = {i for i, d in decisions.items() if d["reason"] == "held_out_eval"}
    assert held_out == {i for i, v in zip(records["example_id"].to_pylist(),
                                          eval_assignment(records["example_id"].to_pylist(), 0.25, 0)) if v}
    eval_rows = shard_rows_of(out, "eval")
    train_ids = {r["example_id"] for r in shard_rows_of(out, "train")}
    assert Counter(r["example_id"] for r in eval_rows) == Counter(held_out)  # each once
    assert not held_out & train_ids
    assert {r["split"] for r in eval_rows} == {"eval"}
    mix = mixture_by_category(out)
    assert sum(m["n_eval"] for m in mix.values()) == len(held_out)
    assert sum(m["n_available"] for m in mix.values()) == 200 - len(held_out)
    assert out.stats["n_out"] == 400 + len(held_out)


# ---------------------------------------------------------------------------- token budget --
def test_total_tokens_mode_converts_with_category_mean_tokens():
    records = make_records({"code": 20, "qa": 20}, tokens={"code": 100, "qa": 50})
    out = mix_records(records, cfg(shares={"code": 0.5, "qa": 0.5}, total_tokens=2000))
    mix = mixture_by_category(out)
    assert out.stats["total_rows_target"] == 30
    assert (mix["code"]["n_rows"], mix["qa"]["n_rows"]) == (10, 20)
    assert (mix["code"]["n_tokens"], mix["qa"]["n_tokens"]) == (1000, 1000)
    assert sum(s["n_tokens"] for s in out.stats["shards"] if s["split"] == "train") == 2000


def test_total_tokens_without_token_column_is_a_clear_error():
    records = make_records({"code": 5}).drop_columns(["n_tokens_total"])
    with pytest.raises(ValueError, match="n_tokens_total.*filter stage"):
        mix_records(records, cfg(total_tokens=100))
    out = mix_records(records.drop_columns(["score"]), cfg(total_rows=5))  # rows mode needs neither
    assert out.stats["mixture"][0]["n_tokens"] is None
    assert out.decisions["score"].to_pylist() == [None] * 5


# ------------------------------------------------------------------------ decisions, shards --
def test_one_decision_per_input_and_selected_rows_appear_exactly_copies_times():
    records = make_records({"code": 7, "conversation": 40, "qa": 13})
    out = mix_records(records, cfg(shares={"code": 0.4, "conversation": 0.2, "qa": 0.4}, total_rows=50,
                                   eval_fraction=0.1))
    decisions = out.decisions.to_pylist()
    assert len(decisions) == records.num_rows
    assert sorted(d["example_id"] for d in decisions) == sorted(records["example_id"].to_pylist())
    train_copies = Counter(r["example_id"] for r in shard_rows_of(out, "train"))
    n_selected = 0
    for d in decisions:
        if d["reason"] == "selected":
            n_selected += 1
            assert d["kept"] and train_copies[d["example_id"]] == json.loads(d["detail"])["copies"] >= 1
        else:
            assert train_copies[d["example_id"]] == 0
        assert d["kept"] == (d["reason"] != "not_sampled")
    assert n_selected == len(train_copies)
    assert sum(train_copies.values()) == 50 - out.stats["shortfall_rows"]
    scores = {i: s for i, s in zip(records["example_id"].to_pylist(), records["score"].to_pylist())}
    assert all(d["score"] == scores[d["example_id"]] for d in decisions)


def test_shards_split_by_shard_rows_and_stats_names_equal_extra_keys():
    records = make_records({"code": 25, "qa": 3})
    out = mix_records(records, cfg(shard_rows=10))
    assert sorted(out.extra) == ["shards/train/code-00000.parquet", "shards/train/code-00001.parquet",
                                 "shards/train/code-00002.parquet", "shards/train/qa-00000.parquet"]
    assert [s["name"] for s in out.stats["shards"]] == list(out.extra)
    assert [s["n_rows"] for s in out.stats["shards"]] == [10, 10, 5, 3]
    assert [s["n_tokens"] for s in out.stats["shards"]] == [100, 100, 50, 30]
    for name, table in out.extra.items():
        assert table.schema == records.schema.append(pa.field("split", pa.string()))
        assert set(table["split"].to_pylist()) == {"train"}
    assert out.records.num_rows == 0 and out.records.schema == records.schema


def test_stage_runner_writes_shards_at_the_names_in_stats(tmp_path):
    records = make_records({"code": 12, "qa": 6})
    config = cfg(total_rows=30, eval_fraction=0.3, shard_rows=8)
    call = StageCall(stage="mix", key="k1", code_hash="c", config=config.model_dump(mode="json"),
                     config_hash="h", root=str(tmp_path), warehouse=str(tmp_path / "wh"))
    manifest, hit = execute(call, lambda c: mix_records(records, MixConfig.model_validate(c.config)))
    assert not hit and manifest.n_out == 30 + manifest.stats["n_eval_rows"]
    for shard in manifest.stats["shards"]:
        table = pq.read_table(manifest.file(shard["name"]))
        assert table.num_rows == shard["n_rows"]
        assert set(table["split"].to_pylist()) == {shard["split"]}


def test_seed_changes_the_selection_and_the_same_seed_repeats_it():
    records = make_records({"code": 40, "qa": 40})

    def selected(seed):
        out = mix_records(records, cfg(total_rows=30, seed=seed))
        return {d["example_id"] for d in out.decisions.to_pylist() if d["reason"] == "selected"}

    assert len(selected(0)) == 30
    assert selected(0) == selected(0)
    assert selected(0) != selected(1)


def test_unusable_rows_are_refused_with_the_example_named():
    records = make_records({"code": 3})
    no_category = records.set_column(records.schema.get_field_index("category"), "category",
                                     pa.array([None, "code", "code"], pa.string()))
    with pytest.raises(ValueError, match="'code-000' has no category.*normalize"):
        mix_records(no_category, cfg())
    with pytest.raises(ValueError, match="example_id 'code-000' occurs 2 times"):
        mix_records(pa.concat_tables([records, records.slice(0, 1)]), cfg())
    bad_slug = records.set_column(records.schema.get_field_index("category"), "category",
                                  pa.array(["../x", "code", "code"], pa.string()))
    with pytest.raises(ValueError, match="not a lowercase slug"):
        mix_records(bad_slug, cfg())


def test_streamed_shards_equal_the_one_table_mix_whatever_the_parts_and_spool_sizes(tmp_path, monkeypatch):
    """mix_parts reads the input part by part and gathers shard rows through spool files; with
    parts of 4 rows and spool files of at most 3 rows (upsampled rows, eval rows, several
    categories) it writes the same shards, decisions and stats as from one table, and every
    shard row is its input row, as often as its decision's copies say."""
    import tasks.mix as mix

    records = make_records({"code": 9, "qa": 4, "math": 6})
    config = cfg(shares={"code": 0.5, "qa": 0.3, "math": 0.2}, total_rows=40, max_upsample=3.0,
                 eval_fraction=0.2, shard_rows=2)
    whole = mix_records(records, config)

    monkeypatch.setattr(mix, "SPOOL_ROWS", 3)
    output = mix.mix_parts(records.schema,
                           lambda columns: [records.slice(start, 4).select(columns) if columns else records.slice(start, 4)
                                            for start in range(0, records.num_rows, 4)],
                           config, tmp_path / "spool")
    parts = list(output.parts)
    streamed = {name: table for part in parts for name, table in part.extra.items()}
    assert list(streamed) == list(whole.extra)
    assert all(streamed[name].equals(whole.extra[name]) for name in whole.extra)
    assert parts[-1].decisions.equals(whole.decisions) and output.stats() == whole.stats

    by_id = {row["example_id"]: row for row in records.to_pylist()}
    copies = Counter()
    for name, table in streamed.items():
        for row in table.to_pylist():
            assert {k: v for k, v in row.items() if k != "split"} == by_id[row["example_id"]]
            copies[(row["split"], row["example_id"])] += 1
    for decision in whole.decisions.to_pylist():
        if decision["reason"] == "selected":
            assert copies[("train", decision["example_id"])] == json.loads(decision["detail"])["copies"]
        elif decision["reason"] == "held_out_eval":
            assert copies[("eval", decision["example_id"])] == 1
    assert sum(copies.values()) == sum(s["n_rows"] for s in whole.stats["shards"])
