"""What tests need of the stages beyond their real entry points: a stage's parted output collected
into one in-memory StageOutput, and record tables built from dict rows. The pipeline streams parts
and never needs these, so they live with the tests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from sftflow.tasks.core.artifacts import Manifest, read_tables
from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.core.recipe_data import MixConfig, ScoreConfig
from sftflow.tasks.core.records import RECORD_SCHEMA, StageOutput
from sftflow.tasks.core.stage import records_paths
from sftflow.tasks.ingest import read_source_parts
from sftflow.tasks.lib.scorers import QualityScorer
from sftflow.tasks.mix import mix_parts
from sftflow.tasks.score import score_parts


def records_from_rows(rows: Iterable[dict[str, Any]], schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Build a table from dict rows; missing base columns become null."""
    return pa.Table.from_pylist(list(rows), schema=schema)


def read_records(manifests: list[Manifest]) -> pa.Table:
    """The concatenated records of input artifacts."""
    return read_tables(records_paths(manifests))


def read_source(source: SourceConfig, path: Path | None, root: Path | None = None) -> StageOutput:
    """`read_source_parts` collected into one StageOutput."""
    output = read_source_parts(source, path, root)
    parts = list(output.parts)
    return StageOutput(
        records=pa.concat_tables([p.records for p in parts]), decisions=pa.concat_tables([p.decisions for p in parts]),
        extra={"examples": pa.concat_tables([p.extra["examples"] for p in parts])}, stats=output.stats())


def score_records(records: pa.Table, cfg: ScoreConfig, scorer: QualityScorer | None) -> StageOutput:
    """`score_parts` on one in-memory table, as one StageOutput."""
    output = score_parts(lambda: [records], cfg, scorer)
    parts = list(output.parts)
    return StageOutput(records=pa.concat_tables([p.records for p in parts]),
                       decisions=pa.concat_tables([p.decisions for p in parts]), stats=output.stats())


def mix_records(records: pa.Table, cfg: MixConfig) -> StageOutput:
    """`mix_parts` of one in-memory table, collected into one StageOutput (shards in `extra`)."""
    with tempfile.TemporaryDirectory(prefix="sftflow-mix-") as spool_dir:
        output = mix_parts(records.schema, lambda columns: [records.select(columns) if columns else records], cfg,
                           Path(spool_dir))
        parts = list(output.parts)
    return StageOutput(records=records.schema.empty_table(), decisions=parts[-1].decisions,
                       extra={name: table for part in parts for name, table in part.extra.items()},
                       stats=output.stats())
