"""The DuckDB catalog: every run, stage execution, artifact, example, decision and shard.

One writer (the flow process, holding the workspace lock) owns a private working database,
`.catalog-writer.duckdb`, and after every committed write publishes a copy as `catalog.duckdb`
(copy, then atomic rename). Audit readers open `catalog.duckdb` read-only with external access
disabled. DuckDB lets a file be open read-write by one process or read-only by many, never
both, so readers of the writer's own file would stall the pipeline (a DuckDB shell left open
for an afternoon would fail the nightly run) and the pipeline would stall readers. With a
published copy neither ever waits: a reader sees the catalog as of the last finished stage,
and a reader that has the old copy open keeps reading it undisturbed after the rename.
Bulk rows go in from the artifacts' Parquet files through DuckDB's own reader, never
row-by-row. An artifact is registered once, by the run that created it; later runs that hit
the cache point at it through `stage_runs.key`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

import duckdb

from tasks.core.artifacts import Manifest
from tasks.core.failpoints import failpoint

STAGES = ("ingest", "normalize", "dedup", "filter", "score", "mix", "train", "evaluate")
DATA_STAGES = STAGES[:6]  # the stages that judge rows: the ledger covers these

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, flow_run_id VARCHAR, recipe_name VARCHAR, recipe_hash VARCHAR,
    code_version VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    recipe_json VARCHAR, overrides VARCHAR);
CREATE TABLE IF NOT EXISTS stage_runs (
    run_id VARCHAR, stage VARCHAR, key VARCHAR, label VARCHAR, cache_hit BOOLEAN,
    seconds DOUBLE, n_in BIGINT, n_out BIGINT);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id VARCHAR PRIMARY KEY, stage VARCHAR, path VARCHAR, sha256 VARCHAR,
    config_hash VARCHAR, code_hash VARCHAR, created_at TIMESTAMP, run_id VARCHAR,
    n_in BIGINT, n_out BIGINT, stats VARCHAR);
CREATE TABLE IF NOT EXISTS artifact_inputs (artifact_id VARCHAR, input_artifact_id VARCHAR);
CREATE TABLE IF NOT EXISTS examples (
    example_id VARCHAR PRIMARY KEY, source VARCHAR, source_format VARCHAR, source_uri VARCHAR,
    source_row BIGINT, content_hash VARCHAR, category VARCHAR, origin VARCHAR, license VARCHAR,
    raw VARCHAR, artifact_id VARCHAR);
CREATE TABLE IF NOT EXISTS decisions (
    run_id VARCHAR, stage VARCHAR, example_id VARCHAR, kept BOOLEAN, reason VARCHAR,
    score DOUBLE, detail VARCHAR, dup_of VARCHAR, artifact_id VARCHAR);
CREATE TABLE IF NOT EXISTS shards (
    shard_id VARCHAR PRIMARY KEY, artifact_id VARCHAR, path VARCHAR, split VARCHAR,
    category VARCHAR, n_rows BIGINT, n_tokens BIGINT);
CREATE TABLE IF NOT EXISTS shard_examples (shard_id VARCHAR, example_id VARCHAR, n_copies BIGINT);
CREATE TABLE IF NOT EXISTS mixture (
    artifact_id VARCHAR, category VARCHAR, target_share DOUBLE, realized_share DOUBLE,
    n_available BIGINT, n_rows BIGINT, n_unique BIGINT, n_eval BIGINT, n_tokens BIGINT);
CREATE TABLE IF NOT EXISTS models (
    model_id VARCHAR PRIMARY KEY, artifact_id VARCHAR, base_model VARCHAR, method VARCHAR,
    path VARCHAR, run_id VARCHAR);
CREATE TABLE IF NOT EXISTS evals (model_id VARCHAR, metric VARCHAR, value DOUBLE, detail VARCHAR,
    artifact_id VARCHAR, run_id VARCHAR);
CREATE OR REPLACE TABLE stage_order AS
    SELECT * FROM (VALUES {", ".join(f"('{s}', {i})" for i, s in enumerate(STAGES))}) t(stage, ordinal);

-- Per run and stage: rows the stage received, and the decisions of the artifacts it used.
CREATE OR REPLACE VIEW ledger_by_run AS
WITH d AS (
    SELECT artifact_id, count(*) FILTER (WHERE kept) AS n_kept,
           count(*) FILTER (WHERE NOT kept) AS n_dropped
    FROM decisions GROUP BY artifact_id)
SELECT sr.run_id, sr.stage, sum(sr.n_in) AS n_in, sum(coalesce(d.n_kept, 0)) AS n_kept,
       sum(coalesce(d.n_dropped, 0)) AS n_dropped, sum(sr.n_out) AS n_out
FROM stage_runs sr LEFT JOIN d ON d.artifact_id = sr.key
WHERE sr.stage IN ({", ".join(f"'{s}'" for s in DATA_STAGES)})
GROUP BY sr.run_id, sr.stage;

-- The ledger of the most recent finished run, in pipeline order.
CREATE OR REPLACE VIEW ledger AS
SELECT l.stage, l.n_in, l.n_kept, l.n_dropped, l.n_out
FROM ledger_by_run l JOIN stage_order o USING (stage)
WHERE l.run_id = (SELECT run_id FROM runs WHERE status = 'completed'
                  ORDER BY finished_at DESC LIMIT 1)
ORDER BY o.ordinal;

-- The artifacts the most recent completed run used (computed or reused from the cache).
CREATE OR REPLACE VIEW latest_artifacts AS
SELECT sr.stage, sr.label, sr.key AS artifact_id, sr.cache_hit, sr.run_id
FROM stage_runs sr
WHERE sr.run_id = (SELECT run_id FROM runs WHERE status = 'completed' ORDER BY finished_at DESC LIMIT 1);

-- Why was a row dropped in the latest run? One line per dropping decision, with the row's source.
CREATE OR REPLACE VIEW drops AS
SELECT d.example_id, d.stage, d.reason, d.score, d.detail, d.dup_of, e.source, e.source_uri,
       e.source_row, d.run_id AS decided_in_run
FROM decisions d JOIN latest_artifacts la ON la.artifact_id = d.artifact_id
LEFT JOIN examples e USING (example_id)
WHERE NOT d.kept;

-- The realized vs target mixture and the shards of the latest run.
CREATE OR REPLACE VIEW latest_mixture AS
SELECT m.* FROM mixture m JOIN latest_artifacts la USING (artifact_id);
CREATE OR REPLACE VIEW latest_shards AS
SELECT s.* FROM shards s JOIN latest_artifacts la USING (artifact_id);
"""


def connect_readonly(path: Path, retry_seconds: float = 10.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection with file access disabled: audits can read the catalog, nothing else.

    `path` is the published catalog, which no sftflow process opens for writing; the retry only
    covers another tool holding it read-write by mistake.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no catalog at {path}: run `sftflow run RECIPE` first")
    return _connect(path, retry_seconds, read_only=True,
                    config={"enable_external_access": False, "lock_configuration": True})


WRITER_MEMORY_LIMIT = "1GB"


def _connect(path: Path, retry_seconds: float, **kwargs: Any) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried while another process holds the file lock (DuckDB allows one writer)."""
    deadline = time.monotonic() + retry_seconds
    while True:
        try:
            return duckdb.connect(str(path), **kwargs)
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def writer_path(published: Path) -> Path:
    """The writer's private database next to the published catalog: catalog.duckdb -> .catalog-writer.duckdb."""
    return published.with_name(f".{published.stem}-writer{published.suffix}")


class Catalog:
    """Read-write access for the flow process (the single writer); every write is published."""

    def __init__(self, path: Path):
        self.path = Path(path)  # the published copy: what `sftflow sql` and every reader open
        self.writer_path = writer_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.writer_path.exists() and self.path.is_file():
            # a catalog written before the writer/published split: it becomes the working copy
            shutil.copyfile(self.path, self.writer_path)
        with self.connect() as con:
            con.execute(SCHEMA)

    @contextlib.contextmanager
    def connect(self, retry_seconds: float = 60.0, publish: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write transaction on the working database, published to `path` once committed."""
        # DuckDB's default memory limit is 80% of the machine's RAM; the flow process shares the
        # machine with its stages, so the writer gets a fixed budget and spills beyond it.
        con = _connect(self.writer_path, retry_seconds, config={"memory_limit": WRITER_MEMORY_LIMIT})
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            if publish:
                con.execute("CHECKPOINT")  # the WAL folded into the file: the copy is complete
        finally:
            con.close()
        if publish:
            self.publish()

    def publish(self) -> None:
        """Replace the published catalog with a copy of the working one, atomically."""
        partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            shutil.copyfile(self.writer_path, partial)
            os.replace(partial, self.path)
        finally:
            partial.unlink(missing_ok=True)

    def recover(self) -> list[str]:
        """After a crash: runs still marked running are interrupted, half-published copies go.

        Only the holder of the workspace lock calls this, so no run it marks can still be alive.
        """
        for partial in self.path.parent.glob(f".{self.path.name}.*.partial"):
            partial.unlink(missing_ok=True)
        with self.connect() as con:
            stale = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()]
            con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        return stale

    # ---------------------------------------------------------------------------- runs --
    def start_run(self, run_id: str, flow_run_id: str | None, recipe_name: str, recipe_hash: str,
                  code_version: str, recipe_json: str, overrides: list[str]) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, NULL, 'running', ?, ?)",
                [run_id, flow_run_id, recipe_name, recipe_hash, code_version, _now(), recipe_json,
                 json.dumps(overrides)],
            )

    def finish_run(self, run_id: str, status: str) -> None:
        with self.connect() as con:
            con.execute("UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?", [_now(), status, run_id])

    def record_stage_run(self, run_id: str, manifest: Manifest, label: str, cache_hit: bool,
                         seconds: float) -> None:
        with self.connect() as con:
            _insert_stage_run(con, run_id, manifest, label, cache_hit, seconds)

    # ----------------------------------------------------------------------- artifacts --
    def register_artifact(self, manifest: Manifest, run_id: str) -> bool:
        """Insert the artifact, its lineage and its rows once; returns False if already known.

        Provenance (`examples`) is refreshed on every use, cache hits included, so it always
        describes the artifacts of the latest run (a source edited and reverted points back).
        """
        with self.connect() as con:
            return _register(con, manifest, run_id)

    def record_stage(self, run_id: str, manifest: Manifest, label: str, cache_hit: bool, seconds: float) -> bool:
        """Register the artifact (once) and this run's use of it, in one write transaction."""
        with self.connect() as con:
            new = _register(con, manifest, run_id)
            _insert_stage_run(con, run_id, manifest, label, cache_hit, seconds)
            failpoint(f"{manifest.stage}:recording")
        return new

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Read the working database (the writer's own view, current to the last write)."""
        with self.connect(publish=False) as con:
            return con.execute(sql, params or []).fetchall()


def _insert_stage_run(con: duckdb.DuckDBPyConnection, run_id: str, manifest: Manifest, label: str,
                      cache_hit: bool, seconds: float) -> None:
    con.execute(
        "INSERT INTO stage_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, manifest.stage, manifest.key, label, cache_hit, seconds, manifest.n_in, manifest.n_out],
    )


def _register(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> bool:
    """Insert the artifact, its lineage and its rows once (False if known); refresh provenance."""
    refresh = _PROVENANCE_REFRESH.get(manifest.stage)
    if refresh:
        refresh(con, manifest)
    known = con.execute("SELECT 1 FROM artifacts WHERE artifact_id = ?", [manifest.key]).fetchone()
    if known:
        return False
    con.execute(
        "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [manifest.key, manifest.stage, manifest.path, manifest.content_hash, manifest.config_hash,
         manifest.code_hash, manifest.created_at, run_id, manifest.n_in, manifest.n_out,
         json.dumps(manifest.stats, sort_keys=True)],
    )
    for input_key in manifest.inputs:
        con.execute("INSERT INTO artifact_inputs VALUES (?, ?)", [manifest.key, input_key])
    decisions = manifest.file("decisions.parquet")
    if decisions.is_file():
        con.execute(
            "INSERT INTO decisions SELECT ?, ?, example_id, kept, reason, score, detail, dup_of, ? "
            "FROM read_parquet(?)",
            [run_id, manifest.stage, manifest.key, str(decisions)],
        )
    registrar = _STAGE_REGISTRARS.get(manifest.stage)
    if registrar:
        registrar(con, manifest, run_id)
    return True


def _register_examples(con: duckdb.DuckDBPyConnection, manifest: Manifest) -> None:
    path = manifest.file("examples.parquet")
    if not path.is_file():
        return
    # A changed source file gives row N new content under the same example_id: the newest
    # ingest wins for provenance; decisions of older artifacts stay as they were.
    con.execute(
        """INSERT INTO examples
           SELECT example_id, source, source_format, source_uri, source_row, NULL, NULL, origin,
                  license, raw, ? FROM read_parquet(?)
           ON CONFLICT (example_id) DO UPDATE SET source = excluded.source,
               source_format = excluded.source_format, source_uri = excluded.source_uri,
               source_row = excluded.source_row, origin = excluded.origin, license = excluded.license,
               raw = excluded.raw, artifact_id = excluded.artifact_id, content_hash = NULL,
               category = NULL""",
        [manifest.key, str(path)],
    )


def _register_normalized(con: duckdb.DuckDBPyConnection, manifest: Manifest) -> None:
    parts = [str(p) for p in manifest.files_named("records")]
    if not parts:
        return
    con.execute(
        """UPDATE examples SET content_hash = r.content_hash, category = r.category
           FROM (SELECT example_id, content_hash, category FROM read_parquet(?)) r
           WHERE examples.example_id = r.example_id""",
        [parts],
    )


def _register_shards(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    for shard in manifest.stats.get("shards", []):
        shard_id = f"{manifest.key}/{shard['name']}"
        path = manifest.file(shard["name"])
        con.execute(
            "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)",
            [shard_id, manifest.key, str(path), shard["split"], shard["category"], shard["n_rows"],
             shard["n_tokens"]],
        )
        con.execute(
            "INSERT INTO shard_examples SELECT ?, example_id, count(*) FROM read_parquet(?) GROUP BY example_id",
            [shard_id, str(path)],
        )
    for row in manifest.stats.get("mixture", []):
        con.execute(
            "INSERT INTO mixture VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [manifest.key, row["category"], row["target_share"], row["realized_share"], row["n_available"],
             row["n_rows"], row["n_unique"], row["n_eval"], row["n_tokens"]],
        )


_PROVENANCE_REFRESH = {"ingest": _register_examples, "normalize": _register_normalized}


def _register_model(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    model = manifest.stats.get("model")
    if not model:
        return
    con.execute(
        "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
        [manifest.key, manifest.key, model["base_model"], model["method"],
         str(manifest.file(model["path"])), run_id],
    )


def _register_evals(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    model_id = manifest.stats.get("model_id")
    for metric in manifest.stats.get("metrics", []):
        con.execute(
            "INSERT INTO evals VALUES (?, ?, ?, ?, ?, ?)",
            [model_id, metric["metric"], metric["value"],
             json.dumps(metric.get("detail"), sort_keys=True) if metric.get("detail") is not None else None,
             manifest.key, run_id],
        )


_STAGE_REGISTRARS = {"mix": _register_shards, "train": _register_model, "evaluate": _register_evals}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
