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


def test_writer_waits_for_a_reader_in_another_process(tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "c.duckdb"
    Catalog(path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); time.sleep(2); c.close()", str(path)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    started = time.monotonic()
    Catalog(path).start_run("r1", None, "demo", "rh", "cv", "{}", [])  # blocks until the reader leaves
    holder.wait(timeout=30)
    assert time.monotonic() - started > 0.5
    assert Catalog(path).query("SELECT run_id FROM runs") == [("r1",)]


def test_record_stage_registers_once_and_records_every_use(tmp_path):
    manifest, _hit = execute(_call(tmp_path, "dedup", "k1"), lambda call: _output(["a"], set()))
    cat = Catalog(tmp_path / "catalog.duckdb")
    assert cat.record_stage("r1", manifest, "", False, 0.5) is True
    assert cat.record_stage("r2", manifest, "", True, 0.01) is False
    assert cat.query("SELECT run_id, cache_hit FROM stage_runs ORDER BY run_id") == [("r1", False), ("r2", True)]
    assert cat.query("SELECT count(*) FROM decisions") == [(1,)]
