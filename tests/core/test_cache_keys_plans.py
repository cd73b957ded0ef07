"""Keys hold exactly what changes a stage's output (issue 13, item 10), checked on the plan_*
functions with real inputs: files edited on disk, real ingest/normalize/dedup artifacts built from
../shared/data, no Prefect.

- missing before: what the filter's per-process memo loaded, a hub tokenizer's revision, the reward
  model's revision, dtype and device;
- present before but changing nothing: batch sizes, dedup.near.backend, mix.shard_rows (through
  the mix artifact's `data_hash`), reworded decision details (downstream reads records, not
  decisions.parquet).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks import dedup, filters, ingest, mix, normalize, train
from sftflow.tasks import score as score_stage_module
from sftflow.tasks.lib import scorers
from sftflow.tasks.core.artifacts import ArtifactStore, Manifest
from sftflow.tasks.core.recipe import parse_recipe
from tests.stage_helpers import read_records, records_from_rows
from sftflow.tasks.core.stage import execute
from sftflow.tasks.core.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
ALPACA = SHARED / "alpaca_en_demo.json"
C4 = SHARED / "c4_demo.jsonl"
HUB_MODEL = "example-org/example-model"  # shaped like a hub id; nothing is downloaded
REV_A, REV_B = "a" * 40, "b" * 40

needs_shared = pytest.mark.skipif(not ALPACA.is_file() or not C4.is_file(), reason="../shared/data is absent")


def recipe(**sections):
    data = {"name": "keys", "sources": [{"name": "alpaca", "path": "data/alpaca.json", "format": "alpaca"}]}
    data.update(sections)
    return parse_recipe(data)


def ws_at(root: Path) -> Workspace:
    return Workspace(root=root, warehouse=root / "warehouse")


def alpaca_rows(n: int, seed: int = 13) -> list[dict]:
    """n seeded rows of the shared Alpaca file, as chat records (real instructions and answers)."""
    raw = json.loads(ALPACA.read_text(encoding="utf-8"))
    picked = random.Random(seed).sample([r for r in raw if len(r["output"].split()) >= 30], n)
    return [{"example_id": f"alpaca-{i:03d}", "source": "alpaca", "source_format": "alpaca", "category": "qa",
             "messages": [{"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()},
                          {"role": "assistant", "content": r["output"]}]}
            for i, r in enumerate(picked)]


def commit(store: ArtifactStore, stage: str, key: str, tables: dict[str, pa.Table], stats=None) -> Manifest:
    writer = store.writer(stage, key)
    for name, table in tables.items():
        writer.write_table(name, table)
    n = next(iter(tables.values())).num_rows
    return writer.commit(inputs=[], config_hash="c", code_hash="c", n_in=n, n_out=n, stats=stats or {})


@pytest.fixture(scope="module")
def real_chain(tmp_path_factory):
    """ingest -> normalize -> dedup of the shared Alpaca file, computed for real (no Prefect)."""
    if not ALPACA.is_file():
        pytest.skip("../shared/data is absent")
    from sftflow.tasks.dedup import dedup_stage
    from sftflow.tasks.ingest import ingest_stage
    from sftflow.tasks.normalize import normalize_stage

    root = tmp_path_factory.mktemp("chain")
    (root / "data").mkdir()
    shutil.copy(ALPACA, root / "data" / "alpaca.json")
    rec, ws = recipe(), ws_at(root)
    ingested, _ = execute(ingest.plan(rec.sources[0], ws), ingest_stage.compute)
    normalized, _ = execute(normalize.plan(rec, ingested, ws), normalize_stage.compute)
    deduped, _ = execute(dedup.plan(rec, [normalized], ws), dedup_stage.compute)
    return root, normalized, deduped


# ------------------------------------------------------------------ missing: the filter memo --
@needs_shared
def test_filter_memo_reloads_an_eval_set_edited_between_two_in_process_runs(tmp_path):
    """Two filter runs in one process (a long-lived worker, a second in-process flow run): the
    second must see the eval set as edited, not the n-grams the first one loaded."""
    rows = alpaca_rows(12)
    leaked = rows[5]["messages"][1]["content"]  # a real answer, about to be copied into the eval set
    c4_texts = [json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()[:20]]
    eval_file = tmp_path / "data" / "eval.jsonl"
    eval_file.parent.mkdir(parents=True)
    eval_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in c4_texts), encoding="utf-8")
    rec = recipe(filters={"toxicity": {"enabled": False},
                          "decontaminate": {"eval_sets": [{"name": "heldout", "path": "data/eval.jsonl"}]}})
    ws = ws_at(tmp_path)
    records = records_from_rows(rows)
    upstream = commit(ArtifactStore(ws.artifacts_dir), "dedup", "in", {"records-00000.parquet": records})

    first = filters.plan(rec, [upstream], ws)
    before = filters.filter_part(first, records)
    assert "contaminated" not in before.decisions.column("reason").to_pylist()

    with eval_file.open("a", encoding="utf-8") as handle:  # the eval set gains the answer verbatim
        handle.write(json.dumps({"text": leaked}) + "\n")
    second = filters.plan(rec, [upstream], ws)
    assert second.key != first.key
    after = filters.filter_part(second, records)
    reasons = dict(zip(after.decisions.column("example_id").to_pylist(), after.decisions.column("reason").to_pylist()))
    assert reasons["alpaca-005"] == "contaminated"
    assert [i for i, r in reasons.items() if r == "contaminated"] == ["alpaca-005"]


def test_filter_refuses_an_eval_set_edited_after_planning(tmp_path):
    """Results computed from the edited file must not be stored under the key of the old one."""
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"text": "one two three four five six seven eight nine ten eleven twelve thirteen"})
                         + "\n", encoding="utf-8")
    rec = recipe(filters={"toxicity": {"enabled": False},
                          "decontaminate": {"eval_sets": [{"name": "heldout", "path": "eval.jsonl"}]}})
    ws = ws_at(tmp_path)
    records = records_from_rows(alpaca_rows(3)) if ALPACA.is_file() else records_from_rows([])
    upstream = commit(ArtifactStore(ws.artifacts_dir), "dedup", "in", {"records-00000.parquet": records})
    call = filters.plan(rec, [upstream], ws)
    eval_file.write_text(json.dumps({"text": "a different eval item entirely"}) + "\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="changed after this run was planned"):
        filters.filter_part(call, records)


def test_filter_hashes_its_loaded_files_once_per_load_not_per_part(tmp_path, monkeypatch):
    """A detoxify checkpoint or eval set is hashed when loaded, not again for every records part."""
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"text": "one two three four five six seven eight nine ten eleven twelve thirteen"})
                         + "\n", encoding="utf-8")
    rec = recipe(filters={"toxicity": {"enabled": False},
                          "decontaminate": {"eval_sets": [{"name": "heldout", "path": "eval.jsonl"}]}})
    ws = ws_at(tmp_path)
    records = records_from_rows([{"example_id": "x", "source": "s", "category": "qa", "messages": [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello " * 20}]}])
    upstream = commit(ArtifactStore(ws.artifacts_dir), "dedup", "in", {"records-00000.parquet": records})
    call = filters.plan(rec, [upstream], ws)
    hashed = []
    real = filters.filter_input_hashes
    monkeypatch.setattr(filters, "filter_input_hashes", lambda *a, **k: hashed.append(1) or real(*a, **k))
    filters._measures.cache_clear()
    for _part in range(3):
        filters.filter_part(call, records)
    assert len(hashed) == 1


# -------------------------------------------------------------- missing: hub tokenizer revision --
def test_filter_key_follows_the_hub_tokenizer_revision(tmp_path):
    ws = ws_at(tmp_path)
    upstream = commit(ArtifactStore(ws.artifacts_dir), "dedup", "in", {"records-00000.parquet": records_from_rows([])})
    no_tox = {"toxicity": {"enabled": False}}

    def key(train=None, filters_=None):
        return filters.plan(recipe(train=train or {}, filters={**no_tox, **(filters_ or {})}), [upstream], ws).key

    # the train model's tokenizer counts tokens: it is loaded at train.revision
    assert key({"model": HUB_MODEL, "revision": REV_A}) != key({"model": HUB_MODEL, "revision": REV_B})
    # an explicit hub tokenizer is pinned by filters.length.tokenizer_revision
    explicit = {"length": {"tokenizer": "other-org/tokenizer"}}
    pinned = {"length": {"tokenizer": "other-org/tokenizer", "tokenizer_revision": REV_A}}
    assert key(filters_=explicit) != key(filters_=pinned)
    # ... and train.revision does not pin someone else's tokenizer
    assert key({"model": HUB_MODEL, "revision": REV_A}, explicit) == key({"model": HUB_MODEL, "revision": REV_B}, explicit)


class Loaded(Exception):
    """Raised by the fake model loader once the call is recorded."""


@pytest.fixture
def fake_hf(monkeypatch) -> list[tuple[str, dict]]:
    """(what, keyword arguments) of every from_pretrained call, through stand-in `transformers` and
    `torch` modules: what the loaders pass is checked without importing either (seconds each)."""
    seen: list[tuple[str, dict]] = []

    def loader(what: str):
        def from_pretrained(source, **kwargs):
            seen.append((what, {"source": source, **kwargs}))
            if what == "model":
                raise Loaded
            return object()
        return types.SimpleNamespace(from_pretrained=from_pretrained)

    transformers = types.ModuleType("transformers")
    transformers.AutoTokenizer = loader("tokenizer")
    transformers.AutoModelForSequenceClassification = loader("model")
    torch = types.ModuleType("torch")
    torch.float32 = "torch.float32"
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    monkeypatch.setitem(sys.modules, "torch", torch)
    return seen


def test_hub_tokenizer_is_loaded_at_the_keyed_revision(tmp_path, fake_hf):
    from sftflow.tasks.lib.tokens import load_token_counter

    counter = load_token_counter(HUB_MODEL, ws_at(tmp_path).resolve_input, REV_A)
    assert fake_hf[0][1]["source"] == HUB_MODEL and fake_hf[0][1]["revision"] == REV_A
    assert counter.name == f"{HUB_MODEL}@{REV_A}"


# --------------------------------------------------- missing: reward model revision, dtype, device --
def test_score_key_follows_reward_model_revision_and_device(tmp_path, monkeypatch):
    ws = ws_at(tmp_path)
    upstream = commit(ArtifactStore(ws.artifacts_dir), "filter", "in", {"records-00000.parquet": records_from_rows([])})

    def key(**score):
        return score_stage_module.plan(recipe(score=score), [upstream], ws).key

    reward = {"backend": "reward-model", "model": HUB_MODEL}
    assert key(**reward, revision=REV_A) != key(**reward, revision=REV_B)
    assert key(**reward, revision=REV_A) != key(**reward)
    on_cpu = {"reward": key(**reward, revision=REV_A), "embedding": key()}
    monkeypatch.setattr(scorers, "default_device", lambda: "cuda")  # the same plan on a GPU machine
    assert key(**reward, revision=REV_A) != on_cpu["reward"]
    assert key() != on_cpu["embedding"]
    # the dtype a reward model is loaded in follows the device, and is named in the key
    assert f"dtype={scorers.reward_model_dtype('cuda')}" in scorers.model_fingerprint(
        recipe(score={**reward, "revision": REV_A}).score, ws.resolve_input)


def test_reward_model_is_loaded_at_the_keyed_revision_and_dtype(tmp_path, fake_hf, monkeypatch):
    monkeypatch.setattr(scorers, "default_device", lambda: "cpu")
    cfg = recipe(score={"backend": "reward-model", "model": HUB_MODEL, "revision": REV_A}).score
    with pytest.raises(Loaded):
        scorers.load_quality_scorer(cfg, ws_at(tmp_path).resolve_input)
    assert [(what, kw["revision"]) for what, kw in fake_hf] == [("tokenizer", REV_A), ("model", REV_A)]
    assert fake_hf[1][1]["dtype"] == "torch.float32"  # what the key names: dtype=float32 on cpu
    assert "dtype=float32" in scorers.model_fingerprint(cfg, ws_at(tmp_path).resolve_input)


def test_a_revision_that_would_be_ignored_is_refused(tmp_path):
    (tmp_path / "models" / "rm").mkdir(parents=True)
    ws = ws_at(tmp_path)
    with pytest.raises(ValueError, match="local"):
        scorers.model_fingerprint(recipe(score={"backend": "reward-model", "model": "models/rm",
                                                "revision": REV_A}).score, ws.resolve_input)
    with pytest.raises(ValueError, match="embedding-relevance"):
        scorers.model_fingerprint(recipe(score={"revision": REV_A}).score, ws.resolve_input)


# ----------------------------------------------------------- present but changing nothing --
def test_batch_sizes_and_an_equivalent_near_backend_are_not_keyed(tmp_path):
    ws = ws_at(tmp_path)
    store = ArtifactStore(ws.artifacts_dir)
    empty = {"records-00000.parquet": records_from_rows([])}
    normalized, deduped, filtered = (commit(store, s, "in", empty) for s in ("normalize", "dedup", "filter"))

    def keys(**sections):
        rec = recipe(**sections)
        return (dedup.plan(rec, [normalized], ws), filters.plan(rec, [deduped], ws),
                score_stage_module.plan(rec, [filtered], ws))

    base = keys(dedup={"near": {"backend": "numpy"}})
    runtime = keys(dedup={"near": {"backend": "datasketch"}},
                   filters={"toxicity": {"batch_size": 3, "max_batch_tokens": 64}}, score={"batch_size": 5})
    assert [c.key for c in runtime] == [c.key for c in base]
    # ... while the stages still get them
    assert runtime[0].config["near"]["backend"] == "datasketch"
    assert runtime[1].config["toxicity"]["batch_size"] == 3 and runtime[2].config["batch_size"] == 5
    # keyed neighbours of those fields still change the keys
    changed = keys(dedup={"near": {"seed": 2}}, filters={"toxicity": {"threshold": 0.3}},
                   score={"keep_top_fraction": 0.5})
    assert all(c.key != b.key for c, b in zip(changed, base))
    # rensa hashes shingles another way and verifies by exact Jaccard: another dedup key (the default)
    assert keys()[0].key == keys(dedup={"near": {"backend": "rensa"}})[0].key != base[0].key


def test_mix_shard_layout_does_not_retrain(tmp_path):
    """Train reads the mix's rows; shards cut at other boundaries (mix.shard_rows) hold the same rows,
    which the mix artifact names by `stats["data_hash"]`."""
    ws = ws_at(tmp_path)
    store = ArtifactStore(ws.artifacts_dir)
    rows = records_from_rows([{"example_id": f"e{i}", "source": "s", "source_format": "openai", "category": "qa",
                               "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                              for i in range(6)])
    one_shard = commit(store, "mix", "m1", {"shards/train/qa-00000.parquet": rows}, stats={"data_hash": "rows-x"})
    two_shards = commit(store, "mix", "m2", {"shards/train/qa-00000.parquet": rows.slice(0, 4),
                                              "shards/train/qa-00001.parquet": rows.slice(4)},
                        stats={"data_hash": "rows-x"})
    other_rows = commit(store, "mix", "m3", {"shards/train/qa-00000.parquet": rows.slice(1)},
                        stats={"data_hash": "rows-y"})
    assert one_shard.content_hash != two_shards.content_hash
    rec = recipe()
    key = [train.plan(rec, m, ws, data_card={}).key for m in (one_shard, two_shards, other_rows)]
    assert key[0] == key[1] != key[2]


def test_real_mix_at_two_shard_sizes_keys_train_once(tmp_path):
    """The mix stage itself, on the same rows at two shard sizes: one train key."""
    from sftflow.tasks.mix import mix_stage

    ws = ws_at(tmp_path)
    rows = [{"example_id": f"e{i:03d}", "source": "s", "source_format": "openai", "category": ("qa", "code")[i % 2],
             "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(60)]
    scored = records_from_rows(rows)
    scored = scored.append_column("score", pa.array([float(i % 7) for i in range(60)], pa.float64()))
    scored = scored.append_column("score_percentile", pa.array([0.5] * 60, pa.float64()))
    upstream = commit(ArtifactStore(ws.artifacts_dir), "score", "in", {"records-00000.parquet": scored})
    mixed = []
    for shard_rows in (7, 1000):
        rec = recipe(mix={"shard_rows": shard_rows, "eval_fraction": 0.1})
        manifest, _ = execute(mix.plan(rec, [upstream], ws), mix_stage.compute)
        mixed.append(manifest)
    assert mixed[0].stats["data_hash"] == mixed[1].stats["data_hash"]  # the same rows ...
    assert mixed[0].content_hash != mixed[1].content_hash  # other files ...
    assert train.plan(recipe(), mixed[0], ws, {}).key == train.plan(recipe(), mixed[1], ws, {}).key


def test_a_reworded_dedup_decision_does_not_rerun_filter(real_chain, tmp_path):
    """A dedup change that only rewords its decisions' details re-runs dedup, and stops there."""
    root, _, deduped = real_chain
    ws = ws_at(root)
    decisions = pq.read_table(deduped.file("decisions.parquet"))
    details = decisions.column("detail").to_pylist()
    assert any(details), "the real dedup run left no detail to reword"
    reworded_details = [None if d is None else d.replace('"', '" ', 1) for d in details]  # reworded text
    reworded = decisions.set_column(decisions.schema.get_field_index("detail"), "detail",
                                    pa.array(reworded_details, decisions.schema.field("detail").type))
    copy = commit(ArtifactStore(ws.artifacts_dir), "dedup", "reworded",
                  {"records-00000.parquet": read_records([deduped]), "decisions.parquet": reworded})
    assert copy.content_hash != deduped.content_hash  # the catalog still sees a new artifact
    rec = recipe()
    assert filters.plan(rec, [copy], ws).key == filters.plan(rec, [deduped], ws).key
    # ... but a changed record does re-run it
    records = read_records([deduped])
    edited = records.slice(1)
    other = commit(ArtifactStore(ws.artifacts_dir), "dedup", "edited",
                   {"records-00000.parquet": edited, "decisions.parquet": decisions})
    assert filters.plan(rec, [other], ws).key != filters.plan(rec, [deduped], ws).key


def test_both_near_backends_write_the_same_records_on_real_data(real_chain, tmp_path):
    """Why numpy and datasketch share a key (dedup.near.backend is unkeyed between them): on the
    shared Alpaca file both keep the same rows, byte for byte, so later stages are keyed the same
    either way. rensa (the default) has a key of its own."""
    from sftflow.tasks.dedup import dedup_stage

    _, normalized, deduped = real_chain
    written = []
    for backend in ("numpy", "datasketch"):
        other_ws = ws_at(tmp_path / backend)  # another warehouse: the same key must be computed afresh there
        call = dedup.plan(recipe(dedup={"near": {"backend": backend}}), [normalized], other_ws)
        assert call.key != deduped.key
        other, hit = execute(call, dedup_stage.compute)
        assert not hit
        written.append((other.key, other.data_hash))
    assert written[0] == written[1]