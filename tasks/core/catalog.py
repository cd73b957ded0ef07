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

from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.failpoints import failpoint

from sftflow.tasks.core.catalog_schema import SCHEMA, views_sql
from sftflow.tasks.core.mix_shards import mix_shards

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
            _migrate_examples_table(con)
            con.execute(views_sql())

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
                         seconds: float, why: list[dict[str, Any]] | None = None) -> None:
        with self.connect() as con:
            _insert_stage_run(con, run_id, manifest, label, cache_hit, seconds, why)

    # ----------------------------------------------------------------------- artifacts --
    def register_artifact(self, manifest: Manifest, run_id: str) -> bool:
        """Insert the artifact, its lineage and its rows once; returns False if already known.

        Provenance is stored per artifact (`example_versions`, `example_normalized`) and never
        rewritten: a later run that reads an edited source adds a new version beside the old one.
        """
        with self.connect() as con:
            return _register(con, manifest, run_id)

    def record_stage(self, run_id: str, manifest: Manifest, label: str, cache_hit: bool, seconds: float,
                     why: list[dict[str, Any]] | None = None) -> bool:
        """Register the artifact (once) and this run's use of it, in one write transaction."""
        with self.connect() as con:
            new = _register(con, manifest, run_id)
            _insert_stage_run(con, run_id, manifest, label, cache_hit, seconds, why)
            if manifest.stage == "evaluate":
                _set_model_gate(con, manifest)
            failpoint(f"{manifest.stage}:recording")
        return new

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Read the working database (the writer's own view, current to the last write)."""
        with self.connect(publish=False) as con:
            return con.execute(sql, params or []).fetchall()


def _insert_stage_run(con: duckdb.DuckDBPyConnection, run_id: str, manifest: Manifest, label: str,
                      cache_hit: bool, seconds: float, why: list[dict[str, Any]] | None = None) -> None:
    con.execute(
        "INSERT INTO stage_runs (run_id, stage, key, label, cache_hit, seconds, n_in, n_out, why) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, manifest.stage, manifest.key, label, cache_hit, seconds, manifest.n_in, manifest.n_out,
         None if why is None else json.dumps(why, sort_keys=True, ensure_ascii=False)],
    )


def _register(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> bool:
    """Insert the artifact, its lineage, its rows and its provenance once (False if known)."""
    known = con.execute("SELECT 1 FROM artifacts WHERE artifact_id = ?", [manifest.key]).fetchone()
    if known:
        return False
    con.execute(
        "INSERT INTO artifacts (artifact_id, stage, path, sha256, config_hash, code_hash, created_at, run_id, "
        "n_in, n_out, stats, data_hash, key_inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [manifest.key, manifest.stage, manifest.path, manifest.content_hash, manifest.config_hash,
         manifest.code_hash, manifest.created_at, run_id, manifest.n_in, manifest.n_out,
         json.dumps(manifest.stats, sort_keys=True), manifest.data_hash,
         json.dumps(manifest.key_inputs, sort_keys=True) if manifest.key_inputs else None],
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


def _register_examples(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    """Every row the ingest artifact read, as it read it: one version per (example_id, artifact)."""
    path = manifest.file("examples.parquet")
    if not path.is_file():
        return
    con.execute(
        """INSERT INTO example_versions
           SELECT example_id, ?, source, source_format, source_uri, source_row, origin, license, raw
           FROM read_parquet(?)""",
        [manifest.key, str(path)],
    )


def _register_normalized(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    """content_hash and category of every row the normalize artifact kept, under that artifact."""
    parts = [str(p) for p in manifest.files_named("records")]
    if not parts:
        return
    con.execute(
        "INSERT INTO example_normalized SELECT example_id, ?, content_hash, category FROM read_parquet(?)",
        [manifest.key, parts],
    )


def _migrate_examples_table(con: duckdb.DuckDBPyConnection) -> None:
    """A catalog from before versioned provenance has an `examples` table (one row per example_id,
    overwritten by every ingest): its rows become the versions of the artifacts they name, and the
    table makes way for the `examples` view. Versions it had already overwritten are lost."""
    kind = con.execute("SELECT table_type FROM information_schema.tables "
                       "WHERE table_schema = 'main' AND table_name = 'examples'").fetchone()
    if not kind or kind[0] != "BASE TABLE":
        return
    con.execute("""INSERT INTO example_versions
                   SELECT example_id, artifact_id, source, source_format, source_uri, source_row, origin, license, raw
                   FROM examples""")
    con.execute("""INSERT INTO example_normalized
                   SELECT e.example_id, ai.artifact_id, e.content_hash, e.category FROM examples e
                   JOIN artifact_inputs ai ON ai.input_artifact_id = e.artifact_id
                   JOIN artifacts a ON a.artifact_id = ai.artifact_id AND a.stage = 'normalize'
                   WHERE e.content_hash IS NOT NULL""")
    con.execute("DROP VIEW IF EXISTS drops")  # the old view reads the table
    con.execute("DROP TABLE examples")


def _register_shards(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    for shard in mix_shards(manifest):
        shard_id = f"{manifest.key}/{shard.name}"
        path = manifest.file(shard.name)
        con.execute(
            "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)",
            [shard_id, manifest.key, str(path), shard.split, shard.category, shard.n_rows, shard.n_tokens],
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


def _register_model(con: duckdb.DuckDBPyConnection, manifest: Manifest, run_id: str) -> None:
    model = manifest.stats.get("model")
    if not model:
        return
    con.execute(
        "INSERT OR REPLACE INTO models (model_id, artifact_id, base_model, method, path, run_id, gate) "
        "VALUES (?, ?, ?, ?, ?, ?, (SELECT gate FROM models WHERE model_id = ?))",
        [manifest.key, manifest.key, model["base_model"], model["method"],
         str(manifest.file(model["path"])), run_id, manifest.key],
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
    # The gate's verdict: an evals row `gated` (1 gated, 0 passed, NULL not measured; detail = the
    # checks and message) and the model's newest verdict in models.gate.
    gate = _gate(manifest)
    value = {"gated": 1.0, "passed": 0.0}.get(gate.get("status"))
    con.execute("INSERT INTO evals VALUES (?, 'gated', ?, ?, ?, ?)",
                [model_id, value, json.dumps(gate, sort_keys=True), manifest.key, run_id])


def _gate(manifest: Manifest) -> dict[str, Any]:
    """The gate an evaluate artifact recorded (`not_measured` for one written before the gate)."""
    return manifest.stats.get("gate") or {"status": "not_measured"}


def _set_model_gate(con: duckdb.DuckDBPyConnection, manifest: Manifest) -> None:
    """models.gate = the verdict of the evaluation this run used, new or re-used from the cache: a
    cache hit can bring back an older verdict (a tolerance changed back), and models.gate must say
    what the run that just ended decided."""
    gate = _gate(manifest)
    con.execute("UPDATE models SET gate = ? WHERE model_id = ?", [gate.get("status"), manifest.stats.get("model_id")])


_STAGE_REGISTRARS = {"ingest": _register_examples, "normalize": _register_normalized, "mix": _register_shards,
                     "train": _register_model, "evaluate": _register_evals}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
