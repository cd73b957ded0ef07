"""The shards a mix artifact holds, typed: what train and evaluate read and the catalog registers.

Mix records each shard file it writes in its manifest (`stats["shards"]`); this module is the one
reader of that list, so the producer (tasks/mix.py, through `ShardEntry.to_stats`) and its three
readers cannot drift apart. It lives in core, beside the artifact store, so the catalog reads it
without importing the mixing libraries; it is in the keys of the stages that import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftflow.tasks.core.artifacts import Manifest

TRAIN, EVAL = "train", "eval"  # the two splits of a mixture's shards


@dataclass(frozen=True)
class ShardEntry:
    """One shard file of a mix artifact, as its manifest's `stats["shards"]` lists it."""

    name: str  # the file inside the artifact: shards/<split>/<category>-<part>.parquet
    split: str  # train or eval
    category: str
    n_rows: int
    n_tokens: int | None  # None when the input rows carry no token counts

    def to_stats(self) -> dict[str, Any]:
        """The manifest entry (the order of its keys is part of the manifest's bytes)."""
        return {"name": self.name, "split": self.split, "category": self.category,
                "n_rows": self.n_rows, "n_tokens": self.n_tokens}


def mix_shards(manifest: Manifest) -> list[ShardEntry]:
    """The shards a mix artifact holds, in the order it wrote them.

    >>> m = Manifest.model_construct(stats={"shards": [
    ...     {"name": "shards/train/code-00000.parquet", "split": "train", "category": "code",
    ...      "n_rows": 3, "n_tokens": None}]})
    >>> [(s.split, s.category, s.n_rows) for s in mix_shards(m)]
    [('train', 'code', 3)]
    """
    return [ShardEntry(**entry) for entry in manifest.stats.get("shards", [])]


def shard_files(manifest: Manifest, split: str) -> list[Path]:
    """The files of one split's non-empty shards, in the order the mix artifact lists them."""
    if "shards" not in manifest.stats:  # written before mix listed its shards: the folder's files
        return manifest.files_named(f"shards/{split}/")
    return [manifest.file(shard.name) for shard in mix_shards(manifest) if shard.split == split and shard.n_rows]
