"""Shards of a mixture: their names, the `split` column, the data hash, and the gather that writes
the output rows in sampled order without holding the input in memory. tasks/mix.py runs it; the
list of shards it records is read through tasks/core/mix_shards.py.

The output is a list of blocks, (split, category, input rows in shard order), where an input row
is its position in the input (over all parts, in order) and an upsampled row appears once per
copy. Shards hold rows in sampled (shuffled) order, which is unrelated to input order. Rather than
hold the input in memory to `take` from it, every input part's rows are routed to spool files
(Arrow IPC) of at most SPOOL_ROWS output rows each; then one spool file at a time is read, its
rows put in shard order and its shards cut. No library does this two-step external gather for
Arrow tables, so it is written here.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sftflow.tasks.core.stage import PART_ROWS

TOKENS_COLUMN = "n_tokens_total"  # the filter stage's token count per row
SPLIT_COLUMN = "split"
SPOOL_ROWS = PART_ROWS
ORDER_COLUMN = "__mix_output_position"

Block = tuple[str, str, list[int]]  # (split, category, input rows in shard order)
Tables = Callable[[list[str] | None], Iterable[pa.Table]]  # the input parts, in order: only these columns, or all


def shard_name(split: str, category: str, part: int) -> str:
    return f"shards/{split}/{category}-{part:05d}.parquet"


def _with_split(table: pa.Table, split: str) -> pa.Table:
    if SPLIT_COLUMN in table.column_names:  # re-mixing mixed shards: the new split wins
        table = table.drop_columns([SPLIT_COLUMN])
    return table.append_column(SPLIT_COLUMN, pa.array([split] * table.num_rows, pa.string()))


def sum_tokens(table: pa.Table) -> int | None:
    """The table's n_tokens_total, or None when it has no such column."""
    if TOKENS_COLUMN not in table.column_names:
        return None
    return int(pc.sum(table[TOKENS_COLUMN]).as_py() or 0)


def data_hash(blocks: list[Block], ids: list[str], hashes: list[str | None]) -> str:
    """sha256 of the output rows in shard order: split and category of each block, then each row's
    example_id, copy number and content_hash. Shard boundaries (`shard_rows`) do not enter it, so
    two mixes that differ only in how the same rows are cut into files hash the same.

    >>> data_hash([("train", "qa", [0, 0])], ["a"], ["h"]) == data_hash([("train", "qa", [0])], ["a"], ["h"])
    False
    """
    digest = hashlib.sha256()
    for split, category, rows in blocks:
        digest.update(f"block\x1f{split}\x1f{category}\n".encode())
        seen: Counter[int] = Counter()
        for i in rows:
            digest.update(f"{ids[i]}\x1f{seen[i]}\x1f{hashes[i] or ''}\n".encode())
            seen[i] += 1
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- spooling --
@dataclass(frozen=True)
class SpoolGroup:
    """Consecutive shards of one (split, category) block, spooled to one file."""

    index: int
    split: str
    category: str
    start: int  # first output position (over all blocks, in shard order)
    stop: int
    first_shard: int  # shard number, within the block, of the group's first shard

    @property
    def file_name(self) -> str:
        return f"spool-{self.index:05d}.arrow"


def _spool_groups(blocks: list[Block], shard_rows: int) -> list[SpoolGroup]:
    """Cut every block into groups of whole shards holding at most max(SPOOL_ROWS, shard_rows) rows."""
    shards_per_group = max(1, SPOOL_ROWS // shard_rows)
    groups, start = [], 0
    for split, category, rows in blocks:
        n_shards = math.ceil(len(rows) / shard_rows)
        for first in range(0, n_shards, shards_per_group):
            n_rows = min(len(rows), (first + shards_per_group) * shard_rows) - first * shard_rows
            groups.append(SpoolGroup(len(groups), split, category, start, start + n_rows, first))
            start += n_rows
    return groups


def _spool(tables: Tables, blocks: list[Block],
           groups: list[SpoolGroup], spool_dir: Path) -> None:
    """One pass over the input parts: every output row's input row, with its output position,
    appended to its group's spool file."""
    shutil.rmtree(spool_dir, ignore_errors=True)
    spool_dir.mkdir(parents=True)
    sources = np.fromiter((i for _, _, rows in blocks for i in rows), dtype=np.int64)
    by_source = np.argsort(sources, kind="stable")  # output positions, by input row
    sorted_sources = sources[by_source]
    group_starts = np.array([g.start for g in groups], dtype=np.int64)
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    try:
        offset = 0
        for table in tables(None):
            lo, hi = np.searchsorted(sorted_sources, [offset, offset + table.num_rows])
            positions = by_source[lo:hi]  # the output positions this part feeds
            group_ids = np.searchsorted(group_starts, positions, side="right") - 1
            order = np.argsort(group_ids, kind="stable")
            positions, group_ids = positions[order], group_ids[order]
            rows = table.take(pa.array(sources[positions] - offset)).append_column(
                ORDER_COLUMN, pa.array(positions, pa.int64()))
            bounds = np.flatnonzero(np.diff(group_ids)) + 1
            for start, stop in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(group_ids)]))):
                if stop > start:
                    group = int(group_ids[start])
                    if group not in writers:
                        writers[group] = pa.ipc.new_file(spool_dir / groups[group].file_name, rows.schema)
                    writers[group].write_table(rows.slice(int(start), int(stop - start)))
            offset += table.num_rows
    finally:
        for writer in writers.values():
            writer.close()


def _cut(group: SpoolGroup, spool_dir: Path, shard_rows: int) -> Iterator[tuple[str, pa.Table]]:
    """The group's shards, named and in shard order, from its spool file."""
    with pa.OSFile(str(spool_dir / group.file_name)) as source:
        spooled = pa.ipc.open_file(source).read_all()
    table = _with_split(spooled.take(pc.sort_indices(spooled[ORDER_COLUMN])).drop_columns([ORDER_COLUMN]), group.split)
    del spooled
    for k, start in enumerate(range(0, table.num_rows, shard_rows)):
        yield shard_name(group.split, group.category, group.first_shard + k), table.slice(start, shard_rows)


def gather_shards(tables: Tables, blocks: list[Block], shard_rows: int,
                  spool_dir: Path) -> Iterator[tuple[SpoolGroup, dict[str, pa.Table]]]:
    """Each spool group with its shards (named, in shard order), one group at a time: the first
    request spools every group in one pass over the input, and each group's shards are cut from
    its spool file when it is asked for, so memory holds one input part or one spool file of rows."""
    groups = _spool_groups(blocks, shard_rows)
    _spool(tables, blocks, groups, spool_dir)
    for group in groups:
        yield group, dict(_cut(group, spool_dir, shard_rows))
