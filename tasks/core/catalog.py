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

from sftflow.tasks.core import stages

# The ledger views cover the data stages (stages.data_stages()), and train too (ledger_by_run adds it):
# train decides every distinct train row (kept, or dropped as `no_supervised_tokens` when
# truncation leaves it nothing), but only train artifacts written since it decides have rows.

SCHEMA = """
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
    n_in BIGINT, n_out BIGINT, stats VARCHAR, data_hash VARCHAR);
-- data_hash: what downstream stages read (Manifest.data_hash). Two ingest artifacts with one
-- data_hash read a source identically (e.g. ingest's code changed, the file did not): one version.
ALTER TABLE artifacts ADD COLUMN IF NOT EXISTS data_hash VARCHAR;
CREATE TABLE IF NOT EXISTS artifact_inputs (artifact_id VARCHAR, input_artifact_id VARCHAR);
-- Provenance is immutable: a row is stored once per ingest artifact that read it (a source
-- edited and re-run gives row N new content under the same example_id, in a new artifact), and
-- its normalized identity once per normalize artifact. Nothing here is ever updated.
CREATE TABLE IF NOT EXISTS example_versions (
    example_id VARCHAR, artifact_id VARCHAR, source VARCHAR, source_format VARCHAR, source_uri VARCHAR,
    source_row BIGINT, origin VARCHAR, license VARCHAR, raw VARCHAR);
CREATE TABLE IF NOT EXISTS example_normalized (
    example_id VARCHAR, artifact_id VARCHAR, content_hash VARCHAR, category VARCHAR);
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
    path VARCHAR, run_id VARCHAR, gate VARCHAR);
CREATE TABLE IF NOT EXISTS evals (model_id VARCHAR, metric VARCHAR, value DOUBLE, detail VARCHAR,
    artifact_id VARCHAR, run_id VARCHAR);
-- gate: the verdict of the evaluation the model's latest run used (passed | gated | not_measured; NULL until
-- evaluated). A gated model's artifact is kept; the evals row `gated` holds each evaluation's own.
ALTER TABLE models ADD COLUMN IF NOT EXISTS gate VARCHAR;
"""


def views_sql() -> str:
    """The views, built from the stage registry as it is when the catalog opens."""
    stage_names, data_stages = stages.stage_names(), stages.data_stages()
    return f"""
CREATE OR REPLACE TABLE stage_order AS
    SELECT * FROM (VALUES {", ".join(f"('{s}', {i})" for i, s in enumerate(stage_names))}) t(stage, ordinal);

-- Per run and stage (data stages and train): rows the stage received, and the decisions of the
-- artifacts it used.
CREATE OR REPLACE VIEW ledger_by_run AS
WITH d AS (
    SELECT artifact_id, count(*) FILTER (WHERE kept) AS n_kept,
           count(*) FILTER (WHERE NOT kept) AS n_dropped
    FROM decisions GROUP BY artifact_id)
SELECT sr.run_id, sr.stage, sum(sr.n_in) AS n_in, sum(coalesce(d.n_kept, 0)) AS n_kept,
       sum(coalesce(d.n_dropped, 0)) AS n_dropped, sum(sr.n_out) AS n_out
FROM stage_runs sr LEFT JOIN d ON d.artifact_id = sr.key
WHERE sr.stage IN ({", ".join(f"'{s}'" for s in data_stages)})
   -- train artifacts written before train made decisions have none: they are left out
   OR (sr.stage = 'train' AND d.artifact_id IS NOT NULL)
GROUP BY sr.run_id, sr.stage;

-- The ledger of the most recent finished run, in pipeline order.
CREATE OR REPLACE VIEW ledger AS
SELECT l.stage, l.n_in, l.n_kept, l.n_dropped, l.n_out
FROM ledger_by_run l JOIN stage_order o USING (stage)
WHERE l.run_id = (SELECT run_id FROM runs WHERE status IN ('completed', 'gated')
                  ORDER BY finished_at DESC LIMIT 1)
ORDER BY o.ordinal;

-- The artifacts the most recent completed run used (computed or reused from the cache). A gated
-- run (eval.on_regression: fail) is not completed: whoever takes the latest model from here never
-- gets one that failed the gate.
CREATE OR REPLACE VIEW latest_artifacts AS
SELECT sr.stage, sr.label, sr.key AS artifact_id, sr.cache_hit, sr.run_id
FROM stage_runs sr
WHERE sr.run_id = (SELECT run_id FROM runs WHERE status = 'completed' ORDER BY finished_at DESC LIMIT 1);

-- Every artifact's upstream artifacts, transitively (the artifact itself excluded).
CREATE OR REPLACE VIEW artifact_upstream AS
WITH RECURSIVE up(artifact_id, upstream_id) AS (
    SELECT artifact_id, input_artifact_id FROM artifact_inputs
    UNION SELECT up.artifact_id, ai.input_artifact_id FROM up JOIN artifact_inputs ai ON ai.artifact_id = up.upstream_id)
SELECT artifact_id, upstream_id FROM up;

-- The rows as the latest completed run read them (its ingest and normalize artifacts).
CREATE OR REPLACE VIEW latest_examples AS
SELECT ev.example_id, ev.source, ev.source_format, ev.source_uri, ev.source_row, n.content_hash, n.category,
       ev.origin, ev.license, ev.raw, ev.artifact_id
FROM example_versions ev JOIN latest_artifacts la ON la.artifact_id = ev.artifact_id AND la.stage = 'ingest'
LEFT JOIN (SELECT en.example_id, en.content_hash, en.category FROM example_normalized en
           JOIN latest_artifacts la ON la.artifact_id = en.artifact_id AND la.stage = 'normalize') n
     USING (example_id);

-- The newest version of each row: as read by the ingest artifact a run used most recently (any
-- run, failed or running ones included), with the newest normalize of that ingest artifact's
-- data (matched by data_hash: a normalize reused from the cache may name an older ingest
-- artifact that read the same rows).
CREATE OR REPLACE VIEW examples AS
WITH used AS (
    SELECT a.artifact_id, coalesce(max(r.started_at), any_value(a.created_at)) AS last_used
    FROM artifacts a LEFT JOIN stage_runs sr ON sr.key = a.artifact_id LEFT JOIN runs r ON r.run_id = sr.run_id
    WHERE a.stage IN ('ingest', 'normalize') GROUP BY a.artifact_id),
newest AS (
    SELECT ev.* FROM example_versions ev LEFT JOIN used u USING (artifact_id)
    QUALIFY row_number() OVER (PARTITION BY ev.example_id ORDER BY u.last_used DESC NULLS LAST, ev.artifact_id DESC) = 1),
normalized AS (
    SELECT coalesce(ia.data_hash, ai.input_artifact_id) AS ingest_data, en.example_id, en.content_hash, en.category
    FROM example_normalized en JOIN artifact_inputs ai ON ai.artifact_id = en.artifact_id
    LEFT JOIN artifacts ia ON ia.artifact_id = ai.input_artifact_id
    LEFT JOIN used u ON u.artifact_id = en.artifact_id
    QUALIFY row_number() OVER (PARTITION BY coalesce(ia.data_hash, ai.input_artifact_id), en.example_id
                               ORDER BY u.last_used DESC NULLS LAST, en.artifact_id DESC) = 1)
SELECT e.example_id, e.source, e.source_format, e.source_uri, e.source_row, n.content_hash, n.category,
       e.origin, e.license, e.raw, e.artifact_id
FROM newest e LEFT JOIN artifacts ea ON ea.artifact_id = e.artifact_id
LEFT JOIN normalized n ON n.ingest_data = coalesce(ea.data_hash, e.artifact_id) AND n.example_id = e.example_id;

-- What each model was trained on, as of its own run: the train-split rows of the mix it read,
-- less the rows its train stage dropped, each with the source row as the model's own upstream
-- ingest (and normalize) artifacts read it. Editing a source later changes nothing here.
CREATE OR REPLACE VIEW model_examples AS
WITH trained AS (
    SELECT m.model_id, m.artifact_id AS train_artifact_id, se.example_id, sum(se.n_copies) AS n_copies
    FROM models m JOIN artifact_inputs ai ON ai.artifact_id = m.artifact_id
    JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
    JOIN shard_examples se ON se.shard_id = s.shard_id
    GROUP BY ALL),
upstream AS (
    SELECT up.artifact_id, up.upstream_id, a.stage FROM artifact_upstream up
    JOIN artifacts a ON a.artifact_id = up.upstream_id AND a.stage IN ('ingest', 'normalize'))
SELECT t.model_id, t.example_id, t.n_copies, ev.source, ev.source_format, ev.source_uri, ev.source_row,
       en.content_hash, en.category, ev.origin, ev.license, ev.raw, ev.artifact_id AS ingest_artifact_id
FROM trained t
JOIN upstream ui ON ui.artifact_id = t.train_artifact_id AND ui.stage = 'ingest'
JOIN example_versions ev ON ev.artifact_id = ui.upstream_id AND ev.example_id = t.example_id
LEFT JOIN (SELECT un.artifact_id AS train_artifact_id, en.* FROM upstream un
           JOIN example_normalized en ON en.artifact_id = un.upstream_id WHERE un.stage = 'normalize') en
     ON en.train_artifact_id = t.train_artifact_id AND en.example_id = t.example_id
WHERE NOT EXISTS (SELECT 1 FROM decisions d
                  WHERE d.artifact_id = t.train_artifact_id AND d.example_id = t.example_id AND NOT d.kept);

-- Why was a row dropped in the latest run? One line per dropping decision, with the row's source
-- as that run read it.
CREATE OR REPLACE VIEW drops AS
SELECT d.example_id, d.stage, d.reason, d.score, d.detail, d.dup_of, e.source, e.source_uri,
       e.source_row, d.run_id AS decided_in_run
FROM decisions d JOIN latest_artifacts la ON la.artifact_id = d.artifact_id
LEFT JOIN latest_examples e USING (example_id)
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
                         seconds: float) -> None:
        with self.connect() as con:
            _insert_stage_run(con, run_id, manifest, label, cache_hit, seconds)

    # ----------------------------------------------------------------------- artifacts --
    def register_artifact(self, manifest: Manifest, run_id: str) -> bool:
        """Insert the artifact, its lineage and its rows once; returns False if already known.

        Provenance is stored per artifact (`example_versions`, `example_normalized`) and never
        rewritten: a later run that reads an edited source adds a new version beside the old one.
        """
        with self.connect() as con:
            return _register(con, manifest, run_id)

    def record_stage(self, run_id: str, manifest: Manifest, label: str, cache_hit: bool, seconds: float) -> bool:
        """Register the artifact (once) and this run's use of it, in one write transaction."""
        with self.connect() as con:
            new = _register(con, manifest, run_id)
            _insert_stage_run(con, run_id, manifest, label, cache_hit, seconds)
            if manifest.stage == "evaluate":
                _set_model_gate(con, manifest)
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
    """Insert the artifact, its lineage, its rows and its provenance once (False if known)."""
    known = con.execute("SELECT 1 FROM artifacts WHERE artifact_id = ?", [manifest.key]).fetchone()
    if known:
        return False
    con.execute(
        "INSERT INTO artifacts (artifact_id, stage, path, sha256, config_hash, code_hash, created_at, run_id, "
        "n_in, n_out, stats, data_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [manifest.key, manifest.stage, manifest.path, manifest.content_hash, manifest.config_hash,
         manifest.code_hash, manifest.created_at, run_id, manifest.n_in, manifest.n_out,
         json.dumps(manifest.stats, sort_keys=True), manifest.data_hash],
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
