"""What changed between two runs, read from the catalog alone (`sftflow diff A B`).

A row's fate in a run is the first data stage (registry order) whose artifact, as that run used
it (`stage_runs.key = decisions.artifact_id`, computed or a cache hit), dropped it, with the
reason; or `kept` when every data stage through mix kept it; or `absent` when the run did not
read it. Rows whose fate differs are counted per stage: under the stage that drops them in B
(`newly_dropped`, `reason_changed`, `added`) and under the stage that dropped them in A
(`newly_kept`, `removed`), so a row dropped at filter in A and at score in B counts at both.
Rows read by both runs whose source line or normalized content differs are `text_changed`.
All of it is set operations in DuckDB (a few seconds at 1M rows), never a loop over rows.

Also: each run's mixture (its mix artifact's `mixture` rows), the shards whose rows changed
(matched by their name inside the mix artifact), and the metrics of each run's evaluation. Every
function takes a (read-only) connection and returns plain JSON-able dicts; the CLI and the run's
Prefect artifact render them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import duckdb

from sftflow.tasks.core import stages
from sftflow.tasks.core.audit import _resolve_id, _rows

CHANGE_ORDER = ("newly_dropped", "reason_changed", "added", "newly_kept", "removed")

# One run's fate per row read: a parameter $run, the data stages in registry order $stages.
_FATE_SQL = """
CREATE OR REPLACE TEMP TABLE {table} AS
WITH keys AS (SELECT DISTINCT key, stage FROM stage_runs WHERE run_id = $run AND list_contains($stages, stage)),
first_drop AS (SELECT example_id, arg_min({{'stage': stage, 'reason': reason}}, list_position($stages, stage)) AS f
               FROM decisions WHERE NOT kept AND artifact_id IN (SELECT key FROM keys) GROUP BY example_id)
SELECT r.example_id, f.f.stage AS stage, f.f.reason AS reason
FROM decisions r LEFT JOIN first_drop f USING (example_id)
WHERE r.artifact_id IN (SELECT key FROM keys WHERE stage = $stages[1])"""


def _fate(alias: str) -> str:
    """SQL text of a row's fate in the fate table `alias`: absent, kept, or `stage: reason`."""
    return (f"CASE WHEN {alias}.example_id IS NULL THEN 'absent' WHEN {alias}.stage IS NULL THEN 'kept' "
            f"ELSE {alias}.stage || ': ' || {alias}.reason END")


# Rows whose fate differs between the runs (in_a/in_b: read by that run at all).
_CHANGED_SQL = f"""
CREATE OR REPLACE TEMP TABLE _run_diff_changed AS
SELECT coalesce(a.example_id, b.example_id) AS example_id, a.example_id IS NOT NULL AS in_a,
       b.example_id IS NOT NULL AS in_b, a.stage AS a_stage, b.stage AS b_stage,
       {_fate('a')} AS fate_a, {_fate('b')} AS fate_b
FROM _run_diff_fate_a a FULL JOIN _run_diff_fate_b b ON a.example_id = b.example_id
WHERE a.example_id IS NULL OR b.example_id IS NULL
   OR a.stage IS DISTINCT FROM b.stage OR a.reason IS DISTINCT FROM b.reason"""

# Rows read by both runs with another source line (ingest) or normalized content (normalize);
# artifacts both runs used hold the same rows, so only the others are compared.
_TEXT_CHANGED_SQL = """
CREATE OR REPLACE TEMP TABLE _run_diff_text AS
WITH ka AS (SELECT key, stage FROM stage_runs WHERE run_id = $a AND stage IN ('ingest', 'normalize')),
kb AS (SELECT key, stage FROM stage_runs WHERE run_id = $b AND stage IN ('ingest', 'normalize')),
only_a AS (SELECT key FROM ka WHERE key NOT IN (SELECT key FROM kb)),
only_b AS (SELECT key FROM kb WHERE key NOT IN (SELECT key FROM ka)),
va AS (SELECT example_id, raw FROM example_versions WHERE artifact_id IN (SELECT key FROM only_a)),
vb AS (SELECT example_id, raw FROM example_versions WHERE artifact_id IN (SELECT key FROM only_b)),
na AS (SELECT example_id, content_hash FROM example_normalized WHERE artifact_id IN (SELECT key FROM only_a)),
nb AS (SELECT example_id, content_hash FROM example_normalized WHERE artifact_id IN (SELECT key FROM only_b))
SELECT example_id FROM va JOIN vb USING (example_id) WHERE va.raw IS DISTINCT FROM vb.raw
UNION SELECT example_id FROM na JOIN nb USING (example_id) WHERE na.content_hash IS DISTINCT FROM nb.content_hash"""


def resolve_run(con: duckdb.DuckDBPyConnection, given: str) -> str:
    """The run_id a full id or a unique prefix (6+ characters) names; NotFound otherwise."""
    return _resolve_id(con, "runs", "run_id", given, "run")


def previous_run(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The newest completed run of the same recipe that started before `run_id`, if any."""
    found = con.execute("""
        SELECT p.run_id FROM runs r JOIN runs p ON p.recipe_name = r.recipe_name AND p.status = 'completed'
             AND p.started_at < r.started_at AND p.run_id <> r.run_id
        WHERE r.run_id = ? ORDER BY p.started_at DESC LIMIT 1""", [run_id]).fetchone()
    return found[0] if found else None


def same_artifacts(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> bool:
    """Whether two runs used exactly the same artifacts (an unchanged re-run): nothing can differ."""
    return con.execute("""
        SELECT count(*) = 0 FROM (
            (SELECT stage, coalesce(label, ''), key FROM stage_runs WHERE run_id = $a
             EXCEPT SELECT stage, coalesce(label, ''), key FROM stage_runs WHERE run_id = $b)
            UNION ALL
            (SELECT stage, coalesce(label, ''), key FROM stage_runs WHERE run_id = $b
             EXCEPT SELECT stage, coalesce(label, ''), key FROM stage_runs WHERE run_id = $a))""",
                       {"a": run_a, "b": run_b}).fetchone()[0]


def _run_info(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    info = _rows(con, """SELECT run_id, recipe_name, status, started_at::VARCHAR AS started_at,
                                finished_at::VARCHAR AS finished_at, code_version, overrides
                         FROM runs WHERE run_id = ?""", [run_id])[0]
    info["overrides"] = json.loads(info["overrides"]) if info["overrides"] else []
    return info


def run_diff(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str,
             rows_limit: int | None = None) -> dict[str, Any]:
    """The whole diff of run B against run A (ids or unique prefixes): row counts, per-stage
    changes, the mixture, shards and evaluations; with `rows_limit`, up to that many changed rows
    with their source lines (`n_changed_rows` counts them all)."""
    run_a, run_b = resolve_run(con, run_a), resolve_run(con, run_b)
    data_stages = list(stages.data_stages())
    try:  # the temporary tables go in any case: the connection can diff again
        for side, run_id in (("a", run_a), ("b", run_b)):
            con.execute(_FATE_SQL.format(table=f"_run_diff_fate_{side}"), {"run": run_id, "stages": data_stages})
        con.execute(_CHANGED_SQL)
        con.execute(_TEXT_CHANGED_SQL, {"a": run_a, "b": run_b})
        diff = {"run_a": _run_info(con, run_a), "run_b": _run_info(con, run_b),
                "rows": _row_counts(con), "stages": _stage_changes(con, data_stages),
                "mixture": _mixture(con, run_a, run_b), "shards": _shards(con, run_a, run_b),
                "evals": _evals(con, run_a, run_b)}
        if rows_limit is not None:
            diff["changed_rows"] = _changed_rows(con, run_a, run_b, data_stages, rows_limit)
        return diff
    finally:
        for table in ("fate_a", "fate_b", "changed", "text"):
            con.execute(f"DROP TABLE IF EXISTS _run_diff_{table}")


def _row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return _rows(con, """
        SELECT (SELECT count(*) FROM _run_diff_fate_a) AS n_read_a, (SELECT count(*) FROM _run_diff_fate_b) AS n_read_b,
               (SELECT count(*) FROM _run_diff_changed WHERE NOT in_a) AS n_added,
               (SELECT count(*) FROM _run_diff_changed WHERE NOT in_b) AS n_removed,
               (SELECT count(*) FROM _run_diff_changed WHERE in_a AND in_b) AS n_fate_changed,
               (SELECT count(*) FROM _run_diff_text) AS n_text_changed,
               (SELECT count(*) FROM (SELECT example_id FROM _run_diff_changed
                                      UNION SELECT example_id FROM _run_diff_text)) AS n_changed_rows""", [])[0]


def _stage_changes(con: duckdb.DuckDBPyConnection, data_stages: list[str]) -> list[dict[str, Any]]:
    """Per data stage: rows it dropped in each run, and the changed rows grouped by (change, fate
    in A, fate in B)."""
    groups = _rows(con, """
        SELECT b_stage AS stage, CASE WHEN NOT in_a THEN 'added' WHEN a_stage = b_stage THEN 'reason_changed'
                                      ELSE 'newly_dropped' END AS change, fate_a AS in_a, fate_b AS in_b, count(*) AS n
        FROM _run_diff_changed WHERE b_stage IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT a_stage, CASE WHEN NOT in_b THEN 'removed' ELSE 'newly_kept' END, fate_a, fate_b, count(*)
        FROM _run_diff_changed WHERE a_stage IS NOT NULL AND a_stage IS DISTINCT FROM b_stage GROUP BY ALL""", [])
    dropped = {(side, stage): n for side, stage, n in con.execute("""
        SELECT 'a', stage, count(*) FROM _run_diff_fate_a WHERE stage IS NOT NULL GROUP BY ALL
        UNION ALL SELECT 'b', stage, count(*) FROM _run_diff_fate_b WHERE stage IS NOT NULL GROUP BY ALL""").fetchall()}
    groups.sort(key=lambda g: (CHANGE_ORDER.index(g["change"]), -g["n"], g["in_a"], g["in_b"]))
    out = []
    for stage in data_stages:
        changes = [{k: g[k] for k in ("change", "in_a", "in_b", "n")} for g in groups if g["stage"] == stage]
        out.append({"stage": stage, "n_dropped_a": dropped.get(("a", stage), 0),
                    "n_dropped_b": dropped.get(("b", stage), 0),
                    "n_newly_dropped": sum(c["n"] for c in changes if c["change"] in CHANGE_ORDER[:3]),
                    "n_newly_kept": sum(c["n"] for c in changes if c["change"] in CHANGE_ORDER[3:]),
                    "changes": changes})
    return out


def _changed_rows(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str, data_stages: list[str],
                  limit: int) -> list[dict[str, Any]]:
    """Changed rows: edited ones (the cause when a source changed) first, then by the earliest
    stage concerned; with the source line each run's ingest artifact read (source, uri and row
    from B's read, A's for a removed row)."""
    return _rows(con, f"""
        WITH ids AS (SELECT example_id FROM _run_diff_changed UNION SELECT example_id FROM _run_diff_text),
        read_a AS (SELECT ev.* FROM example_versions ev JOIN stage_runs sr ON sr.key = ev.artifact_id
                   AND sr.run_id = $a AND sr.stage = 'ingest' WHERE ev.example_id IN (SELECT example_id FROM ids)),
        read_b AS (SELECT ev.* FROM example_versions ev JOIN stage_runs sr ON sr.key = ev.artifact_id
                   AND sr.run_id = $b AND sr.stage = 'ingest' WHERE ev.example_id IN (SELECT example_id FROM ids))
        SELECT ids.example_id, {_fate('a')} AS in_a, {_fate('b')} AS in_b, t.example_id IS NOT NULL AS text_changed,
               coalesce(rb.source, ra.source) AS source, coalesce(rb.source_uri, ra.source_uri) AS source_uri,
               coalesce(rb.source_row, ra.source_row) AS source_row, ra.raw AS source_line_a, rb.raw AS source_line_b
        FROM ids LEFT JOIN _run_diff_fate_a a USING (example_id) LEFT JOIN _run_diff_fate_b b USING (example_id)
        LEFT JOIN _run_diff_text t USING (example_id)
        LEFT JOIN read_a ra USING (example_id) LEFT JOIN read_b rb USING (example_id)
        ORDER BY t.example_id IS NULL, least(list_position($stages, a.stage), list_position($stages, b.stage)) NULLS LAST,
                 ids.example_id
        LIMIT $limit""", {"a": run_a, "b": run_b, "stages": data_stages, "limit": limit})


def _mixture(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """Each category's target and realized share and train rows, in A and in B (None: no such
    category in that run's mix, or the run did not mix)."""
    return _rows(con, """
        WITH ma AS (SELECT m.* FROM mixture m JOIN stage_runs sr ON sr.key = m.artifact_id
                    AND sr.run_id = $a AND sr.stage = 'mix'),
        mb AS (SELECT m.* FROM mixture m JOIN stage_runs sr ON sr.key = m.artifact_id
               AND sr.run_id = $b AND sr.stage = 'mix')
        SELECT coalesce(ma.category, mb.category) AS category, ma.target_share AS target_share_a,
               mb.target_share AS target_share_b, ma.realized_share AS realized_share_a,
               mb.realized_share AS realized_share_b, ma.n_rows AS n_rows_a, mb.n_rows AS n_rows_b
        FROM ma FULL JOIN mb ON ma.category = mb.category ORDER BY 1""", {"a": run_a, "b": run_b})


# Each run's mix shards by their name inside the mix artifact (the shard_id without its leading
# `<mix key>/`), so a recomputed mix that wrote the same rows matches. A shard's content is the
# rows it holds: each example's copies (shard_examples.n_copies) on each side; the surplus of one
# side is its rows the other lacks, in the unit of `shards.n_rows` (rows_a = rows both hold + only
# A's), as one aggregation (about 5x faster than two EXCEPT ALLs at 1M rows). Shards with the same shard_id
# (one mix artifact) hold the same rows, so only the others are read from shard_examples.
_SHARDS_SQL = """
WITH sa AS (SELECT shard_id, substr(shard_id, length(artifact_id) + 2) AS shard, split, category, n_rows
            FROM shards WHERE artifact_id IN (SELECT key FROM stage_runs WHERE run_id = $a AND stage = 'mix')),
sb AS (SELECT shard_id, substr(shard_id, length(artifact_id) + 2) AS shard, split, category, n_rows
       FROM shards WHERE artifact_id IN (SELECT key FROM stage_runs WHERE run_id = $b AND stage = 'mix')),
rows_ab AS (SELECT sa.shard, se.example_id, se.n_copies, 'a' AS side FROM shard_examples se JOIN sa USING (shard_id)
            WHERE sa.shard_id NOT IN (SELECT shard_id FROM sb)
            UNION ALL
            SELECT sb.shard, se.example_id, se.n_copies, 'b' FROM shard_examples se JOIN sb USING (shard_id)
            WHERE sb.shard_id NOT IN (SELECT shard_id FROM sa)),
counted AS (SELECT shard, coalesce(sum(n_copies) FILTER (side = 'a'), 0) AS in_a,
                   coalesce(sum(n_copies) FILTER (side = 'b'), 0) AS in_b
            FROM rows_ab GROUP BY shard, example_id),
surplus AS (SELECT shard, sum(greatest(in_a - in_b, 0)) AS n_only_a, sum(greatest(in_b - in_a, 0)) AS n_only_b
            FROM counted GROUP BY shard)
SELECT coalesce(sa.shard, sb.shard) AS shard, coalesce(sa.split, sb.split) AS split,
       coalesce(sa.category, sb.category) AS category, sa.n_rows AS rows_a, sb.n_rows AS rows_b,
       coalesce(o.n_only_a, 0)::BIGINT AS n_only_a, coalesce(o.n_only_b, 0)::BIGINT AS n_only_b
FROM sa FULL JOIN sb ON sa.shard = sb.shard LEFT JOIN surplus o ON o.shard = coalesce(sa.shard, sb.shard)
ORDER BY split DESC, category, shard"""


def _shards(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> dict[str, Any]:
    """The shards whose rows differ between the runs' mixes, matched by their name inside the mix
    artifact, or that only one run's mix holds (its rows None in the other): each with its rows in
    A and in B (`shards.n_rows`) and how many of them only A's or only B's holds (an
    example's copies count one row each); `n_unchanged` counts the shards both hold with the same rows."""
    shards = _rows(con, _SHARDS_SQL, {"a": run_a, "b": run_b})
    changed = [s for s in shards if s["rows_a"] is None or s["rows_b"] is None or s["n_only_a"] or s["n_only_b"]]
    return {"changed": changed, "n_unchanged": len(shards) - len(changed)}


def _evals(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> dict[str, Any]:
    """Each run's evaluation (of its evaluate artifact, new or from the cache): the model and
    every metric, side by side; `note` names a run that evaluated nothing."""
    found = {}
    for side, run_id in (("a", run_a), ("b", run_b)):
        keys = [r[0] for r in con.execute(
            "SELECT key FROM stage_runs WHERE run_id = ? AND stage = 'evaluate'", [run_id]).fetchall()]
        model = con.execute("SELECT m.model_id FROM models m JOIN stage_runs sr ON sr.key = m.artifact_id "
                            "WHERE sr.run_id = ? AND sr.stage = 'train'", [run_id]).fetchone()
        metrics = dict(con.execute("SELECT metric, value FROM evals WHERE artifact_id IN (SELECT unnest(?::VARCHAR[]))",
                                   [keys]).fetchall())
        found[side] = {"model": model[0] if model else None, "measured": bool(keys), "metrics": metrics}
    missing = [run_id for side, run_id in (("a", run_a), ("b", run_b)) if not found[side]["measured"]]
    names = sorted({*found["a"]["metrics"], *found["b"]["metrics"]})
    return {"model_a": found["a"]["model"], "model_b": found["b"]["model"],
            "measured_a": found["a"]["measured"], "measured_b": found["b"]["measured"],
            "metrics": [{"metric": m, "value_a": found["a"]["metrics"].get(m), "value_b": found["b"]["metrics"].get(m)}
                        for m in names],
            "note": ("not measured in run " + " nor in run ".join(missing)) if missing else None}


def diff_tables(diff: dict[str, Any], compact: bool = False) -> dict[str, tuple[list[str], list[tuple]]]:
    """The diff as named tables (columns, rows) for the CLI's table and csv formats and the run's
    Markdown artifact. `compact` (for reading, not parsing): shares and metrics rounded, and each
    changed row with one source line (B's, A's for a removed row) cut to LINE_CHARS.

    >>> diff = {"stages": [{"stage": "filter", "n_dropped_a": 14, "n_dropped_b": 44, "n_newly_dropped": 30,
    ...     "n_newly_kept": 0, "changes": [{"change": "newly_dropped", "in_a": "kept", "in_b": "filter: toxic",
    ...     "n": 30}]}], "mixture": [{"category": "qa", "target_share_a": 0.2, "target_share_b": 0.2,
    ...     "realized_share_a": 0.2, "realized_share_b": 0.18333, "n_rows_a": 80, "n_rows_b": 73}],
    ...     "shards": {"changed": [{"shard": "shards/train/qa-00000.parquet", "split": "train", "category": "qa",
    ...     "rows_a": 80, "rows_b": 73, "n_only_a": 9, "n_only_b": 2}], "n_unchanged": 4}, "evals": {"metrics": []}}
    >>> diff_tables(diff)["changes"]
    (['stage', 'change', 'in A', 'in B', 'rows'], [('filter', 'newly_dropped', 'kept', 'filter: toxic', 30)])
    >>> diff_tables(diff, compact=True)["mixture"][1]
    [('qa', '0.200', '0.200', '0.200', '0.183', 80, 73)]
    >>> columns, rows = diff_tables(diff)["shards"]
    >>> columns
    ['shard', 'split', 'category', 'rows A', 'rows B', 'rows only in A', 'rows only in B']
    >>> rows
    [('shards/train/qa-00000.parquet', 'train', 'qa', 80, 73, 9, 2)]
    """
    def share(value: float | None) -> float | str | None:
        return f"{value:.3f}" if compact and value is not None else value

    def metric(value: float | None) -> float | str | None:
        return f"{value:.4g}" if compact and value is not None else value

    tables = {
        "stages": (["stage", "dropped in A", "dropped in B", "newly dropped", "newly kept"],
                   [(s["stage"], s["n_dropped_a"], s["n_dropped_b"], s["n_newly_dropped"], s["n_newly_kept"])
                    for s in diff["stages"]]),
        "changes": (["stage", "change", "in A", "in B", "rows"],
                    [(s["stage"], c["change"], c["in_a"], c["in_b"], c["n"]) for s in diff["stages"]
                     for c in s["changes"]]),
        "mixture": (["category", "target A", "target B", "realized A", "realized B", "rows A", "rows B"],
                    [(m["category"], share(m["target_share_a"]), share(m["target_share_b"]),
                      share(m["realized_share_a"]), share(m["realized_share_b"]), m["n_rows_a"], m["n_rows_b"])
                     for m in diff["mixture"]]),
        "shards": (["shard", "split", "category", "rows A", "rows B", "rows only in A", "rows only in B"],
                   [(s["shard"], s["split"], s["category"], s["rows_a"], s["rows_b"], s["n_only_a"], s["n_only_b"])
                    for s in diff["shards"]["changed"]]),
        "evals": (["metric", "A", "B"], [(m["metric"], metric(m["value_a"]), metric(m["value_b"]))
                                         for m in diff["evals"]["metrics"]]),
    }
    rows = diff.get("changed_rows")
    if rows is not None and compact:
        tables["rows"] = (["example_id", "in A", "in B", "text", "source", "row", "source line"],
                          [(r["example_id"], r["in_a"], r["in_b"], "edited" if r["text_changed"] else "", r["source"],
                            r["source_row"], _line(r["source_line_a"], r["source_line_b"])) for r in rows])
    elif rows is not None:
        tables["rows"] = (["example_id", "in A", "in B", "text changed", "source", "source_uri", "source_row",
                           "source line A", "source line B"],
                          [(r["example_id"], r["in_a"], r["in_b"], r["text_changed"], r["source"], r["source_uri"],
                            r["source_row"], r["source_line_a"], r["source_line_b"]) for r in rows])
    return tables


LINE_CHARS = 60  # a compact table's source line


def _line(line_a: str | None, line_b: str | None) -> str | None:
    """One source line for a compact table: B's (A's for a removed row) cut to LINE_CHARS, from
    just before the first character that differs when the row was edited.

    >>> _line('{"q": "Which planet?", "a": "Jupiter."}', '{"q": "Which planet?", "a": "Jupiter, the largest."}')
    '…net?", "a": "Jupiter, the largest."}'
    >>> _line("x" * 70, None)[-3:]
    'xx…'
    """
    line = line_b if line_b is not None else line_a
    if line is None:
        return None
    start = 0
    if line_a is not None and line_b is not None and line_a != line_b:
        start = max(0, len(os.path.commonprefix([line_a, line_b])) - 20)
    cut = line[start:start + LINE_CHARS]
    return ("…" if start else "") + cut + ("…" if start + LINE_CHARS < len(line) else "")
