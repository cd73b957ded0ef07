"""Content-addressed artifact folders: artifacts/<stage>/<key>/ with a manifest written last.

A stage writes its Parquet parts into a temporary sibling folder, writes `manifest.json` (file
names, row counts, sha256 of every file) last, and renames the folder into place. A folder
without a manifest does not exist, and a manifest whose files do not match their hashes is
treated as missing, so a crash at any point never leaves something a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from sftflow.tasks.core.hashing import sha256_file, short_hash

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"  # a writer's folder before commit: never read, swept after a crash
DECISIONS_FILE = "decisions.parquet"  # the stage's decision log: the catalog reads it, no later stage does


class ArtifactFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str  # relative to the artifact folder
    sha256: str
    n_rows: int | None = None


class Manifest(BaseModel):
    """The small JSON result a stage task returns and the flow passes on (never data itself)."""

    model_config = ConfigDict(frozen=True)
    stage: str
    key: str
    path: str  # absolute folder path
    files: list[ArtifactFile]
    inputs: list[str] = Field(default_factory=list)  # keys of input artifacts
    config_hash: str
    code_hash: str
    n_in: int
    n_out: int
    stats: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    label: str = ""  # the call's label (a per-source stage's source name)
    # What the key hashes, by name (StageCall.key_inputs); empty in artifacts written before it was kept.
    key_inputs: dict[str, Any] = Field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Hash of all the artifact's bytes (through its files' hashes): its identity in the catalog."""
        return short_hash(sorted((f.name, f.sha256) for f in self.files))

    @property
    def data_hash(self) -> str:
        """Hash of what later stages read from this artifact: what downstream cache keys use.

        Later stages read records parts and extra tables, never the decision log (only the
        catalog does), so a reworded decision detail does not re-run them. A stage whose bytes
        depend on a layout its readers ignore declares its own `stats["data_hash"]` (mix: the
        rows of both splits, independent of shard boundaries, so `mix.shard_rows` does not
        retrain).

        >>> f = lambda name, sha: ArtifactFile(name=name, sha256=sha)
        >>> m = Manifest(stage="s", key="k", path="/", config_hash="c", code_hash="c", n_in=1, n_out=1,
        ...              created_at="", files=[f("records-00000.parquet", "a"), f(DECISIONS_FILE, "b")])
        >>> reworded = m.model_copy(update={"files": [f("records-00000.parquet", "a"), f(DECISIONS_FILE, "B")]})
        >>> reworded.data_hash == m.data_hash, reworded.content_hash == m.content_hash
        (True, False)
        >>> m.model_copy(update={"stats": {"data_hash": "rows"}}).data_hash
        'rows'
        """
        declared = self.stats.get("data_hash")
        if declared:
            return str(declared)
        return short_hash(sorted((f.name, f.sha256) for f in self.files if f.name != DECISIONS_FILE))

    def file(self, name: str) -> Path:
        return Path(self.path) / name

    def files_named(self, prefix: str) -> list[Path]:
        return [Path(self.path) / f.name for f in self.files if f.name.startswith(prefix)]


class ArtifactWriter:
    """Collects files in a temporary folder; `commit` writes the manifest and renames into place."""

    def __init__(self, stage_dir: Path, stage: str, key: str):
        self.stage, self.key = stage, key
        self.final = stage_dir / key
        self.tmp = stage_dir / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self._files: list[ArtifactFile] = []

    def write_table(self, name: str, table: pa.Table) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        self._files.append(ArtifactFile(name=name, sha256=sha256_file(path), n_rows=table.num_rows))
        return path

    def write_json(self, name: str, value: Any) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
        self._files.append(ArtifactFile(name=name, sha256=sha256_file(path)))
        return path

    def add_path(self, name: str, source: Path) -> None:
        """Move an existing file or folder into the artifact as `name`, hashing every file."""
        target = self.tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for path in files:
            self._files.append(ArtifactFile(name=path.relative_to(self.tmp).as_posix(), sha256=sha256_file(path)))

    def commit(self, *, inputs: list[str], config_hash: str, code_hash: str, n_in: int, n_out: int,
               stats: dict[str, Any], label: str = "", key_inputs: dict[str, Any] | None = None) -> Manifest:
        manifest = Manifest(
            stage=self.stage, key=self.key, path=str(self.final), files=self._files, inputs=inputs,
            config_hash=config_hash, code_hash=code_hash, n_in=n_in, n_out=n_out, stats=stats,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), label=label, key_inputs=key_inputs or {},
        )
        manifest_path = self.tmp / MANIFEST
        manifest_path.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        with open(manifest_path, "rb") as handle:
            os.fsync(handle.fileno())
        if self.final.exists():  # a stale, unverifiable folder from a crashed run: replace it
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class TableAppender:
    """One Parquet file of an artifact written a table at a time (a row group or more each), with
    the same options as ArtifactWriter.write_table; registered in the artifact on `close`."""

    def __init__(self, writer: ArtifactWriter, name: str):
        self.writer, self.name = writer, name
        self.n_rows = 0
        self._file: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def append(self, table: pa.Table) -> None:
        if self._file is None:
            path = self.writer.tmp / self.name
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = pq.ParquetWriter(path, table.schema, compression="zstd")
            self._schema = table.schema
        elif table.schema != self._schema:  # e.g. a column that is all null in this part
            table = table.cast(self._schema)
        self._file.write_table(table)
        self.n_rows += table.num_rows

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        path = self.writer.tmp / self.name
        self.writer._files.append(ArtifactFile(name=self.name, sha256=sha256_file(path), n_rows=self.n_rows))


class ArtifactStore:
    def __init__(self, artifacts_dir: Path):
        self.root = artifacts_dir

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def writer(self, stage: str, key: str) -> ArtifactWriter:
        return ArtifactWriter(self.stage_dir(stage), stage, key)

    def sweep_partial(self) -> list[Path]:
        """Remove temporary folders that a killed writer left (they never had a manifest).

        Only safe for the holder of the workspace lock: another run's writer would be mid-write.
        """
        removed = []
        for folder in sorted(self.root.glob(f"*/{TMP_PREFIX}*")):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        return removed

    def load(self, stage: str, key: str, verify: bool = True) -> Manifest | None:
        """The committed manifest for (stage, key), or None when absent or its files don't match."""
        folder = self.stage_dir(stage) / key
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        if manifest.path != str(folder):  # warehouse moved: paths are re-anchored, hashes still hold
            manifest = manifest.model_copy(update={"path": str(folder)})
        if verify and not verify_files(manifest):
            return None
        return manifest


def verify_files(manifest: Manifest) -> bool:
    for f in manifest.files:
        path = manifest.file(f.name)
        if not path.is_file() or sha256_file(path) != f.sha256:
            return False
    return True


def read_tables(paths: list[Path]) -> pa.Table:
    """Concatenate Parquet parts (schemas are unified: stages add columns, never rename them)."""
    tables = [pq.read_table(p) for p in paths]
    if not tables:
        raise ValueError("no Parquet parts to read")
    return pa.concat_tables(tables, promote_options="default")
