"""Answers to the two audit questions every user asks, read from the catalog (read-only).

- `explain(example_id)`: where a row came from (its raw source line), what it became after
  normalization, and every decision any stage made about it, in pipeline order; every version
  of the row (a source edited and re-run), and optionally as one model or run read it.
- `lineage(model_id)`: the sources, shards and rows a model was trained on, as of its own run.

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

from sftflow.tasks.core.artifacts import ArtifactStore

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
        f"SELECT DISTINCT {column} FROM {table} WHERE starts_with({column}, ?) LIMIT 2", [given]).fetchall()]
    if not found:
        raise NotFound(f"no {what} {given!r} in the catalog; list some with: "
                       f"sftflow sql \"SELECT {column} FROM {table} LIMIT 10\"")
    if len(found) > 1 and given not in found:
        raise NotFound(f"{what} prefix {given!r} is ambiguous ({found[0]}, {found[1]}, ...): give more characters")
    return given if given in found else found[0]


def _scope(con: duckdb.DuckDBPyConnection, model_id: str | None, run_id: str | None) -> dict[str, Any] | None:
    """The artifacts an `as of` question covers: a model's own train artifact and everything
    upstream of it, or the artifacts one run used (computed or from the cache)."""
    if model_id and run_id:
        raise NotFound("give --model or --run, not both")
    if model_id:
        model_id = _resolve_id(con, "models", "model_id", model_id, "model")
        artifact_id = con.execute("SELECT artifact_id FROM models WHERE model_id = ?", [model_id]).fetchone()[0]
        artifacts = {artifact_id, *(r[0] for r in con.execute(_UPSTREAM_SQL, [artifact_id]).fetchall())}
        return {"model_id": model_id, "artifacts": artifacts}
    if run_id:
        run_id = _resolve_id(con, "runs", "run_id", run_id, "run")
        artifacts = {r[0] for r in con.execute("SELECT key FROM stage_runs WHERE run_id = ?", [run_id]).fetchall()}
        return {"run_id": run_id, "artifacts": artifacts}
    return None


# The upstream artifacts of one artifact (a parameter), transitively.
_UPSTREAM_SQL = """
WITH RECURSIVE up(artifact_id) AS (
    SELECT input_artifact_id FROM artifact_inputs WHERE artifact_id = ?
    UNION SELECT ai.input_artifact_id FROM artifact_inputs ai JOIN up USING (artifact_id))
SELECT DISTINCT artifact_id FROM up"""


def _versions(con: duckdb.DuckDBPyConnection, example_id: str) -> list[dict[str, Any]]:
    """Every version of the row, oldest first, numbered from 1; the newest (the one `examples`
    shows) is the one a run read most recently. A version is what one ingest artifact read, and
    ingest artifacts with the same data_hash (same rows: e.g. ingest's code changed, the source
    did not) are one version, listed with all their ids in `ingest_artifact_ids`."""
    reads = _rows(con, """
        SELECT ev.artifact_id AS ingest_artifact_id, coalesce(a.data_hash, ev.artifact_id) AS data,
               ev.source, ev.source_format, ev.source_uri, ev.source_row, ev.origin, ev.license, ev.raw,
               coalesce(min(r.started_at), any_value(a.created_at))::VARCHAR AS first_read,
               coalesce(max(r.started_at), any_value(a.created_at)) AS last_read,
               list(DISTINCT sr.run_id ORDER BY sr.run_id) FILTER (WHERE sr.run_id IS NOT NULL) AS runs
        FROM example_versions ev LEFT JOIN artifacts a ON a.artifact_id = ev.artifact_id
        LEFT JOIN stage_runs sr ON sr.key = ev.artifact_id LEFT JOIN runs r ON r.run_id = sr.run_id
        WHERE ev.example_id = ? GROUP BY ALL ORDER BY first_read, ev.artifact_id""", [example_id])
    versions: dict[str, dict[str, Any]] = {}  # by data hash, in order of first read
    for read in reads:
        data = read.pop("data")
        version = versions.get(data)
        if version is None:
            versions[data] = {**read, "ingest_artifact_ids": [read["ingest_artifact_id"]], "runs": read["runs"] or []}
            continue
        version["ingest_artifact_ids"].append(read["ingest_artifact_id"])
        version["runs"] = sorted({*version["runs"], *(read["runs"] or [])})
        if read["last_read"] is not None and (version["last_read"] is None or read["last_read"] > version["last_read"]):
            version["last_read"] = read["last_read"]
    ordered = list(versions.values())
    newest = max(ordered, key=lambda v: (v["last_read"] is not None, v["last_read"] or "", v["ingest_artifact_id"]))
    for number, version in enumerate(ordered, start=1):
        version["version"] = number
        version["newest"] = version is newest
        version["last_read"] = str(version["last_read"]) if version["last_read"] is not None else None
    return ordered


def _version_of(con: duckdb.DuckDBPyConnection, example_id: str, artifact_ids: set[str]) -> dict[str, str]:
    """For each artifact: the ingest artifact upstream of it (or itself) that read this example,
    i.e. which version of the row the artifact's decision, shard or model is about."""
    if not artifact_ids:
        return {}
    found = con.execute("""
        WITH RECURSIVE up(artifact_id, upstream_id) AS (
            SELECT a, a FROM (SELECT unnest(?::VARCHAR[]) AS a)
            UNION SELECT up.artifact_id, ai.input_artifact_id FROM up
            JOIN artifact_inputs ai ON ai.artifact_id = up.upstream_id)
        SELECT DISTINCT up.artifact_id, ev.artifact_id FROM up
        JOIN example_versions ev ON ev.artifact_id = up.upstream_id AND ev.example_id = ?""",
                        [sorted(artifact_ids), example_id]).fetchall()
    return dict(found)


def explain(con: duckdb.DuckDBPyConnection, store: ArtifactStore, example_id: str, *,
            model_id: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Everything the catalog knows about one source row.

    A source edited and re-run keeps the row's example_id (its place in the file) but may give
    it new text: the catalog keeps every version. By default the report shows the newest version
    and every decision ever made, each tagged with the version it judged; with `model_id` (or
    `run_id`) it shows the row as that model's own upstream artifacts (or that run) read it, and
    only the decisions and shards of those artifacts.
    """
    example_id = _resolve_id(con, "example_versions", "example_id", example_id, "example")
    scope = _scope(con, model_id, run_id)
    versions = _versions(con, example_id)
    by_artifact = {artifact_id: v for v in versions for artifact_id in v["ingest_artifact_ids"]}

    decisions = _rows(con, """
        SELECT d.stage, d.kept, d.reason, d.score, d.detail, d.dup_of, d.artifact_id,
               d.run_id AS decided_in_run, r.started_at,
               d.artifact_id IN (SELECT artifact_id FROM latest_artifacts) AS in_latest_run
        FROM decisions d JOIN stage_order o USING (stage) LEFT JOIN runs r ON r.run_id = d.run_id
        WHERE d.example_id = ? ORDER BY r.started_at, o.ordinal""", [example_id])
    shards = _rows(con, """
        SELECT s.shard_id, s.split, s.category, se.n_copies, s.artifact_id,
               s.artifact_id IN (SELECT artifact_id FROM latest_artifacts) AS in_latest_run
        FROM shard_examples se JOIN shards s USING (shard_id) WHERE se.example_id = ?
        ORDER BY s.shard_id""", [example_id])
    # models trained on the row: their mix put it in a train shard and their train stage kept it
    models = _rows(con, """
        SELECT DISTINCT m.model_id, m.artifact_id FROM models m
        JOIN artifact_inputs ai ON ai.artifact_id = m.artifact_id
        JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
        JOIN shard_examples se ON se.shard_id = s.shard_id AND se.example_id = ?
        WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.artifact_id = m.artifact_id
                          AND d.example_id = se.example_id AND NOT d.kept)
        ORDER BY 1""", [example_id])
    version_of = _version_of(con, example_id, {r["artifact_id"] for r in [*decisions, *shards, *models]})

    def number(artifact_id: str) -> int | None:
        version = by_artifact.get(version_of.get(artifact_id, ""))
        return version["version"] if version else None

    if scope is None:
        shown = next(v for v in versions if v["newest"])
    else:
        in_scope = [v for v in versions if set(v["ingest_artifact_ids"]) & set(scope["artifacts"])]
        if not in_scope:
            what = f"model {scope['model_id']}" if "model_id" in scope else f"run {scope['run_id']}"
            raise NotFound(f"example {example_id} was not read by the artifacts of {what}; "
                           "drop --model/--run to see every version")
        shown = in_scope[0]
        decisions = [d for d in decisions if d["artifact_id"] in scope["artifacts"]]
        shards = [s for s in shards if s["artifact_id"] in scope["artifacts"]]
    for row in (*decisions, *shards):
        row["version"] = number(row["artifact_id"])
    for d in decisions:
        d["started_at"] = str(d["started_at"]) if d["started_at"] is not None else None
        if d["detail"]:
            try:
                d["detail"] = json.loads(d["detail"])
            except ValueError:
                pass
    for m in models:
        m["version"] = number(m["artifact_id"])
        version = by_artifact.get(version_of.get(m["artifact_id"], ""))
        # the same text at the same place: models trained on an identical read of the row count
        m["same_text"] = version is not None and version["raw"] == shown["raw"]

    normalized_in = [d["artifact_id"] for d in decisions if d["stage"] == "normalize" and d["kept"]
                     and d["version"] == shown["version"]]
    normalized = _normalized(store, normalized_in[-1], example_id) if normalized_in else None
    example = {"example_id": example_id, **{k: shown[k] for k in (
        "source", "source_format", "source_uri", "source_row")},
        "content_hash": normalized.get("content_hash") if normalized else None,
        "category": normalized.get("category") if normalized else None,
        "origin": shown["origin"], "license": shown["license"], "artifact_id": shown["ingest_artifact_id"]}
    as_of = None if scope is None else {k: v for k, v in scope.items() if k != "artifacts"}
    return {"example": example, "raw": shown["raw"], "version": shown["version"], "as_of": as_of,
            "versions": versions, "normalized": normalized, "decisions": decisions, "shards": shards,
            "trained_models": [m["model_id"] for m in models if m["same_text"]],
            "models": [{k: m[k] for k in ("model_id", "version", "same_text")} for m in models]}


def _normalized(store: ArtifactStore, artifact_id: str, example_id: str) -> dict[str, Any]:
    """The row as the normalize artifact `artifact_id` (which kept it) wrote it."""
    manifest = store.load("normalize", artifact_id, verify=False)
    if manifest is None:
        return {"artifact_id": artifact_id, "missing": "the normalize artifact is no longer in the warehouse"}
    parts = [str(p) for p in manifest.files_named("records")]
    table = ds.dataset(parts, format="parquet").to_table(filter=pc.field("example_id") == example_id)
    if table.num_rows == 0:
        return {"artifact_id": artifact_id, "missing": "the row is not in the artifact's records"}
    row = table.slice(0, 1).to_pylist()[0]
    return {"artifact_id": artifact_id, "category": row.get("category"), "content_hash": row.get("content_hash"),
            "messages": row.get("messages")}


def lineage(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, Any]:
    """The data a model was trained on, as of its own run: upstream artifacts, sources, shards, rows.

    Rows come from the model's own mix (train split), less those its train stage dropped, and
    their sources from its own upstream ingest artifacts: editing a source and re-running later
    changes nothing here.
    """
    model_id = _resolve_id(con, "models", "model_id", model_id, "model")
    model = _rows(con, "SELECT * FROM models WHERE model_id = ?", [model_id])[0]
    artifact_id = model["artifact_id"]
    upstream_ids = [r[0] for r in con.execute(_UPSTREAM_SQL, [artifact_id]).fetchall()]
    upstream = _rows(con, """
        SELECT a.stage, a.artifact_id, a.sha256, a.n_in, a.n_out, a.created_at::VARCHAR AS created_at
        FROM artifacts a JOIN stage_order o ON o.stage = a.stage
        WHERE a.artifact_id IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY o.ordinal, a.artifact_id""", [upstream_ids])
    shards_sql = """
        SELECT s.shard_id, s.split, s.category, s.n_rows, s.n_tokens,
               count(se.example_id) AS n_unique_examples
        FROM artifact_inputs ai JOIN shards s ON s.artifact_id = ai.input_artifact_id
        LEFT JOIN shard_examples se USING (shard_id)
        WHERE ai.artifact_id = ? GROUP BY ALL ORDER BY s.split DESC, s.category, s.shard_id"""
    shards = _rows(con, shards_sql, [artifact_id])
    dropped = _rows(con, """
        SELECT example_id, reason, detail FROM decisions WHERE artifact_id = ? AND NOT kept ORDER BY 1""",
                    [artifact_id])
    rows = _rows(con, """
        WITH trained AS (
            SELECT se.example_id, sum(se.n_copies) AS n_copies FROM artifact_inputs ai
            JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
            JOIN shard_examples se USING (shard_id) WHERE ai.artifact_id = ? GROUP BY 1)
        SELECT t.example_id, ev.source, ev.source_format, ev.source_uri, ev.source_row, t.n_copies,
               ev.artifact_id AS ingest_artifact_id
        FROM trained t LEFT JOIN example_versions ev
             ON ev.example_id = t.example_id AND ev.artifact_id IN (SELECT unnest(?::VARCHAR[]))
        WHERE t.example_id NOT IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY t.example_id""", [artifact_id, upstream_ids, [d["example_id"] for d in dropped]])
    sources: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["source"], r["source_format"], r["source_uri"])
        entry = sources.setdefault(key, {"source": r["source"], "source_format": r["source_format"],
                                         "source_uri": r["source_uri"], "n_examples": 0, "n_train_rows": 0})
        entry["n_examples"] += 1
        entry["n_train_rows"] += int(r["n_copies"])
    for d in dropped:
        if d["detail"]:
            try:
                d["detail"] = json.loads(d["detail"])
            except ValueError:
                pass
    return {"model": model, "upstream_artifacts": upstream,
            "sources": sorted(sources.values(), key=lambda s: (str(s["source"]), str(s["source_uri"]))),
            "shards": shards, "n_train_examples": len(rows), "example_ids": [r["example_id"] for r in rows],
            "rows": [{k: r[k] for k in ("example_id", "source", "source_row", "n_copies", "ingest_artifact_id")}
                     for r in rows],
            "dropped_by_train": dropped}
