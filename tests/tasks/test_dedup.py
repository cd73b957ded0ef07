"""Dedup stage: exact and MinHash near-duplicate removal on small literal rows."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.core.recipe_data import DedupConfig
from sftflow.tasks.core.records import RECORD_SCHEMA
from tests.stage_helpers import records_from_rows
from tests.tasks.dedup_rows import CFG, TEXT_A, TEXT_B, graded_rows, record, table, words
from sftflow.tasks.dedup import dedup_stage, deduplicate
from sftflow.tasks.lib.minhash import minhashes
from sftflow.tasks.lib.shingles import conversation_text, shingles

# Tests that assert decisions run on both hash families: rensa (default, exact-Jaccard
# verification) and numpy (datasketch's values, estimate verification; identical to datasketch).
BACKENDS = ["rensa", "numpy"]


def near_cfg(backend: str, **near) -> DedupConfig:
    return DedupConfig.model_validate({"near": {"backend": backend, **near}})


def decisions_by_id(out) -> dict[str, dict]:
    return {row["example_id"]: row for row in out.decisions.to_pylist()}


def kept_ids(out) -> set[str]:
    return set(out.records.column("example_id").to_pylist())




# ------------------------------------------------------------------------------------ exact --
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_exact_duplicates_keep_the_smallest_id_whatever_the_row_order(order):
    rows = [record("c", TEXT_A), record("a", TEXT_A), record("b", TEXT_A), record("d", TEXT_B)]
    out = deduplicate(table([rows[i] for i in order]), CFG)
    by_id = decisions_by_id(out)
    assert kept_ids(out) == {"a", "d"}
    assert {k: (v["reason"], v["dup_of"], v["score"]) for k, v in by_id.items()} == {
        "a": ("kept", None, None),
        "b": ("exact_duplicate", "a", 1.0),
        "c": ("exact_duplicate", "a", 1.0),
        "d": ("kept", None, None),
    }
    assert json.loads(by_id["b"]["detail"]) == {"group_size": 3}
    assert out.stats == {
        "n_in": 4, "exact_duplicates": 2, "near_duplicates": 0, "near_skipped_few_shingles": 0,
        "clusters": 0, "candidate_pairs": 0, "verified_pairs": 0, "near_verification": "exact_jaccard",
        "bands": 13, "rows": 7, "expected_recall_at_threshold": 0.9531,
    }
    assert out.decisions.column("example_id").to_pylist() == ["a", "b", "c", "d"]


def test_kept_records_keep_input_order_and_extra_columns():
    rows = [record("z", TEXT_B, note="first"), record("b", TEXT_A, note="x"), record("a", TEXT_A, note="y")]
    schema = RECORD_SCHEMA.append(pa.field("note", pa.string()))
    records = records_from_rows(rows, schema=schema)
    out = deduplicate(records, CFG)
    assert out.records.schema == schema
    assert out.records.column("example_id").to_pylist() == ["z", "a"]
    assert out.records.column("note").to_pylist() == ["first", "y"]


# ------------------------------------------------------------------------------------- near --
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_changed_word_in_60_is_a_near_duplicate_and_a_different_text_is_kept(backend):
    variant = TEXT_A.rsplit(" ", 1)[0] + " zzzword"
    out = deduplicate(table([record("n2", variant), record("x", TEXT_B), record("n1", TEXT_A)]), near_cfg(backend))
    by_id = decisions_by_id(out)
    assert kept_ids(out) == {"n1", "x"}
    near = by_id["n2"]
    assert (near["reason"], near["kept"], near["dup_of"]) == ("near_duplicate", False, "n1")
    # the score is the exact shingle Jaccard (rensa) or the MinHash estimate (numpy) between the
    # member and its representative
    grams = [shingles(conversation_text(record("_", t)["messages"]), 5) for t in (variant, TEXT_A)]
    if backend == "rensa":
        assert near["score"] == len(set(grams[0]) & set(grams[1])) / len(set(grams[0]) | set(grams[1]))
    else:
        sig_variant, sig_rep = minhashes(grams, 128, 1)
        assert near["score"] == sig_variant.jaccard(sig_rep)
    assert 0.8 <= near["score"] < 1.0
    assert json.loads(near["detail"]) == {"jaccard_to_representative": near["score"], "cluster_size": 2}
    assert json.loads(by_id["n1"]["detail"]) == {"cluster_size": 2}
    assert (by_id["x"]["reason"], by_id["x"]["detail"]) == ("kept", None)
    assert (out.stats["near_duplicates"], out.stats["clusters"]) == (1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_case_and_punctuation_do_not_separate_texts(backend):
    loud = TEXT_A.upper().replace(" ", ", ", 5) + "!"
    out = deduplicate(table([record("a", TEXT_A), record("b", loud)]), near_cfg(backend))
    assert decisions_by_id(out)["b"]["reason"] == "near_duplicate"
    assert decisions_by_id(out)["b"]["score"] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_records_are_only_exact_deduplicated(backend):
    # prompt "Hi" + 4 words = 5 words = 1 five-gram: below min_shingles = 3
    rows = [
        record("s1", "Sure, here it is.", prompt="Hi"),
        record("s2", "Sure, here it is.", prompt="Hi"),  # exact copy of s1
        record("s3", "Sure, here it was.", prompt="Hi"),  # one word off, but too short to judge
    ]
    out = deduplicate(table(rows), near_cfg(backend))
    by_id = decisions_by_id(out)
    assert kept_ids(out) == {"s1", "s3"}
    assert (by_id["s2"]["reason"], by_id["s2"]["dup_of"]) == ("exact_duplicate", "s1")
    assert json.loads(by_id["s3"]["detail"]) == {"near_skipped_n_shingles": 1}
    assert out.stats["near_skipped_few_shingles"] == 2  # s1 and s3; s2 never reached the near path
    assert out.stats["near_duplicates"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_shingles_boundary_is_inclusive(backend):
    # 2 + 5 words = 7 words = exactly 3 five-grams: eligible; same words, other punctuation
    rows = [record("a", "one two three four five", prompt="Hi there"),
            record("b", "One two, three four five!", prompt="Hi there.")]
    out = deduplicate(table(rows), near_cfg(backend))
    assert decisions_by_id(out)["b"]["reason"] == "near_duplicate"
    assert out.stats["near_skipped_few_shingles"] == 0
    # repeated words: 7 words but only 2 distinct five-grams ("hi hi hi hi hi", "hi hi hi hi ok")
    repeated = [record("c", "hi hi hi ok", prompt="Hi hi hi"), record("d", "hi hi hi ok!", prompt="hi, hi hi")]
    out = deduplicate(table(repeated), near_cfg(backend))
    assert json.loads(decisions_by_id(out)["c"]["detail"]) == {"near_skipped_n_shingles": 2}
    assert out.stats["near_skipped_few_shingles"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_disabled_paths(backend):
    rows = [record("a", TEXT_A), record("b", TEXT_A), record("c", TEXT_A.rsplit(" ", 1)[0] + " zzzword")]
    no_near = deduplicate(table(rows), near_cfg(backend, enabled=False))
    assert [d["reason"] for d in no_near.decisions.to_pylist()] == ["kept", "exact_duplicate", "kept"]
    # without exact dedup, identical rows are near duplicates with a Jaccard of 1.0
    no_exact = deduplicate(table(rows), DedupConfig.model_validate({"exact": False, "near": {"backend": backend}}))
    assert [(d["reason"], d["dup_of"]) for d in no_exact.decisions.to_pylist()] == [
        ("kept", None), ("near_duplicate", "a"), ("near_duplicate", "a"),
    ]
    assert no_exact.decisions.column("score").to_pylist()[1] == 1.0
    assert no_exact.stats["clusters"] == 1


def test_empty_input():
    out = deduplicate(table([]), CFG)
    assert out.records.num_rows == 0 and out.decisions.num_rows == 0
    assert out.stats["n_in"] == 0


# ------------------------------------------------------------------------------- user errors --
def test_duplicate_example_ids_are_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"example_id 'a' appears more than once.*passed to dedup twice"):
        deduplicate(table([record("a", TEXT_A), record("a", TEXT_B)]), CFG)


def test_missing_content_hash_names_the_row():
    row = {**record("a", TEXT_A), "content_hash": None}
    with pytest.raises(ValueError, match=r"'a' has no content_hash.*run normalize"):
        deduplicate(table([row]), CFG)


def test_a_single_lsh_band_is_refused_by_the_recipe():
    with pytest.raises(ValueError, match="bands"):
        DedupConfig.model_validate({"near": {"bands": 1, "rows": 8}})


# ----------------------------------------------------------------------------- determinism --
def mixed_rows() -> list[dict]:
    rows = []
    for k in range(8):
        text = words(40, seed=100 + k)
        rows.append(record(f"o{k}", " ".join(text)))
        rows.append(record(f"e{k}", " ".join(text)))  # exact copy
        edited = list(text)
        edited[-1] = "zzzword"
        rows.append(record(f"m{k}", " ".join(edited)))  # near copy
    rows.append(record("short1", "ok", prompt="Hi"))
    rows.append(record("short2", "ok", prompt="Hi"))
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffled_input_gives_identical_decisions(backend):
    rows = mixed_rows()
    cfg = near_cfg(backend)
    reference = deduplicate(table(rows), cfg)
    assert reference.stats["exact_duplicates"] == 9  # e0..e7 and short2
    assert reference.stats["near_duplicates"] == 8  # m_k -> e_k (e < m < o)
    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        out = deduplicate(table(shuffled), cfg)
        assert out.decisions.to_pylist() == reference.decisions.to_pylist()
        assert kept_ids(out) == kept_ids(reference)
        assert out.stats == reference.stats


BASES = [words(25, seed=200 + k) for k in range(4)]


@st.composite
def row_sets(draw):
    """Rows built from 4 base texts: exact copies, one-word edits and short rows, shuffled twice."""
    specs = draw(st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["copy", "edit", "short"]), st.integers(0, 24)),
        min_size=1, max_size=14,
    ))
    ids = draw(st.permutations([f"r{i:02d}" for i in range(len(specs))]))
    rows = []
    for example_id, (base, kind, position) in zip(ids, specs):
        text = list(BASES[base])
        if kind == "edit":
            text[position] = "zzzword"
        elif kind == "short":
            text = text[:2]
        rows.append(record(example_id, " ".join(text)))
    return rows, draw(st.permutations(rows))


@settings(max_examples=40, deadline=None)
@given(row_sets(), st.sampled_from(BACKENDS))
def test_shuffling_never_changes_decisions_and_every_row_gets_one(data, backend):
    rows, shuffled = data
    cfg = near_cfg(backend)
    first, second = deduplicate(table(rows), cfg), deduplicate(table(shuffled), cfg)
    assert kept_ids(first) == kept_ids(second)
    assert first.decisions.to_pylist() == second.decisions.to_pylist()
    input_ids = [r["example_id"] for r in rows]
    decided = first.decisions.column("example_id").to_pylist()
    assert sorted(decided) == sorted(input_ids)  # exactly one decision per row
    n_kept = sum(first.decisions.column("kept").to_pylist())
    assert n_kept == first.records.num_rows
    by_id = {d["example_id"]: d for d in first.decisions.to_pylist()}
    for d in by_id.values():
        # every drop points at a row that is kept; near drops reach the threshold with it
        assert d["kept"] == (d["dup_of"] is None)
        if d["dup_of"] is not None:
            assert d["dup_of"] in input_ids and by_id[d["dup_of"]]["kept"]
        if d["reason"] == "near_duplicate":
            assert d["score"] >= CFG.near.threshold


# -------------------------------------------------------------------------------- accuracy --
@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_pairs_are_all_found_and_unrelated_texts_never_merged(backend):
    rows, truths = [], []
    for k in range(50):
        text = words(200, seed=1000 + k)
        edited = list(text)
        edited[100] = "zzzword"  # changes 5 of 196 five-grams: true Jaccard 191/201 = 0.95
        a, b = set(shingles(" ".join(text), 5)), set(shingles(" ".join(edited), 5))
        truths.append(len(a & b) / len(a | b))
        rows += [record(f"p{k:02d}a", " ".join(text)), record(f"p{k:02d}b", " ".join(edited))]
    for k in range(50):
        rows.append(record(f"u{k:02d}", " ".join(words(200, seed=5000 + k))))
    assert min(truths) >= 0.9
    out = deduplicate(table(rows), near_cfg(backend))
    by_id = decisions_by_id(out)
    for k in range(50):
        assert (by_id[f"p{k:02d}b"]["reason"], by_id[f"p{k:02d}b"]["dup_of"]) == ("near_duplicate", f"p{k:02d}a")
    assert all(by_id[f"u{k:02d}"]["reason"] == "kept" for k in range(50))
    assert (out.stats["near_duplicates"], out.stats["clusters"]) == (50, 50)
    assert out.records.num_rows == 100


def test_stage_wrapper_is_registered():
    assert dedup_stage.stage == "dedup"


@pytest.mark.parametrize("backend", BACKENDS)
def test_lsh_candidates_below_the_threshold_are_not_dropped(backend):
    # 8 edits 25 words apart kill 40 of 196 five-grams: true Jaccard 156/236 = 0.66, where the
    # 13x7 S-curve still makes about half the pairs candidates; verification must reject them all
    rows = []
    for k in range(20):
        text = words(200, seed=3000 + k)
        edited = [("zzzword" if i % 25 == 12 else w) for i, w in enumerate(text)][:200]
        rows += [record(f"q{k:02d}a", " ".join(text)), record(f"q{k:02d}b", " ".join(edited))]
    out = deduplicate(table(rows), near_cfg(backend))
    assert out.stats["candidate_pairs"] >= 5
    assert out.stats["near_duplicates"] == 0
    assert out.records.num_rows == 40


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_duplicate_of_a_near_duplicate_points_at_the_survivor(backend):
    base = words(60, seed=7)
    edited = list(base)
    edited[-1] = "zzzword"
    rows = [record("a", " ".join(base)), record("b", " ".join(edited)), record("c", " ".join(edited))]
    out = deduplicate(table(rows), near_cfg(backend))
    decisions = {d["example_id"]: d for d in out.decisions.to_pylist()}
    assert decisions["b"]["reason"] == "near_duplicate" and decisions["b"]["dup_of"] == "a"
    assert decisions["c"]["reason"] == "exact_duplicate" and decisions["c"]["dup_of"] == "a"
    assert json.loads(decisions["c"]["detail"])["exact_of"] == "b"


# ------------------------------------------------------------------ numpy backend = datasketch --
REFERENCE = DedupConfig.model_validate({"near": {"backend": "datasketch"}})
NUMPY = near_cfg("numpy")


def test_numpy_backend_decides_exactly_like_datasketch():
    rows = graded_rows()
    ours, reference = deduplicate(table(rows), NUMPY), deduplicate(table(rows), REFERENCE)
    assert 5 < ours.stats["near_duplicates"] < 40  # the graded pairs fall on both sides of 0.8
    assert ours.decisions.equals(reference.decisions)
    assert ours.records.equals(reference.records)
    assert ours.stats == reference.stats


def test_rensa_drops_exactly_the_candidates_at_or_above_the_threshold():
    # graded pairs on both sides of 0.8: the rensa backend drops a pair's row exactly when its
    # exact shingle Jaccard reaches 0.8 (and the pair was a candidate), and says so
    rows = graded_rows()
    out = deduplicate(table(rows), CFG)
    assert CFG.near.backend == "rensa" and out.stats["near_verification"] == "exact_jaccard"
    by_id = decisions_by_id(out)
    grams = {r["example_id"]: set(shingles(conversation_text(r["messages"], CFG.near.roles), 5)) for r in rows}
    n_dropped = 0
    for k in range(40):
        a, b = f"g{k:02d}a", f"g{k:02d}b"
        jaccard = len(grams[a] & grams[b]) / len(grams[a] | grams[b])
        dropped = [d for d in (a, b) if by_id[d]["reason"] == "near_duplicate"]
        if jaccard < 0.8:
            assert not dropped, (k, jaccard)
        elif dropped:
            assert by_id[dropped[0]]["score"] == jaccard
            n_dropped += 1
    assert 5 < n_dropped == out.stats["near_duplicates"]  # ("copy" is g00a's exact duplicate)


@pytest.mark.parametrize("backend", BACKENDS)
def test_signature_batches_do_not_change_decisions(monkeypatch, backend):
    # rows hashed 7 at a time (texts and signature rows) decide exactly as in one batch
    import sftflow.tasks.dedup as dedup

    rows, cfg = graded_rows(), near_cfg(backend)
    whole = deduplicate(table(rows), cfg)
    monkeypatch.setattr(dedup, "ROWS_PER_TEXT_BATCH", 7)
    assert deduplicate(table(rows), cfg).decisions.equals(whole.decisions)


def test_exact_verification_in_bounded_passes_decides_alike(monkeypatch):
    # room for about one row's shingle hashes per pass: many passes over the conversations
    from sftflow.tasks.lib import minhash_rensa

    rows = graded_rows()
    whole = deduplicate(table(rows), CFG)
    monkeypatch.setattr(minhash_rensa, "VERIFY_NGRAMS_PER_PASS", 150)
    assert deduplicate(table(rows), CFG).decisions.equals(whole.decisions)


def test_stage_over_parts_decides_like_one_table(tmp_path):
    # the stage streams conversations part by part; its decisions and rows are the in-memory ones
    import pyarrow.parquet as pq

    from sftflow.tasks.core.artifacts import ArtifactStore
    from sftflow.tasks.core.stage import StageCall, execute

    whole = table(graded_rows())
    writer = ArtifactStore(tmp_path / "artifacts").writer("normalize", "in")
    for part, start in enumerate(range(0, whole.num_rows, 30)):
        writer.write_table(f"records-{part:05d}.parquet", whole.slice(start, 30))
    normalized = writer.commit(inputs=[], config_hash="c", code_hash="h", n_in=whole.num_rows,
                               n_out=whole.num_rows, stats={})
    call = StageCall(stage="dedup", key="d", code_hash="h", config=CFG.canonical(), config_hash="c",
                     inputs=[normalized], root=str(tmp_path), warehouse=str(tmp_path))
    manifest, _ = execute(call, dedup_stage.compute)
    reference = deduplicate(whole, CFG)
    assert pq.read_table(manifest.file("decisions.parquet")).equals(reference.decisions)
    kept = pa.concat_tables([pq.read_table(p) for p in manifest.files_named("records")])
    assert kept.column("example_id").to_pylist() == reference.records.column("example_id").to_pylist()
    assert {k: v for k, v in manifest.stats.items() if k != "compute_seconds"} == reference.stats
