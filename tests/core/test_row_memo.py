"""RowMemo: per-row results found by hash, added one atomic file at a time."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core import row_memo
from sftflow.tasks.core.row_memo import TMP_PREFIX, RowMemo


def values(table: pa.Table) -> dict[str, float]:
    return dict(zip(table["row_hash"].to_pylist(), table["score"].to_pylist()))


def test_lookup_finds_what_was_added_under_its_stage_and_fingerprint(tmp_path):
    memo = RowMemo(tmp_path, "score", "f1")
    assert memo.lookup(["a"]).num_rows == 0  # no folder yet
    memo.add(pa.table({"row_hash": ["a", "b"], "score": [0.5, None]}))
    memo.add(pa.table({"row_hash": ["c"], "score": [1.5]}))
    assert memo.folder == tmp_path / "memo" / "score" / "f1"
    assert values(memo.lookup(["c", "a", "zz", "a"])) == {"a": 0.5, "c": 1.5}
    assert values(memo.lookup(["b"])) == {"b": None}
    assert RowMemo(tmp_path, "score", "f2").lookup(["a"]).num_rows == 0  # another fingerprint
    assert memo.lookup([]).num_rows == 0


def test_a_hash_in_several_files_takes_the_oldest_files_value(tmp_path):
    memo = RowMemo(tmp_path, "score", "f")
    memo.add(pa.table({"row_hash": ["a"], "score": [1.0]}))
    memo.add(pa.table({"row_hash": ["a", "b"], "score": [2.0, 3.0]}))
    assert values(memo.lookup(["a", "b"])) == {"a": 1.0, "b": 3.0}


def test_an_empty_add_writes_no_file_and_a_table_without_hashes_is_refused(tmp_path):
    memo = RowMemo(tmp_path, "score", "f")
    memo.add(pa.table({"row_hash": pa.array([], pa.string()), "score": pa.array([], pa.float64())}))
    assert memo.files() == []
    with pytest.raises(ValueError, match="row_hash"):
        memo.add(pa.table({"score": [1.0]}))


def test_a_crash_while_writing_leaves_nothing_a_lookup_reads(tmp_path, monkeypatch):
    memo = RowMemo(tmp_path, "score", "f")
    memo.add(pa.table({"row_hash": ["a"], "score": [1.0]}))

    def crash(table, path, **kwargs):
        path.write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(row_memo.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        memo.add(pa.table({"row_hash": ["b"], "score": [2.0]}))
    monkeypatch.undo()
    assert [p.name.startswith(TMP_PREFIX) for p in memo.folder.iterdir()] == [False]
    # a process killed mid-write cannot clean up: its temporary file stays and is never read
    (memo.folder / f"{TMP_PREFIX}killed.parquet").write_bytes(memo.files()[0].read_bytes()[:100])
    assert len(memo.files()) == 1
    assert values(memo.lookup(["a", "b"])) == {"a": 1.0}


def test_files_are_plain_parquet_with_the_added_columns(tmp_path):
    memo = RowMemo(tmp_path, "score", "f")
    table = pa.table({"row_hash": ["a"], "score": [1.0], "n_dropped": pa.array([None], pa.int64())})
    memo.add(table)
    [path] = memo.files()
    assert pq.read_table(path).equals(table)


def test_a_streaming_lookup_finds_what_a_snapshot_finds(tmp_path, monkeypatch):
    monkeypatch.setattr(row_memo, "SCAN_BATCH_ROWS", 3)  # several row groups per file
    writer = RowMemo(tmp_path, "filter", "f")
    writer.add(pa.table({"row_hash": [f"h{i}" for i in range(10)], "score": [float(i) for i in range(10)]}))
    writer.add(pa.table({"row_hash": ["h4", "h20", "h21"], "score": [40.0, 20.0, 21.0]}))  # h4 again: older wins
    assert pq.ParquetFile(writer.files()[0]).num_row_groups == 4
    wanted = ["h4", "h9", "h20", "nope", "h4"]
    streamed = RowMemo(tmp_path, "filter", "f", snapshot=False)
    assert values(streamed.lookup(wanted)) == values(RowMemo(tmp_path, "filter", "f").lookup(wanted))
    assert values(streamed.lookup(wanted)) == {"h4": 4.0, "h9": 9.0, "h20": 20.0}
    streamed.add(pa.table({"row_hash": ["h30"], "score": [30.0]}))
    assert values(streamed.lookup(["h30"])) == {"h30": 30.0}  # each lookup reads the files anew
    assert not hasattr(streamed, "_first_rows")  # never holds the whole memo
