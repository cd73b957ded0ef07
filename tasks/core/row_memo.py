"""Per-row memo of a stage's expensive per-row results, reused across runs and artifacts.

A stage whose key changes with any byte of its input still computes each row the same way
whatever the other rows are. `RowMemo` keeps those per-row results under
`<warehouse>/memo/<stage>/<fingerprint>/`, where the fingerprint names exactly what computes a
row's value (model, the config fields that change a value, the code and library versions that
compute it). Each file is a Parquet table with a `row_hash` column (what the stage reads of the
row) and the value columns; rows are looked up by hash, columnar (pyarrow), never row by row.

Files are only added, never rewritten: `add` writes a temporary `.tmp-*` file, syncs it and
renames it into place, so a crash leaves at most a temporary file, which `lookup` never reads.
Two processes adding at once write two files; a hash found in several files takes the value of
the first file in name order (names start with the write time), so every reader agrees.

Two ways to read. With `snapshot=True` (the default) the files are read once per RowMemo and every
lookup filters that table in memory: for small memos looked up part after part (score). With
`snapshot=False` each lookup streams the files row group by row group, reading a group's values
only when its hashes include a wanted one, and keeps only the wanted rows, so memory holds one
row group and the result, never the whole memo: for stages run per part in worker
processes over memos of millions of rows (filter).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEY_COLUMN = "row_hash"
MEMO_DIR = "memo"
TMP_PREFIX = ".tmp-"  # a file being written: never read, left by a crash at most
SCAN_BATCH_ROWS = 65_536  # rows per row group: what a streaming lookup (snapshot=False) holds at once


class RowMemo:
    """The memo of one stage under one fingerprint: `lookup` what is there, `add` what was computed."""

    def __init__(self, warehouse: Path, stage: str, fingerprint: str, snapshot: bool = True):
        self.folder = Path(warehouse) / MEMO_DIR / stage / fingerprint
        self.snapshot = snapshot

    def files(self) -> list[Path]:
        """The committed files, oldest first (a temporary file left by a crash is not one)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))

    def lookup(self, row_hashes: list[str]) -> pa.Table:
        """The memo rows of `row_hashes` that are present, one per hash (any order).

        >>> import tempfile
        >>> memo = RowMemo(Path(tempfile.mkdtemp()), "score", "f1")
        >>> memo.add(pa.table({"row_hash": ["a", "b"], "score": [0.5, 0.25]}))
        >>> memo.add(pa.table({"row_hash": ["b"], "score": [0.75]}))  # the first value of a hash wins
        >>> sorted(memo.lookup(["b", "c", "a"]).to_pylist(), key=lambda r: r["row_hash"])
        [{'row_hash': 'a', 'score': 0.5}, {'row_hash': 'b', 'score': 0.25}]
        """
        wanted = pa.array(sorted(set(row_hashes)), pa.string())
        committed = self._committed() if self.snapshot else self._scan(wanted)
        if committed is None:
            return pa.table({KEY_COLUMN: pa.array([], pa.string())})
        return committed.filter(pc.is_in(committed[KEY_COLUMN], value_set=wanted))

    def _scan(self, wanted: pa.Array) -> pa.Table | None:
        """The rows of `wanted` hashes in the committed files, in file order: each row group's hash
        column is read first, its other columns only when it holds a wanted hash (a cold run's
        lookups find none and read hashes only)."""
        found = []
        for path in self.files():
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                hit = pc.is_in(parquet.read_row_group(group, columns=[KEY_COLUMN])[KEY_COLUMN], value_set=wanted)
                if pc.any(hit).as_py():
                    found.append(parquet.read_row_group(group).filter(hit))
        return _first_of_each_hash(found)

    def _committed(self) -> pa.Table | None:
        """The committed rows, first row of each hash in file order: the files are read once per
        RowMemo (a stage looks up once per records part), and what `add` writes is appended."""
        if not hasattr(self, "_first_rows"):
            self._first_rows = _first_of_each_hash([pq.read_table(path) for path in self.files()])
        return self._first_rows

    def add(self, table: pa.Table) -> None:
        """Write `table` (a `row_hash` column and the value columns) as one new file, atomically."""
        if KEY_COLUMN not in table.column_names:
            raise ValueError(f"a memo table needs a {KEY_COLUMN!r} column")
        if not table.num_rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f"{TMP_PREFIX}{name}"
        try:
            pq.write_table(table, tmp, compression="zstd", row_group_size=SCAN_BATCH_ROWS)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.snapshot and hasattr(self, "_first_rows"):  # newer than every file read: its rows come last
            self._first_rows = _first_of_each_hash([t for t in (self._first_rows, table) if t is not None])


def _first_of_each_hash(tables: list[pa.Table]) -> pa.Table | None:
    """The tables in order, keeping the first row of each hash (None for no table)."""
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    first = pc.equal(pc.index_in(table[KEY_COLUMN], value_set=table[KEY_COLUMN]),
                     pa.array(range(table.num_rows), pa.int32()))
    return table.filter(first)
