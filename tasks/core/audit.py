"""Answers to the two audit questions every user asks, read from the catalog (read-only).

- `explain(example_id)`: where a row came from (its raw source line), what it became after
  normalization, and every decision any stage made about it, in pipeline order.
- `lineage(model_id)`: the sources, shards and example ids a model was trained on.

Both take a read-only DuckDB connection and the warehouse's artifact store (for the normalized
record, read from the normalize artifact's Parquet parts), and return plain JSON-able dicts; the
CLI renders them.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tasks.core.artifacts import ArtifactStore

MIN_PREFIX_CHARS = 6  # ids are 32 hex chars; a unique prefix of 6+ is accepted, like git


class NotFound(LookupError):
    """The id names nothing in the catalog (or a prefix names several things)."""


# Rows one run read (ingest decisions) that are neither in one of its shards nor dropped by one
# of its stages, for a run_id parameter: the ledger rule "nothing is lost silently" as a count.
UNACCOUNTED_ROWS_SQL = """
WITH keys AS (SELECT key FROM stage_runs WHERE run_id = ?),
     read_rows AS (SELECT example_id FROM decisions
                   WHERE stage = 'ingest' AND artifact_id IN (SELECT key FROM keys)),
     dropped AS (SELECT example_id FROM decisions
                 WHERE NOT kept AND artifact_id IN (SELECT key FROM keys)),
     sharded AS (SELECT se.example_id FROM shard_examples se JOIN shards s USING (shard_id)
                 WHERE s.artifact_id IN (SELECT key FROM keys))
SELECT count(*) FROM read_rows
WHERE example_id NOT IN (SELECT example_id FROM dropped)
  AND example_id NOT IN (SELECT example_id FROM sharded)
"""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _resolve_id(con: duckdb.DuckDBPyConnection, table: str, column: str, given: str, what: str) -> str:
    if len(given) < MIN_PREFIX_CHARS:
        raise NotFound(f"{what} {given!r} is too short: give at least {MIN_PREFIX_CHARS} characters")
    found = [r[0] for r in con.execute(
        f"SELECT {column} FROM {table} WHERE starts_with({column}, ?) LIMIT 2", [given]).fetchall()]
    if not found:
        raise NotFound(f"no {what} {given!r} in the catalog; list some with: "
                       f"sftflow sql \"SELECT {column} FROM {table} LIMIT 10\"")
    if len(found) > 1 and given not in found:
        raise NotFound(f"{what} prefix {given!r} is ambiguous ({found[0]}, {found[1]}, ...): give more characters")
    return given if given in found else found[0]


def explain(con: duckdb.DuckDBPyConnection, store: ArtifactStore, example_id: str) -> dict[str, Any]:
    """Everything the catalog knows about one source row."""
    example_id = _resolve_id(con, "examples", "example_id", example_id, "example")
    example = _rows(con, "SELECT * FROM examples WHERE example_id = ?", [example_id])[0]
    raw = example.pop("raw")
    decisions = _rows(con, """
        SELECT d.stage, d.kept, d.reason, d.score, d.detail, d.dup_of, d.artifact_id,
               d.run_id AS decided_in_run, r.started_at,
               d.artifact_id IN (SELECT artifact_id FROM latest_artifacts) AS in_latest_run
        FROM decisions d JOIN stage_order o USING (stage) LEFT JOIN runs r ON r.run_id = d.run_id
        WHERE d.example_id = ? ORDER BY r.started_at, o.ordinal""", [example_id])
    for d in decisions:
        d["started_at"] = str(d["started_at"]) if d["started_at"] is not None else None
        if d["detail"]:
            try:
                d["detail"] = json.loads(d["detail"])
            except ValueError:
                pass
    shards = _rows(con, """
        SELECT s.shard_id, s.split, s.category, se.n_copies, s.artifact_id,
               s.artifact_id IN (SELECT artifact_id FROM latest_artifacts) AS in_latest_run
        FROM shard_examples se JOIN shards s USING (shard_id) WHERE se.example_id = ?
        ORDER BY s.shard_id""", [example_id])
    models = [r[0] for r in con.execute("""
        SELECT DISTINCT m.model_id FROM models m
        JOIN artifact_inputs ai ON ai.artifact_id = m.artifact_id
        JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
        JOIN shard_examples se ON se.shard_id = s.shard_id AND se.example_id = ?
        ORDER BY 1""", [example_id]).fetchall()]
    return {"example": example, "raw": raw, "normalized": _normalized(con, store, example_id),
            "decisions": decisions, "shards": shards, "trained_models": models}


def _normalized(con: duckdb.DuckDBPyConnection, store: ArtifactStore, example_id: str) -> dict[str, Any] | None:
    """The row as the newest normalize artifact that kept it wrote it (None if never kept there)."""
    found = con.execute("""
        SELECT d.artifact_id FROM decisions d LEFT JOIN runs r ON r.run_id = d.run_id
        WHERE d.example_id = ? AND d.stage = 'normalize' AND d.kept
        ORDER BY r.started_at DESC LIMIT 1""", [example_id]).fetchone()
    if not found:
        return None
    manifest = store.load("normalize", found[0], verify=False)
    if manifest is None:
        return {"artifact_id": found[0], "missing": "the normalize artifact is no longer in the warehouse"}
    parts = [str(p) for p in manifest.files_named("records")]
    table = ds.dataset(parts, format="parquet").to_table(filter=pc.field("example_id") == example_id)
    if table.num_rows == 0:
        return {"artifact_id": found[0], "missing": "the row is not in the artifact's records"}
    row = table.slice(0, 1).to_pylist()[0]
    return {"artifact_id": found[0], "category": row.get("category"), "content_hash": row.get("content_hash"),
            "messages": row.get("messages")}


def lineage(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, Any]:
    """The data a model was trained on: upstream artifacts, sources, shards, example ids."""
    model_id = _resolve_id(con, "models", "model_id", model_id, "model")
    model = _rows(con, "SELECT * FROM models WHERE model_id = ?", [model_id])[0]
    upstream = _rows(con, """
        WITH RECURSIVE up(artifact_id, depth) AS (
            SELECT input_artifact_id, 1 FROM artifact_inputs WHERE artifact_id = ?
            UNION SELECT ai.input_artifact_id, up.depth + 1 FROM artifact_inputs ai JOIN up USING (artifact_id))
        SELECT a.stage, a.artifact_id, a.sha256, a.n_in, a.n_out, a.created_at::VARCHAR AS created_at
        FROM (SELECT artifact_id, min(depth) AS depth FROM up GROUP BY 1) u
        JOIN artifacts a USING (artifact_id) JOIN stage_order o ON o.stage = a.stage
        ORDER BY o.ordinal, a.artifact_id""", [model["artifact_id"]])
    shards_sql = """
        SELECT s.shard_id, s.split, s.category, s.n_rows, s.n_tokens,
               count(se.example_id) AS n_unique_examples
        FROM artifact_inputs ai JOIN shards s ON s.artifact_id = ai.input_artifact_id
        LEFT JOIN shard_examples se USING (shard_id)
        WHERE ai.artifact_id = ? GROUP BY ALL ORDER BY s.split DESC, s.category, s.shard_id"""
    shards = _rows(con, shards_sql, [model["artifact_id"]])
    trained = """
        SELECT se.example_id, sum(se.n_copies) AS n_copies FROM artifact_inputs ai
        JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
        JOIN shard_examples se USING (shard_id) WHERE ai.artifact_id = ? GROUP BY 1"""
    sources = _rows(con, f"""
        SELECT e.source, e.source_format, e.source_uri, count(*) AS n_examples, sum(t.n_copies) AS n_train_rows
        FROM ({trained}) t JOIN examples e USING (example_id) GROUP BY ALL ORDER BY e.source""",
                    [model["artifact_id"]])
    example_ids = [r[0] for r in con.execute(f"SELECT example_id FROM ({trained}) ORDER BY 1",
                                             [model["artifact_id"]]).fetchall()]
    return {"model": model, "upstream_artifacts": upstream, "sources": sources, "shards": shards,
            "n_train_examples": len(example_ids), "example_ids": example_ids}
