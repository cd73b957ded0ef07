"""The one record type that flows between stages, and the decision rows stages emit.

Records are Arrow tables with RECORD_SCHEMA (messages as list<struct<role, content>>); stages
append their own columns (token counts, toxicity per role, reward, percentile) and keep the
base columns untouched. Decisions are a second table: one row per example the stage judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from sftflow.tasks.core.reasons import KEPT_REASONS, Reason

ROLES = ("system", "user", "assistant", "tool")

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

RECORD_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),  # hash(source name, row locator): stable across re-runs
        ("content_hash", pa.string()),  # hash of canonical normalized messages (null before normalize)
        ("source", pa.string()),
        ("source_format", pa.string()),  # alpaca | sharegpt | openai
        ("source_uri", pa.string()),
        ("source_row", pa.int64()),  # 1-based line for JSONL, 0-based index otherwise
        # "line 41" | "index 3 (line 5)" | "index 3": ingest's locator as written into every
        # decision's detail, so a later stage's drop names the same place as a quarantine does
        ("source_location", pa.string()),
        ("category", pa.string()),  # null until normalize assigns it
        ("origin", pa.string()),  # human | synthetic | mixed | null
        ("license", pa.string()),
        ("messages", MESSAGE_TYPE),
    ]
)

# Provenance of every row read, parsed or not: the rows of the catalog's `examples` table.
EXAMPLE_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("source", pa.string()),
        ("source_format", pa.string()),
        ("source_uri", pa.string()),
        ("source_row", pa.int64()),
        ("origin", pa.string()),
        ("license", pa.string()),
        ("raw", pa.string()),  # the raw line/element, truncated to RAW_PREVIEW_CHARS
    ]
)
RAW_PREVIEW_CHARS = 2000

DECISION_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),  # a sftflow.tasks.core.reasons.Reason value
        ("score", pa.float64()),  # the stage's number for this row (toxicity, jaccard, reward)
        ("detail", pa.string()),  # JSON object with the stage's evidence
        ("dup_of", pa.string()),  # dedup: the cluster representative's example_id
    ]
)


def empty_records() -> pa.Table:
    return RECORD_SCHEMA.empty_table()


class DecisionLog:
    """Collects one decision per judged example; refuses reasons outside the vocabulary.

    Stored as one list per column, not a dict per row: a stage deciding over a million rows
    (dedup, score, mix) holds six lists instead of a million dicts.
    """

    COLUMNS = ("example_id", "kept", "reason", "score", "detail", "dup_of")

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in self.COLUMNS}

    def add(
        self,
        example_id: str,
        reason: Reason | str,
        *,
        score: float | None = None,
        detail: dict[str, Any] | None = None,
        dup_of: str | None = None,
    ) -> None:
        reason = Reason(reason)  # raises ValueError for a reason outside the closed vocabulary
        columns = self.columns
        columns["example_id"].append(example_id)
        columns["kept"].append(reason in KEPT_REASONS)
        columns["reason"].append(reason.value)
        columns["score"].append(None if score is None else float(score))
        columns["detail"].append(json.dumps(detail, sort_keys=True, ensure_ascii=False) if detail else None)
        columns["dup_of"].append(dup_of)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The decisions as dicts (for small logs and tests)."""
        return [dict(zip(self.COLUMNS, values)) for values in zip(*self.columns.values())]

    def to_table(self) -> pa.Table:
        # One contiguous array per column, the layout Table.from_pylist gives (the Parquet bytes
        # depend on it).
        return pa.Table.from_arrays([pa.array(self.columns[f.name], type=f.type) for f in DECISION_SCHEMA],
                                    schema=DECISION_SCHEMA)

    def __len__(self) -> int:
        return len(self.columns["example_id"])


@dataclass
class StageOutput:
    """What a stage's pure function returns: kept records, decisions, and named extra tables.

    `extra` holds stage-specific tables written next to the records (e.g. ingest's
    `examples`); `stats` is a small JSON-able dict shown in reports and the manifest.
    """

    records: pa.Table
    decisions: pa.Table
    extra: dict[str, pa.Table] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # Files or folders already written elsewhere (a trained model, plots, reports), moved into
    # the artifact under the given relative name and hashed like every other file.
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class PartedOutput:
    """A stage output produced one part at a time, so a stage never holds the corpus in memory.

    `parts` yields partial StageOutputs (records, decisions and extra tables of one part, in a
    fixed order); the stage writes each as it comes. `stats` is called once `parts` is
    exhausted and returns the whole stage's stats (with `n_in`).
    """

    parts: Iterable[StageOutput]
    stats: Callable[[], dict[str, Any]]
