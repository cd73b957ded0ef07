from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from sftflow.tasks.core.catalog import Catalog, connect_readonly
from sftflow.tasks.core.records import EXAMPLE_SCHEMA, DecisionLog, StageOutput
from tests.stage_helpers import records_from_rows
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.stage import StageCall, execute


def _call(tmp_path, stage, key, inputs=()):
    return StageCall(stage=stage, key=key, code_hash="c", config={}, config_hash="h", inputs=list(inputs),
                     root=str(tmp_path), warehouse=str(tmp_path / "wh"))


def _output(ids, dropped):
    log = DecisionLog()
    for i in ids:
        log.add(i, Reason.EXACT_DUPLICATE if i in dropped else Reason.KEPT, dup_of="a" if i in dropped else None)
    rows = [{"example_id": i, "source": "s", "messages": []} for i in ids if i not in dropped]
    return StageOutput(records=records_from_rows(rows), decisions=log.to_table())


def test_register_once_and_ledger_balances(tmp_path):
    cat = Catalog(tmp_path / "wh" / "catalog.duckdb")
    cat.start_run("r1", None, "demo", "rh", "cv", "{}", [])
    manifest, hit = execute(_call(tmp_path, "dedup", "k1"), lambda call: _output(["a", "b", "c"], {"b"}))
    assert not hit
    assert cat.register_artifact(manifest, "r1") is True
    assert cat.register_artifact(manifest, "r1") is False  # registered once, by the creating run
    cat.record_stage_run("r1", manifest, "", False, 0.1)
    cat.finish_run("r1", "completed")
    assert cat.query("SELECT stage, n_in, n_kept, n_dropped FROM ledger") == [("dedup", 3, 2, 1)]
    assert cat.query("SELECT example_id, reason, dup_of FROM drops") == [("b", "exact_duplicate", "a")]

    # a second run that hits the cache points at the same artifact: its ledger is complete too
    again, hit = execute(_call(tmp_path, "dedup", "k1"), lambda call: pytest.fail("must not recompute"))
    assert hit and again.key == "k1"
    cat.start_run("r2", None, "demo", "rh", "cv", "{}", [])
    cat.register_artifact(again, "r2")
    cat.record_stage_run("r2", again, "", True, 0.01)
    cat.finish_run("r2", "completed")
    assert cat.query("SELECT n_in, n_kept, n_dropped FROM ledger_by_run WHERE run_id = 'r2'") == [(3, 2, 1)]
    assert cat.query("SELECT count(*) FROM decisions") == [(3,)]


def test_readonly_connection_refuses_writes_and_files(tmp_path):
    Catalog(tmp_path / "c.duckdb")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    con = connect_readonly(tmp_path / "c.duckdb")
    for statement in [
        "INSERT INTO runs (run_id) VALUES ('x')",
        "DROP TABLE runs",
        "CREATE TABLE t (x INT)",
        f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')",
        f"COPY runs TO '{tmp_path / 'out.csv'}'",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        "SET enable_external_access = true",
    ]:
        with pytest.raises(duckdb.Error):
            con.execute(statement)
    con.close()


def test_missing_catalog_is_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="sftflow run"):
        connect_readonly(tmp_path / "none.duckdb")


def test_a_reader_in_another_process_never_blocks_the_writer(tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "c.duckdb"
    Catalog(path)
    # A reader that keeps the published catalog open (a DuckDB shell left open) and reads twice.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); sys.stdin.readline(); "
         "print(c.execute('SELECT count(*) FROM runs').fetchone()[0], flush=True); c.close()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    started = time.monotonic()
    Catalog(path).start_run("r1", None, "demo", "rh", "cv", "{}", [])
    assert time.monotonic() - started < 5  # did not wait for the reader (it waits for us)
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "0"  # the reader's copy stayed as it was
    holder.wait(timeout=30)
    with connect_readonly(path) as con:  # a new reader sees the write
        assert con.execute("SELECT run_id FROM runs").fetchall() == [("r1",)]


def test_every_committed_write_is_published_and_a_failed_one_is_not(tmp_path):
    path = tmp_path / "c.duckdb"
    cat = Catalog(path)
    cat.start_run("r1", None, "demo", "rh", "cv", "{}", [])
    with pytest.raises(RuntimeError):
        with cat.connect() as con:
            con.execute("UPDATE runs SET status = 'completed'")
            raise RuntimeError("boom")
    with connect_readonly(path) as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]
    assert not list(tmp_path.glob("*.partial"))


def test_recover_marks_runs_left_running_as_interrupted(tmp_path):
    path = tmp_path / "c.duckdb"
    cat = Catalog(path)
    cat.start_run("dead", None, "demo", "rh", "cv", "{}", [])
    cat.start_run("done", None, "demo", "rh", "cv", "{}", [])
    cat.finish_run("done", "completed")
    (tmp_path / ".c.duckdb.0123abcd.partial").write_bytes(b"half a copy")
    assert cat.recover() == ["dead"]
    assert not list(tmp_path.glob("*.partial"))
    with connect_readonly(path) as con:
        assert con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall() == [
            ("dead", "interrupted"), ("done", "completed")]


def test_a_catalog_from_before_the_writer_split_is_adopted(tmp_path):
    path = tmp_path / "c.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, flow_run_id VARCHAR, recipe_name VARCHAR, "
                    "recipe_hash VARCHAR, code_version VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, "
                    "status VARCHAR, recipe_json VARCHAR, overrides VARCHAR)")
        con.execute("INSERT INTO runs (run_id, status) VALUES ('old', 'completed')")
    cat = Catalog(path)
    assert cat.writer_path.is_file()
    assert cat.query("SELECT run_id FROM runs") == [("old",)]


def test_record_stage_registers_once_and_records_every_use(tmp_path):
    manifest, _hit = execute(_call(tmp_path, "dedup", "k1"), lambda call: _output(["a"], set()))
    cat = Catalog(tmp_path / "catalog.duckdb")
    assert cat.record_stage("r1", manifest, "", False, 0.5) is True
    assert cat.record_stage("r2", manifest, "", True, 0.01) is False
    assert cat.query("SELECT run_id, cache_hit FROM stage_runs ORDER BY run_id") == [("r1", False), ("r2", True)]
    assert cat.query("SELECT count(*) FROM decisions") == [(1,)]


# ------------------------------------------------------------------ immutable provenance --
def _example(example_id, row, raw):
    return {"example_id": example_id, "source": "s", "source_format": "openai", "source_uri": "data/s.jsonl",
            "source_row": row, "origin": None, "license": None, "raw": raw}


def _ingest(rows):
    """An ingest output: every row kept, its examples table with the raw lines."""
    log = DecisionLog()
    for r in rows:
        log.add(r["example_id"], Reason.KEPT)
    records = records_from_rows({"example_id": r["example_id"], "source": "s", "source_row": r["source_row"],
                                 "messages": []} for r in rows)
    return StageOutput(records=records, decisions=log.to_table(),
                       extra={"examples": pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)})


def _normalize(ids, category):
    log = DecisionLog()
    for i in ids:
        log.add(i, Reason.KEPT)
    records = records_from_rows({"example_id": i, "source": "s", "content_hash": f"h-{i}-{category}",
                                 "category": category, "messages": []} for i in ids)
    return StageOutput(records=records, decisions=log.to_table())


def _mix(ids):
    """A mix output whose one train shard holds `ids` (the shard written through `files`)."""
    import pyarrow.parquet as pq

    def compute(call):
        shard = Path(call.warehouse) / f"shard-{call.key}.parquet"
        pq.write_table(pa.table({"example_id": ids}), shard)
        log = DecisionLog()
        for i in ids:
            log.add(i, Reason.SELECTED)
        return StageOutput(records=records_from_rows([]), decisions=log.to_table(),
                           files={"shards/train/qa-00000.parquet": shard},
                           stats={"shards": [{"name": "shards/train/qa-00000.parquet", "split": "train",
                                              "category": "qa", "n_rows": len(ids), "n_tokens": 0}]})
    return compute


def _train(ids, dropped):
    log = DecisionLog()
    for i in ids:
        log.add(i, Reason.NO_SUPERVISED_TOKENS if i in dropped else Reason.KEPT)
    return StageOutput(records=records_from_rows([]), decisions=log.to_table(),
                       stats={"model": {"base_model": "builtin:tiny-llama", "method": "full", "path": "model"}})


def _chain(tmp_path, cat, run_id, suffix, rows, category, dropped=()):
    """ingest -> normalize -> mix -> train, each registered and used by `run_id`; returns the model id."""
    ids = [r["example_id"] for r in rows]
    cat.start_run(run_id, None, "demo", "rh", "cv", "{}", [])
    steps = [("ingest", lambda call: _ingest(rows)), ("normalize", lambda call: _normalize(ids, category)),
             ("mix", _mix(ids)), ("train", lambda call: _train(ids, set(dropped)))]
    previous = []
    for stage, compute in steps:
        (Path(tmp_path) / "wh").mkdir(parents=True, exist_ok=True)
        manifest, _hit = execute(_call(tmp_path, stage, f"{stage}-{suffix}", previous), compute)
        cat.record_stage(run_id, manifest, "s" if stage in ("ingest", "normalize") else "", False, 0.1)
        previous = [manifest]
    cat.finish_run(run_id, "completed")
    return previous[0].key


def test_an_edited_source_adds_a_version_and_the_old_model_keeps_its_rows(tmp_path):
    """Row 1 of a source, then a line inserted at the top: the same example_id now reads
    differently. The first model's rows stay as its own run read them; `examples` shows the newest."""
    cat = Catalog(tmp_path / "wh" / "catalog.duckdb")
    old = [_example("e1", 1, '{"q": "old first"}'), _example("e2", 2, '{"q": "old second"}')]
    first = _chain(tmp_path, cat, "r1", "a", old, "qa")
    new = [_example("e1", 1, '{"q": "inserted"}'), _example("e2", 2, '{"q": "old first"}'),
           _example("e3", 3, '{"q": "old second"}')]
    second = _chain(tmp_path, cat, "r2", "b", new, "code", dropped={"e3"})

    query = "SELECT example_id, raw, category FROM model_examples WHERE model_id = ? ORDER BY 1"
    assert cat.query(query, [first]) == [("e1", '{"q": "old first"}', "qa"), ("e2", '{"q": "old second"}', "qa")]
    # the second model: e3 was dropped by its train stage, so it is not among its trained rows
    assert cat.query(query, [second]) == [("e1", '{"q": "inserted"}', "code"), ("e2", '{"q": "old first"}', "code")]
    assert cat.query("SELECT example_id, raw, category, artifact_id FROM examples ORDER BY 1") == [
        ("e1", '{"q": "inserted"}', "code", "ingest-b"), ("e2", '{"q": "old first"}', "code", "ingest-b"),
        ("e3", '{"q": "old second"}', "code", "ingest-b")]
    assert cat.query("SELECT count(*) FROM example_versions") == [(5,)]  # nothing overwritten
    # a later run that reuses the first ingest artifact (the edit reverted) makes it the newest again
    cat.start_run("r3", None, "demo", "rh", "cv", "{}", [])
    again, hit = execute(_call(tmp_path, "ingest", "ingest-a"), lambda call: pytest.fail("cached"))
    assert hit
    cat.record_stage("r3", again, "s", True, 0.0)
    cat.finish_run("r3", "completed")
    assert cat.query("SELECT raw FROM examples WHERE example_id = 'e1'") == [('{"q": "old first"}',)]
    assert cat.query("SELECT example_id, raw FROM latest_examples ORDER BY 1") == [
        ("e1", '{"q": "old first"}'), ("e2", '{"q": "old second"}')]
    # the ledger balances with the train stage in it: 3 in, 2 kept, 1 dropped
    assert cat.query("SELECT n_in, n_kept, n_dropped FROM ledger_by_run WHERE run_id = 'r2' AND stage = 'train'") == [
        (3, 2, 1)]


def test_an_ingest_rerun_with_the_same_rows_is_one_version_and_keeps_its_normalized_form(tmp_path):
    """ingest recomputed (its code changed, the source did not) gives a new artifact with the same
    rows; normalize, keyed on those rows, is then a cache hit naming the old ingest artifact. The
    row is still one version, with its content_hash and category."""
    from sftflow.tasks.core.artifacts import ArtifactStore
    from sftflow.tasks.core.audit import explain

    cat = Catalog(tmp_path / "wh" / "catalog.duckdb")
    rows = [_example("ex-0001", 1, '{"q": "first"}'), _example("ex-0002", 2, '{"q": "second"}')]
    _chain(tmp_path, cat, "r1", "a", rows, "qa")
    cat.start_run("r2", None, "demo", "rh", "cv", "{}", [])
    ingest, hit = execute(_call(tmp_path, "ingest", "ingest-recomputed"), lambda call: _ingest(rows))
    assert not hit
    normalize, hit = execute(_call(tmp_path, "normalize", "normalize-a", [ingest]), lambda call: pytest.fail("cached"))
    assert hit
    for manifest, cache_hit in ((ingest, False), (normalize, True)):
        cat.record_stage("r2", manifest, "s", cache_hit, 0.1)
    cat.finish_run("r2", "completed")

    assert cat.query("SELECT example_id, artifact_id, content_hash, category FROM examples ORDER BY 1") == [
        ("ex-0001", "ingest-recomputed", "h-ex-0001-qa", "qa"), ("ex-0002", "ingest-recomputed", "h-ex-0002-qa", "qa")]
    with connect_readonly(tmp_path / "wh" / "catalog.duckdb") as con:
        report = explain(con, ArtifactStore(tmp_path / "wh" / "artifacts"), "ex-0001")
    assert [v["ingest_artifact_ids"] for v in report["versions"]] == [["ingest-a", "ingest-recomputed"]]
    assert report["example"]["content_hash"] == "h-ex-0001-qa" and report["example"]["category"] == "qa"


def test_a_catalog_with_the_old_examples_table_is_migrated(tmp_path):
    path = tmp_path / "c.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE artifacts (artifact_id VARCHAR PRIMARY KEY, stage VARCHAR, path VARCHAR, "
                    "sha256 VARCHAR, config_hash VARCHAR, code_hash VARCHAR, created_at TIMESTAMP, run_id VARCHAR, "
                    "n_in BIGINT, n_out BIGINT, stats VARCHAR)")
        con.execute("CREATE TABLE artifact_inputs (artifact_id VARCHAR, input_artifact_id VARCHAR)")
        con.execute("INSERT INTO artifacts (artifact_id, stage) VALUES ('i1', 'ingest'), ('n1', 'normalize')")
        con.execute("INSERT INTO artifact_inputs VALUES ('n1', 'i1')")
        con.execute("CREATE TABLE examples (example_id VARCHAR PRIMARY KEY, source VARCHAR, source_format VARCHAR, "
                    "source_uri VARCHAR, source_row BIGINT, content_hash VARCHAR, category VARCHAR, origin VARCHAR, "
                    "license VARCHAR, raw VARCHAR, artifact_id VARCHAR)")
        con.execute("INSERT INTO examples VALUES ('e1', 's', 'openai', 'u', 1, 'h1', 'qa', NULL, NULL, '{}', 'i1')")
    cat = Catalog(path)
    assert cat.query("SELECT example_id, artifact_id, raw FROM example_versions") == [("e1", "i1", "{}")]
    assert cat.query("SELECT example_id, content_hash, category, artifact_id FROM examples") == [
        ("e1", "h1", "qa", "i1")]
    assert cat.query("SELECT table_type FROM information_schema.tables WHERE table_name = 'examples'") == [
        ("VIEW",)]
