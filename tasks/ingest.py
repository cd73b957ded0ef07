"""Ingest: read one source row by row into the record type, with one decision per row read.

A source is a local file or folder (`.jsonl`, `.json`, `.parquet`, or a folder written by
`datasets.save_to_disk`) or a Hugging Face dataset id. Every row gets a `source_row` locator
(the 1-based physical line of a JSON Lines file, the 0-based index of an array, Parquet file or
dataset; an array element's location also names the line it starts on), and
`example_id = short_hash(source name, source_row)`, so a row keeps its id across
re-runs and across edits to other rows of the file.

Ingest only maps a format to `messages` (roles system | user | assistant | tool, text content).
It does not trim, NFC-normalize or check turn order: normalize does that, so the catalog keeps
"could not be read" (ingest) apart from "is not a valid conversation" (normalize). A row that
cannot become messages is quarantined with a reason from tasks/core/reasons.py and the detail
{"location": "line 41" | "index 3 (line 5)" | "index 3", "error": "..."}; one bad row never fails
the file, and a JSON array is parsed element by element, so one element that does not parse (or
holds bytes that are not UTF-8) is quarantined alone. The same locator is kept on each record
(`source_location`), so later stages name the same place. A problem with the whole source
(missing file, no rows, no readable row at all, a compressed or UTF-16 file) raises SourceError
naming the file, the place and what to do.

What counts as unreadable besides bad JSON: an object naming one key twice (`duplicate_key`:
Python keeps the last value, other readers the first, so the row has no single meaning); a
number too long for Python's int reader; nesting deeper than the JSON reader allows; text
holding NUL (U+0000) or a lone UTF-16 surrogate from an unpaired "\\ud800" escape
(`invalid_encoding`: neither is text, and a surrogate cannot even be written to Parquet). The
`id` column, like every column the format does not name, is ignored: two rows with one id are
two examples (their example_ids come from their places in the file).

Memory: records, decisions and examples are handed on every PART_ROWS rows read, so one part of
them is held at a time. The source itself is streamed when it is JSON Lines (line by line),
Parquet (4,096 rows at a time) or a saved or hub dataset (datasets' memory-mapped Arrow files);
a `.json` file is read into memory whole (an array as its decoded text, JSON Lines as its bytes)
and then parsed row by row, so its size, not the part size, bounds ingest's memory.

The work is done by libraries: tasks/lib/readers.py and tasks/lib/json_array.py read files,
tasks/lib/hub.py reads hub ids and saved datasets (a hub id must name a hub dataset: local data
goes through `path`, which is confined to the project and SFTFLOW_DATA_DIRS), and
tasks/lib/formats.py maps the alpaca, sharegpt and openai formats to messages (its docstring
describes each format, `columns` and `role_map`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from sftflow.tasks.core.hashing import HASH_CHARS, sha256_file, sha256_tree, short_hash
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.core.records import (
    DECISION_SCHEMA,
    EXAMPLE_SCHEMA,
    MESSAGE_TYPE,
    RECORD_SCHEMA,
    PartedOutput,
    StageOutput,
)
from sftflow.tasks.core.stage import PART_ROWS, StageCall, plan_call, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.formats import check_columns, row_messages
from sftflow.tasks.lib.hub import hub_dataset_rows, saved_dataset_rows, source_hub_id
from sftflow.tasks.lib.readers import FILE_SUFFIXES, iter_file_rows
from sftflow.tasks.lib.rows import RawRow, RowProblem, SourceError, escape_surrogates

LIBRARIES = ("pyarrow", "datasets")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({
    Reason.KEPT,
    Reason.INVALID_JSON,
    Reason.INVALID_ENCODING,
    Reason.DUPLICATE_KEY,
    Reason.NOT_AN_OBJECT,
    Reason.MISSING_FIELD,
    Reason.WRONG_TYPE,
    Reason.UNKNOWN_ROLE,
    Reason.TOOL_TURN_QUARANTINED,
    Reason.UNSUPPORTED_CONTENT,
    Reason.MIXED_SCHEMA,
})

FIRST_PROBLEMS_SHOWN = 3  # in the "0 of N rows" error: enough to see a pattern, short to read

# How json.dumps(..., ensure_ascii=False) writes a string (the C encoder when it is built).
_json_string = json.encoder.encode_basestring


def source_rows(source: SourceConfig, path: Path | None) -> Iterator[RawRow]:
    """The raw rows of a source, whatever its kind; file-level problems raise SourceError."""
    where = f"source {source.name!r} ({source_uri(source, path)})"
    if path is None:
        return hub_dataset_rows(source, where)
    if path.is_dir():
        return saved_dataset_rows(source, path, where)
    if not path.is_file():
        raise SourceError(f"{where}: no such file or folder; fix `path` in the recipe (relative to the project root)")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise SourceError(
            f"{where}: unsupported file type {suffix or '(no extension)'!r}; use .jsonl, .json (an array or "
            "JSON Lines), .parquet, or a folder written by datasets.save_to_disk"
        )
    return iter_file_rows(path, where)


def source_uri(source: SourceConfig, path: Path | None, root: Path | None = None) -> str:
    """Where the rows came from, as written into records and the catalog: a path relative to the
    project root when the file is under it (so an artifact's bytes do not depend on where the
    project is checked out: a copied or moved project reuses it byte for byte), else the absolute
    path, or the hub dataset id.

    >>> source_uri(SourceConfig(name="a", format="alpaca", path="x"), Path("/p/data/a.json"), Path("/p"))
    'data/a.json'
    """
    if path is not None:
        if root is not None and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
        return str(path)
    return f"hf://{source.hf_dataset}@{source.hf_revision or 'main'}/{source.hf_split}"


def source_fingerprint(source: SourceConfig, path: Path | None) -> str:
    """What identifies the source's bytes in the cache key: a file's sha256, a folder's tree hash,
    or the hub id, revision and split (an unpinned hub dataset that changes is not detected; an
    id that would read local files is refused by check_hub_id)."""
    if path is None:
        return f"hf:{source_hub_id(source)}@{source.hf_revision or 'main'}/{source.hf_split}"
    if path.is_dir():
        return sha256_tree(path)
    if path.is_file():
        return sha256_file(path)
    raise SourceError(f"source {source.name!r} ({path}): no such file or folder; fix `path` in the recipe")


def read_source_parts(source: SourceConfig, path: Path | None, root: Path | None = None,
                      rows_per_part: int = PART_ROWS) -> PartedOutput:
    """Read every row of one source: records for rows that became messages, a decision and an
    examples row for every row read, handed on every `rows_per_part` rows read (memory holds one
    part of them, whatever the source's size; a `.json` source file itself is read into memory
    whole, see the module docstring). Raises SourceError, after the last part, when the source
    yielded no valid row. `root` (the project root) makes `source_uri` relative to it."""
    check_columns(source)
    uri = source_uri(source, path, root)
    category = None if source.category == "auto" else source.category
    provenance = {
        "source": source.name, "source_format": source.format, "source_uri": uri,
        "origin": source.origin, "license": source.license,
    }
    quarantined: Counter[str] = Counter()
    first_problems: list[str] = []
    totals = {"n_in": 0, "n_records": 0}
    example_id_of = _example_ids(source.name)

    def parts() -> Iterator[StageOutput]:
        rows = source_rows(source, path)
        while True:
            # Column by column: the tables are built from one list per column, not from a dict per
            # row; messages as one flat list of turns (roles, texts) and each row's number of turns.
            examples: dict[str, list[Any]] = {"example_id": [], "source_row": [], "raw": []}
            records: dict[str, Any] = {"example_id": [], "source_row": [], "source_location": []}
            turns = _TurnColumns()
            reasons: list[str] = []
            details: list[str | None] = []
            # Bound once: the loop below runs once per row read.
            example_ids, example_rows, raws = (examples[name].append for name in ("example_id", "source_row", "raw"))
            record_ids, record_rows, record_locations = (
                records[name].append for name in ("example_id", "source_row", "source_location"))
            add_reason, add_detail, add_turns = reasons.append, details.append, turns.add
            for row in itertools.islice(rows, rows_per_part):
                example_id = example_id_of(row.source_row)
                example_ids(example_id)
                example_rows(row.source_row)
                raws(row.raw)
                try:
                    if row.problem is not None:
                        raise row.problem
                    messages = row_messages(row.value, source)
                except RowProblem as problem:
                    error = escape_surrogates(problem.message)  # messages quote the row's own strings
                    add_reason(problem.reason.value)
                    add_detail(_detail({"location": row.location, "error": error}))
                    quarantined[problem.reason.value] += 1
                    if len(first_problems) < FIRST_PROBLEMS_SHOWN:
                        first_problems.append(f"{row.location}: {problem.reason.value}: {error}")
                    continue
                add_reason(_KEPT)
                add_detail(None)
                record_ids(example_id)
                record_rows(row.source_row)
                record_locations(row.location)
                add_turns(messages)
            n_read = len(examples["example_id"])
            if not n_read and totals["n_in"]:
                break
            totals["n_in"] += n_read
            totals["n_records"] += len(records["example_id"])
            if not totals["n_in"]:
                raise SourceError(
                    f"source {source.name!r} ({uri}): the source holds no rows (an empty file, only blank lines, "
                    "or an empty array); point `path` at the data, or remove the source from the recipe"
                )
            records["messages"] = turns.array()
            yield StageOutput(
                records=_columns_table(records, {**provenance, "content_hash": None, "category": category},
                                       RECORD_SCHEMA),
                decisions=_decisions_table(examples["example_id"], reasons, details),
                extra={"examples": _columns_table(examples, provenance, EXAMPLE_SCHEMA)},
            )
            if n_read < rows_per_part:
                break
        if not totals["n_records"]:
            raise SourceError(
                f"source {source.name!r} ({uri}): 0 of {totals['n_in']} rows could be read; first problems: "
                f"{'; '.join(first_problems)}; check the file and the source's `format` ({source.format}) "
                "and `columns` in the recipe"
            )

    def stats() -> dict[str, Any]:
        return {
            "n_in": totals["n_in"],
            "n_quarantined": sum(quarantined.values()),
            "source": source.name,
            "quarantined_by_reason": dict(sorted(quarantined.items())),
        }

    return PartedOutput(parts(), stats)


def _example_ids(source_name: str) -> Callable[[int], str]:
    """`row -> short_hash(source_name, row)`, with the constant part of the hashed text made once.

    short_hash hashes the canonical JSON of [name, row]: for a string and an int that is
    '[' + the JSON string + ',' + the int's digits + ']' (tests compare the two).
    """
    prefix = "[" + _json_string(source_name) + ","

    def example_id(source_row: int) -> str:
        if type(source_row) is not int:
            return short_hash(source_name, source_row)
        return hashlib.sha256(f"{prefix}{source_row}]".encode()).hexdigest()[:HASH_CHARS]  # sha256_text, inlined

    return example_id


def _columns_table(columns: dict[str, Any], constants: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """A table from one list (or array) per column plus columns holding one value on every row:
    the same arrays as Table.from_pylist of the equivalent rows (so the same Parquet bytes)."""
    n_rows = len(next(iter(columns.values())))
    arrays = [_array(columns[f.name], f.type) if f.name in columns else pa.array([constants[f.name]] * n_rows, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _array(values: Any, type: pa.DataType) -> Any:
    return pa.array(values, type=type) if isinstance(values, list) else values


class _TurnColumns:
    """Rows' messages gathered as flat columns: every turn's role and text, and where each row's
    turns start. Why: converting a list of {role, content} dicts per row to Arrow costs several
    times more than converting two lists of strings, and a part's rows do not hold a dict per turn
    (fewer objects for the garbage collector to walk)."""

    def __init__(self) -> None:
        self.roles: list[str] = []
        self.texts: list[str] = []
        self.offsets: list[int] = [0]

    def add(self, messages: list[dict[str, str]]) -> None:
        roles, texts = self.roles, self.texts
        for message in messages:
            roles.append(message["role"])
            texts.append(message["content"])
        self.offsets.append(len(texts))

    def array(self) -> pa.Array:
        """The messages column: the same array as pa.array(<each row's messages>, MESSAGE_TYPE)."""
        texts = pa.array(self.texts, pa.string())
        if isinstance(texts, pa.ChunkedArray):  # over 2 GiB of text: pyarrow splits the column itself
            spans = zip(self.offsets, self.offsets[1:])
            return pa.array([[{"role": self.roles[j], "content": self.texts[j]} for j in range(start, end)]
                             for start, end in spans], MESSAGE_TYPE)
        values = pa.StructArray.from_arrays([pa.array(self.roles, pa.string()), texts],
                                            fields=list(MESSAGE_TYPE.value_type))
        return pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), values, type=MESSAGE_TYPE)


_KEPT = Reason.KEPT.value


def _detail(detail: dict[str, Any]) -> str:
    """A decision's detail, as DecisionLog writes it."""
    return json.dumps(detail, sort_keys=True, ensure_ascii=False)


def _decisions_table(example_ids: list[str], reasons: list[str], details: list[str | None]) -> pa.Table:
    """The decisions table DecisionLog would build for these rows (ingest records no score or dup_of)."""
    n_rows = len(example_ids)
    return pa.Table.from_arrays([
        pa.array(example_ids, pa.string()), pa.array([reason == _KEPT for reason in reasons], pa.bool_()),
        pa.array(reasons, pa.string()), pa.nulls(n_rows, pa.float64()), pa.array(details, pa.string()),
        pa.nulls(n_rows, pa.string())], schema=DECISION_SCHEMA)


# ------------------------------------------------------------------------------------ plan --
def plan(source: SourceConfig, ws: Workspace) -> StageCall:
    """One source's call: its recipe entry, and the bytes (or pinned hub revision) it reads."""
    path = ws.resolve_input(source.path) if source.path else None
    return plan_call(sys.modules[__name__], source.canonical(), [], ws, label=source.name,
                     extra_input_hashes={"source file" if path else "source on the hub": source_fingerprint(source, path)},
                     params={"path": str(path) if path else None})


@stage_task("ingest")
def ingest_stage(call: StageCall) -> PartedOutput:
    source = SourceConfig.model_validate(call.config)
    path = Path(call.params["path"]) if call.params.get("path") else None
    return read_source_parts(source, path, Path(call.root))
