"""The catalog's tables and views (DDL). tasks/core/catalog.py creates them when it opens the
writer's database; docs/catalog.md describes every table and view for audits.

A column added after a table's first version comes with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`,
so a warehouse written by an older version opens (catalog.py migrates the one older layout that
needs more). The views are rebuilt on every open from the stage registry (tasks/core/stages.py)
as it is then.
"""

from __future__ import annotations

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
-- key_inputs: what the artifact's key hashes, by name (JSON; NULL for artifacts that predate it).
-- why: for a stage a run computed, which key inputs changed against the newest artifact of that
-- stage for the same recipe (a JSON list of {kind, what, old, new}; tasks/core/why.py); NULL for a cache hit.
ALTER TABLE artifacts ADD COLUMN IF NOT EXISTS key_inputs VARCHAR;
ALTER TABLE stage_runs ADD COLUMN IF NOT EXISTS why VARCHAR;
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
