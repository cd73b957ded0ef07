"""Mix stage: exact counts per category, capped upsampling, a hash-based eval split, shards."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core.recipe_data import MixConfig
from sftflow.tasks.core.records import RECORD_SCHEMA
from sftflow.tasks.core.stage import StageCall, execute
from sftflow.tasks.lib.mixture import eval_assignment, prompt_group
from tests.stage_helpers import mix_records

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


def test_upsampling_cap_fail_names_the_category_its_rows_and_the_rows_needed():
    records = make_records({"code": 10, "qa": 100})
    with pytest.raises(ValueError, match=r"category 'code' cannot fill its share: it has 10 train rows, so at "
                                         r"most 25 under max_upsample 2.5.*needs 50 rows.*short_category is 'fail'"):
        mix_records(records, cfg(shares={"code": 0.5, "qa": 0.5}, total_rows=100, max_upsample=2.5,
                                 short_category="fail"))


def test_upsampling_cap_scale_down_whole_copies_and_fill_tops_up_the_others():
    records = make_records({"code": 10, "qa": 100})
    shares = {"code": 0.5, "qa": 0.5}
    out = mix_records(records, cfg(shares=shares, total_rows=100, max_upsample=2.5))  # default: scale_down
    mix = mixture_by_category(out)
    assert (mix["code"]["n_rows"], mix["qa"]["n_rows"]) == (25, 25)
    assert mix["code"]["n_target"] == 50 and mix["code"]["n_cap"] == 25 and mix["code"]["n_shortfall"] == 25
    assert (mix["code"]["outcome"], mix["qa"]["outcome"]) == ("short", "scaled_down")
    assert out.stats["short_category"]["outcome"] == "scaled_down"
    assert out.stats["shortfall_rows"] == 25 and out.stats["n_train_rows"] == 50
    code_copies = Counter(r["example_id"] for r in shard_rows_of(out, "train") if r["category"] == "code")
    assert sorted(Counter(code_copies.values()).items()) == [(2, 5), (3, 5)]

    filled = mixture_by_category(mix_records(records, cfg(shares=shares, total_rows=100, max_upsample=2.5,
                                                          short_category="fill")))
    assert (filled["code"]["n_rows"], filled["qa"]["n_rows"]) == (25, 75)
    assert (filled["code"]["outcome"], filled["qa"]["outcome"]) == ("short", "filled")
    assert filled["code"]["realized_share"] == pytest.approx(0.25)


def test_share_of_a_category_without_rows_is_an_error_naming_it_and_the_categories_that_exist():
    records = make_records({"code": 20, "qa": 10})
    with pytest.raises(ValueError,
                       match=r"mix.shares names 'math', which has no rows.*code \(20 rows\), qa \(10 rows\)"):
        mix_records(records, cfg(shares={"code": 0.5, "math": 0.5}))


def test_category_in_data_but_not_in_shares_is_not_sampled_with_the_reason_and_listed():
    records = make_records({"code": 20, "qa": 10})
    out = mix_records(records, cfg(shares={"code": 1.0}))
    mix = mixture_by_category(out)
    assert out.stats["categories_not_in_shares"] == ["qa"]
    assert mix["qa"]["target_share"] == 0.0 and mix["qa"]["n_rows"] == 0 and mix["qa"]["outcome"] == "not_in_shares"
    assert mix["code"]["n_rows"] == 30 and mix["code"]["realized_share"] == 1.0  # default total: all 30 rows
    for d in out.decisions.to_pylist():
        if d["example_id"].startswith("qa-"):
            assert d["reason"] == "not_sampled"
            assert json.loads(d["detail"])["why"] == "category not in mix.shares"


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
    groups = [prompt_group(m, h) for m, h in zip(records["messages"].to_pylist(), records["content_hash"].to_pylist())]
    assert held_out == {i for i, v in zip(records["example_id"].to_pylist(), eval_assignment(groups, 0.25, 0)) if v}
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
    assert sum(train_copies.values()) == out.stats["n_train_rows"] <= 50
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
    import sftflow.tasks.lib.shards as shards
    import sftflow.tasks.mix as mix

    records = make_records({"code": 9, "qa": 4, "math": 6})
    config = cfg(shares={"code": 0.5, "qa": 0.3, "math": 0.2}, total_rows=40, max_upsample=3.0,
                 eval_fraction=0.2, shard_rows=2)
    whole = mix_records(records, config)

    monkeypatch.setattr(shards, "SPOOL_ROWS", 3)
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


# ------------------------------------------- issue 13: shares that hold, prompt-grouped eval --
def chat_records(rows: list[dict]) -> pa.Table:
    """Records from dicts with example_id, category, user, assistant (and optional system, tokens)."""
    out = []
    for position, r in enumerate(rows):
        messages = ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + [
            {"role": "user", "content": r["user"]}, {"role": "assistant", "content": r["assistant"]}]
        out.append({"example_id": r["example_id"], "source": "s", "source_format": "openai", "source_uri": "mem://s",
                    "content_hash": hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16],
                    "source_row": position, "category": r["category"], "messages": messages,
                    "n_tokens_total": r.get("tokens", 10), "score": 0.5})
    return pa.Table.from_pylist(out, schema=SCHEMA)


def random_prompt(rng: random.Random, n_words: int = 8) -> str:
    words = ["alpha", "river", "stone", "quiet", "market", "engine", "violet", "harbor", "signal", "lantern",
             "orbit", "meadow", "copper", "thread", "canyon", "ember", "pixel", "glacier", "saddle", "tundra"]
    return " ".join(rng.choice(words) for _ in range(n_words)) + f" {rng.randrange(10**6)}?"


def short_code_corpus(n_qa: int, n_code: int, seed: int = 13) -> pa.Table:
    """qa rows and too few code rows, every prompt distinct (the issue's shape)."""
    rng = random.Random(seed)
    rows = [{"example_id": f"{c}-{i:04d}", "category": c, "user": random_prompt(rng), "assistant": f"answer {i}"}
            for c, n in (("qa", n_qa), ("code", n_code)) for i in range(n)]
    return chat_records(rows)


def test_issue_example_short_code_scale_down_holds_every_share_within_a_hundredth():
    """shares {qa: .5, code: .5}, 40 code rows under max_upsample 3 and total_rows 400: the old
    mix capped code at 120 rows and kept qa at 200 (0.625 / 0.375)."""
    records = short_code_corpus(n_qa=300, n_code=40)
    for eval_fraction in (0.0, 0.05):
        out = mix_records(records, cfg(shares={"qa": 0.5, "code": 0.5}, total_rows=400, max_upsample=3.0,
                                       eval_fraction=eval_fraction))
        mix = mixture_by_category(out)
        for category in ("qa", "code"):
            assert abs(mix[category]["realized_share"] - 0.5) <= 0.01, (eval_fraction, mix[category])
        assert mix["code"]["n_rows"] == mix["code"]["n_cap"] == 3 * mix["code"]["n_available"]
        policy = out.stats["short_category"]
        assert policy["policy"] == "scale_down" and policy["outcome"] == "scaled_down"
        assert [s["category"] for s in policy["short_categories"]] == ["code"]
        assert policy["n_train_rows_target"] == 400 and policy["n_train_rows"] == out.stats["n_train_rows"] < 400

    three = short_code_corpus(n_qa=300, n_code=23)
    shares = {"qa": 0.45, "code": 0.35, "math": 0.2}
    math_rows = chat_records([{"example_id": f"math-{i:03d}", "category": "math", "user": f"what is {i} + {i}?",
                               "assistant": str(2 * i)} for i in range(90)])
    out = mix_records(pa.concat_tables([three, math_rows]), cfg(shares=shares, total_rows=500, max_upsample=2.0))
    for category, m in mixture_by_category(out).items():
        assert abs(m["realized_share"] - shares[category]) <= 0.01, m


def test_total_tokens_mode_reports_token_shares_and_row_shares_separately():
    rng = random.Random(5)
    rows = [{"example_id": f"{c}-{i:03d}", "category": c, "user": random_prompt(rng), "assistant": "a",
             "tokens": rng.randint(lo, hi)} for c, n, lo, hi in (("qa", 200, 20, 30), ("code", 12, 180, 220))
            for i in range(n)]
    out = mix_records(chat_records(rows), cfg(shares={"qa": 0.5, "code": 0.5}, total_tokens=20_000, max_upsample=3.0))
    mix = mixture_by_category(out)
    assert out.stats["share_unit"] == "tokens"
    train_tokens = sum(m["n_tokens"] for m in mix.values())
    assert out.stats["n_train_tokens"] == train_tokens
    for m in mix.values():
        assert m["realized_share"] == m["realized_share_tokens"] == pytest.approx(m["n_tokens"] / train_tokens)
        assert m["realized_share_rows"] == pytest.approx(m["n_rows"] / out.stats["n_train_rows"])
        assert abs(m["realized_share"] - 0.5) <= 0.01, m  # tokens hold their shares
    assert mix["qa"]["realized_share_rows"] > 0.8  # rows do not: qa rows are ~8x shorter
    # code wants 10,000 tokens / ~200 = ~50 rows, more than 3 x 12: the mixture is scaled down
    assert out.stats["short_category"]["outcome"] == "scaled_down"


def test_rows_mode_reports_rows_as_the_share_unit():
    out = mix_records(make_records({"code": 20, "qa": 20}, tokens={"code": 100, "qa": 10}), cfg())
    mix = mixture_by_category(out)
    assert out.stats["share_unit"] == "rows"
    assert mix["code"]["realized_share"] == mix["code"]["realized_share_rows"] == 0.5
    assert mix["code"]["realized_share_tokens"] == pytest.approx(2000 / 2200)


def split_of(out) -> dict[str, str]:
    return {d["example_id"]: ("eval" if d["reason"] == "held_out_eval" else "train") for d in out.decisions.to_pylist()}


def test_same_prompt_with_several_answers_never_spans_both_splits():
    rng = random.Random(21)
    rows = []
    for g in range(150):
        prompt = random_prompt(rng)
        for k in range(rng.choice((2, 3))):
            rows.append({"example_id": f"r-{len(rows):04d}", "category": "qa", "user": prompt,
                         "assistant": f"answer {k} of {g}", "system": rng.choice(["", "Be brief.", "You are kind."])})
    records = chat_records(rows)
    out = mix_records(records, cfg(eval_fraction=0.3, seed=3))
    split = split_of(out)
    by_prompt: dict[str, set] = {}
    for row in rows:
        by_prompt.setdefault(row["user"], set()).add(split[row["example_id"]])
    assert all(len(splits) == 1 for splits in by_prompt.values())
    assert 0.15 < sum(s == {"eval"} for s in by_prompt.values()) / len(by_prompt) < 0.45  # both splits used
    groups = {}
    for d in out.decisions.to_pylist():
        groups.setdefault(json.loads(d["detail"])["prompt_group"], set()).add(split[d["example_id"]])
    assert len(groups) == 150 and all(len(s) == 1 for s in groups.values())
    assert out.stats["eval_split"]["n_groups"] == 150


def test_near_duplicate_prompts_differing_in_case_punctuation_and_spaces_stay_together():
    rng = random.Random(8)
    variants = [lambda p: p, str.upper, lambda p: p.replace(" ", "  ") + "!!", lambda p: "  " + p.title().rstrip("?"),
                lambda p: p.replace(" ", ", ")]
    rows = []
    for g in range(120):
        prompt = random_prompt(rng)
        for v in variants:
            rows.append({"example_id": f"r-{len(rows):04d}", "category": "qa", "user": v(prompt), "assistant": f"a{g}"})
    split = split_of(mix_records(chat_records(rows), cfg(eval_fraction=0.5)))
    for g in range(120):
        assert len({split[f"r-{g * len(variants) + k:04d}"] for k in range(len(variants))}) == 1, g


def test_inserting_a_row_at_the_top_of_a_source_moves_no_other_row_between_splits():
    """example_id is hash(source, row position): an inserted first line shifts every id."""
    rng = random.Random(4)
    contents = [(random_prompt(rng), f"answer {i}") for i in range(400)]

    def source(rows):
        return chat_records([{"example_id": f"s-{position:04d}", "category": "qa", "user": u, "assistant": a}
                             for position, (u, a) in enumerate(rows)])

    config = cfg(eval_fraction=0.2, seed=1)
    before, after = source(contents), source([("A brand new first question?", "new")] + contents)
    split_before = split_of(mix_records(before, config))
    split_after = split_of(mix_records(after, config))
    moved = sum(split_before[f"s-{p:04d}"] != split_after[f"s-{p + 1:04d}"] for p in range(len(contents)))
    assert moved == 0


def test_data_hash_ignores_shard_rows_and_follows_the_rows():
    records = short_code_corpus(n_qa=60, n_code=15)
    config = cfg(shares={"qa": 0.6, "code": 0.4}, total_rows=80, eval_fraction=0.1)
    base = mix_records(records, config)
    small_shards = mix_records(records, config.model_copy(update={"shard_rows": 7}))
    assert len(small_shards.extra) > len(base.extra)  # other files ...
    assert small_shards.stats["data_hash"] == base.stats["data_hash"]  # ... the same rows in the same order

    def data_hash(records, **update):
        return mix_records(records, config.model_copy(update=update)).stats["data_hash"]

    assert data_hash(records.slice(1)) != base.stats["data_hash"]  # one input row fewer
    assert data_hash(records, seed=9) != base.stats["data_hash"]  # other rows drawn, another order
    assert data_hash(records, total_rows=79) != base.stats["data_hash"]  # one copy fewer


SHARED_ALPACA = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_en_demo.json"


@pytest.mark.skipif(not SHARED_ALPACA.is_file(), reason="../shared/data/alpaca_en_demo.json is absent")
def test_real_alpaca_file_prompt_groups_stay_together_and_shares_hold():
    from sftflow.tasks.lib.categories import classify_category

    rows = []
    for position, r in enumerate(json.loads(SHARED_ALPACA.read_text(encoding="utf-8"))):
        user = r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        rows.append({"example_id": f"alpaca-{position:04d}", "category": classify_category(messages),
                     "user": user, "assistant": r["output"]})
    out = mix_records(chat_records(rows), cfg(shares={"qa": 0.4, "code": 0.3, "math": 0.15, "creative": 0.15},
                                              total_rows=800, eval_fraction=0.2))
    split = split_of(out)
    by_prompt: dict[str, set] = {}
    for row in rows:
        by_prompt.setdefault(row["user"], set()).add(split[row["example_id"]])
    assert sum(len(s) > 1 for s in by_prompt.values()) == 0  # the file repeats 13 prompts with other answers
    assert out.stats["short_category"]["outcome"] == "scaled_down"  # ~42 code rows cannot fill 240
    for m in out.stats["mixture"]:
        assert abs(m["realized_share"] - m["target_share"]) <= 0.01, m


def test_catalog_latest_mixture_reads_the_new_mix_stats(tmp_path):
    """The catalog's `mixture` table takes its columns from stats["mixture"]; in token mode
    `realized_share` is the token share there too."""
    from sftflow.tasks.core.catalog import Catalog

    rows = [{"example_id": f"{c}-{i:03d}", "category": c, "user": f"{c} question {i}?", "assistant": "a",
             "tokens": t} for c, n, t in (("qa", 40, 20), ("code", 10, 100)) for i in range(n)]
    records = chat_records(rows)
    config = cfg(shares={"qa": 0.5, "code": 0.5}, total_tokens=4000, eval_fraction=0.1)
    call = StageCall(stage="mix", key="mix-k", code_hash="c", config=config.model_dump(mode="json"),
                     config_hash="h", root=str(tmp_path), warehouse=str(tmp_path / "wh"))
    manifest, _ = execute(call, lambda c: mix_records(records, MixConfig.model_validate(c.config)))
    catalog = Catalog(tmp_path / "wh" / "catalog.duckdb")
    catalog.start_run("r1", None, "demo", "rh", "cv", "{}", [])
    catalog.record_stage("r1", manifest, "", False, 0.1)
    catalog.finish_run("r1", "completed")
    got = {r[0]: r[1:] for r in catalog.query(
        "SELECT category, target_share, realized_share, n_rows, n_tokens FROM latest_mixture")}
    for m in manifest.stats["mixture"]:
        assert got[m["category"]] == (m["target_share"], m["realized_share_tokens"], m["n_rows"], m["n_tokens"])


def test_prefect_artifact_and_run_summary_say_what_the_policy_did(tmp_path, monkeypatch):
    import sftflow.flows.publish as publish

    published = {}
    monkeypatch.setattr(publish, "create_table_artifact",
                        lambda key, table, description: published.update({key: table}))
    monkeypatch.setattr(publish, "create_markdown_artifact",
                        lambda key, markdown, description: published.update({key: markdown}))
    records = pa.concat_tables([short_code_corpus(n_qa=300, n_code=40), make_records({"math": 5})])
    config = cfg(shares={"qa": 0.5, "code": 0.5}, total_rows=400, max_upsample=3.0)
    call = StageCall(stage="mix", key="mix-k", code_hash="c", config=config.model_dump(mode="json"),
                     config_hash="h", root=str(tmp_path), warehouse=str(tmp_path / "wh"))
    manifest, _ = execute(call, lambda c: mix_records(records, MixConfig.model_validate(c.config)))
    row = {"stage": "mix", "label": "", "n_in": manifest.n_in, "n_out": manifest.n_out, "cache_hit": False,
           "seconds": 0.1}
    publish.publish_stage(row, manifest, "r1")
    lines = [r["source"] for r in published["sftflow-mix"]]
    assert "short category code: 40 rows, at most 120 under max_upsample, 200 needed" in lines
    assert "policy scale_down: scaled_down (train rows 400 -> 240)" in lines
    assert "not in mix.shares (not sampled): math" in lines

    publish.publish_run({"run_id": "r1", "recipe": "x", "stages": [row], "ledger": [], "evals": [],
                         "mixture": manifest.stats["mixture"]})
    summary = published[publish.ARTIFACT_KEYS["run"]]
    assert "| code | rows | 0.500 | 0.500 | 0.500 | 0.500 | 120 | 40 | 0 | short |" in summary
    assert "| qa | rows | 0.500 | 0.500 | 0.500 | 0.500 | 120 | 120 | 0 | scaled_down |" in summary
    assert "| math | rows | 0.000 | 0.000 | 0.000 | 0.000 | 0 | 0 | 0 | not_in_shares |" in summary


def test_a_shared_category_whose_rows_are_all_eval_is_an_error_not_an_empty_mixture():
    prompt = next(f"code question {k}?" for k in range(1000)
                  if eval_assignment([prompt_group([{"role": "user", "content": f"code question {k}?"}], "")], 0.5, 0)[0])
    rows = [{"example_id": f"qa-{i:03d}", "category": "qa", "user": f"qa question {i}?", "assistant": "a"}
            for i in range(20)] + [{"example_id": "code-0", "category": "code", "user": prompt, "assistant": "a"}]
    with pytest.raises(ValueError, match=r"category 'code' has a share of 0.5 but no train rows \(its 1 rows are all "
                                         r"in the eval split\)"):
        mix_records(chat_records(rows), cfg(shares={"qa": 0.5, "code": 0.5}, eval_fraction=0.5))
    filled = mix_records(chat_records(rows), cfg(shares={"qa": 0.5, "code": 0.5}, eval_fraction=0.5,
                                                 short_category="fill"))
    assert mixture_by_category(filled)["code"]["n_eval"] == 1 and filled.stats["short_category"]["outcome"] == "filled"
