"""Provenance as of a model's own run, on a real warehouse.

The completed run's model M was trained on the samples. Lines are then inserted at the top of a
source, which gives every later row of that file a new text under its old example_id (ids are
hash(source, row position)), and the pipeline re-runs through train. The inserted rows are
multi-turn chats whose first question is longer than train.max_length (256 in the flow tests),
so truncation leaves them no supervised token. Afterwards:

- `lineage M` is unchanged, and the raw rows `explain --model M` (and `model_examples`) show for
  M's rows are still the lines M was trained on; plain `explain` shows the newest version and
  says M was trained on another text at that place;
- rows truncated to zero supervised tokens have a train decision (`no_supervised_tokens`), are
  absent from the new model's lineage, and the ledger (train included) balances.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from sftflow.flows.cli import app
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.records import RAW_PREVIEW_CHARS  # the catalog keeps this much of each raw line

runner = CliRunner(env={"COLUMNS": "240"})
MAX_LENGTH = 256  # train.max_length of SMALL_TRAIN (tests/flows/conftest.py)
N_INSERTED = 12  # several, so that some reach the train split whatever the eval split takes

ADJ = ["quiet", "green", "early", "narrow", "gentle", "broad", "distant", "steady", "bright", "shallow", "northern",
       "wooden", "patient", "careful", "rocky", "sunny", "misty", "golden", "humble", "hidden"]
NOUN = ["river", "garden", "village", "meadow", "harbor", "orchard", "bridge", "valley", "forest", "library",
        "market", "canal", "hillside", "lighthouse", "farm", "pond", "trail", "cottage", "bakery", "station"]
VERB = ["borders", "shelters", "overlooks", "follows", "crosses", "surrounds", "faces", "joins", "feeds", "guards"]
WHEN = ["in spring", "after the rain", "at dawn", "during the harvest", "on market days", "through the winter",
        "before the festival", "along the coast", "under the old trees", "beside the road"]


def long_question_chats(n: int, seed: int = 13, words: int = 330) -> list[dict]:
    """Two-turn chats (category conversation) whose first question is ~330 words of distinct,
    benign sentences (~390 tokens of the tiny tokenizer): nothing of the answers survives
    truncation to 256 tokens. Answers quote the notes, so relevance scoring ranks them fairly."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        sentences: list[str] = []
        while sum(len(s.split()) for s in sentences) < words:
            sentences.append(f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the "
                             f"{rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(WHEN)}.")
        chats.append({"messages": [
            {"role": "user", "content": f"Here are my travel notes about the region: {' '.join(sentences)} "
                                        "Which place do these notes describe first?"},
            {"role": "assistant", "content": f"They start with this: {sentences[0]} {sentences[1]}"},
            {"role": "user", "content": "And which places come last in the notes?"},
            {"role": "assistant", "content": f"The notes end with these places: {sentences[-2]} {sentences[-1]}"}]})
    return chats


def _cli(warehouse: Path, *args: str) -> dict:
    result = runner.invoke(app, [*args, "--format", "json", "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_an_edited_source_leaves_an_earlier_model_as_trained(completed_project, run_pipeline, small_train,
                                                             assert_ledger_balances):
    root, cold = completed_project
    warehouse = root / "data" / "warehouse"
    source = root / "data" / "samples" / "openai.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        (first,) = [r[0] for r in con.execute("SELECT model_id FROM models").fetchall()]
    before = _cli(warehouse, "lineage", first)
    trained_openai = [r for r in before["rows"] if r["source"] == "openai_sample"]
    assert trained_openai and all(r["ingest_artifact_id"] for r in before["rows"])
    edited = [json.dumps(chat) for chat in long_question_chats(N_INSERTED)] + lines
    # rows whose line the insertion changes (every one, unless two equal lines sit N_INSERTED apart)
    probe = sorted((r for r in trained_openai if edited[r["source_row"] - 1] != lines[r["source_row"] - 1]),
                   key=lambda r: r["source_row"])[:4]
    assert probe
    for r in probe:  # as trained: the file's line at source_row (JSON Lines rows are 1-based lines)
        assert _cli(warehouse, "explain", r["example_id"], "--model", first)["raw"].strip() == \
            lines[r["source_row"] - 1].strip()

    source.write_text("\n".join(edited) + "\n", encoding="utf-8")
    # score keeps every row, so the inserted chats reach the mix whatever their relevance
    second_run = run_pipeline(root, [*small_train, "score.keep_top_fraction=1.0"], only="train")

    # 1. The first model: lineage and the rows it was trained on, unchanged.
    assert _cli(warehouse, "lineage", first) == before
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        as_trained = con.execute("SELECT source_row, raw FROM model_examples WHERE model_id = ? "
                                 "AND source = 'openai_sample' ORDER BY 1", [first]).fetchall()
        (second,) = [r[0] for r in con.execute("SELECT model_id FROM models WHERE model_id <> ?", [first]).fetchall()]
    assert len(as_trained) == len(trained_openai)
    assert all(raw.strip() == lines[row - 1].strip() for row, raw in as_trained)
    for r in probe:
        pinned = _cli(warehouse, "explain", r["example_id"], "--model", first)
        assert pinned["raw"].strip() == lines[r["source_row"] - 1].strip()
        assert first in pinned["trained_models"] and pinned["as_of"] == {"model_id": first}
        assert {d["stage"] for d in pinned["decisions"]} >= {"ingest", "normalize", "mix"}
        assert {d["version"] for d in pinned["decisions"]} == {pinned["version"]}
        # the newest version is the edited file's line; the first model trained on another text
        newest = _cli(warehouse, "explain", r["example_id"])
        assert newest["raw"].strip() == edited[r["source_row"] - 1][:RAW_PREVIEW_CHARS].strip() != pinned["raw"].strip()
        assert len(newest["versions"]) == 2 and first not in newest["trained_models"]
        assert {"model_id": first, "version": pinned["version"], "same_text": False} in newest["models"]

    # 2. The second model: rows truncation left without a supervised token were decided by train.
    lineage = _cli(warehouse, "lineage", second)
    dropped = {d["example_id"]: d for d in lineage["dropped_by_train"]}
    assert dropped and all(d["reason"] == "no_supervised_tokens" for d in dropped.values())
    for d in dropped.values():
        assert d["detail"]["max_length"] == MAX_LENGTH
        assert d["detail"]["first_supervised_position"] >= MAX_LENGTH
    with connect_readonly(warehouse / "catalog.duckdb") as con:
        in_shards = {r[0] for r in con.execute(
            """SELECT se.example_id FROM models m JOIN artifact_inputs ai ON ai.artifact_id = m.artifact_id
               JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
               JOIN shard_examples se USING (shard_id) WHERE m.model_id = ?""", [second]).fetchall()}
        trained_rows = {r[0] for r in con.execute("SELECT example_id FROM model_examples WHERE model_id = ?",
                                                  [second]).fetchall()}
        train_ledger = con.execute("SELECT n_in, n_kept, n_dropped FROM ledger_by_run WHERE run_id = ? "
                                   "AND stage = 'train'", [second_run["run_id"]]).fetchone()
        inserted = {r[0] for r in con.execute(
            "SELECT example_id FROM latest_examples WHERE source = 'openai_sample' AND source_row <= ?",
            [N_INSERTED]).fetchall()}
    # exactly the inserted chats that reached the train split were dropped, nothing else
    assert set(dropped) == inserted & in_shards and 0 < len(dropped) < len(in_shards)
    assert set(lineage["example_ids"]) == trained_rows == in_shards - set(dropped)
    assert train_ledger == (len(in_shards), len(in_shards) - len(dropped), len(dropped))
    gone = _cli(warehouse, "explain", sorted(dropped)[0])
    assert ("train", "no_supervised_tokens") in [(d["stage"], d["reason"]) for d in gone["decisions"]]
    assert second not in gone["trained_models"]
    assert_ledger_balances(root, second_run["run_id"])
