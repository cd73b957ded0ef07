import duckdb
import pytest

from tasks.core.catalog import Catalog, connect_readonly
from tasks.core.records import DecisionLog, StageOutput, records_from_rows
from tasks.core.reasons import Reason
from tasks.core.stage import StageCall, execute


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
