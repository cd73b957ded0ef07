"""A ninth data stage that exists only in the tests: `tag` drops every conversation whose last
assistant turn is shorter than `min_chars` and keeps the rest unchanged.

It is what adding a stage takes: this one module (a plan, the reasons it records, the pure
function, the Prefect wrapper) and one `StageSpec` line in the registry (the test inserts it after filter).
"""

from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.parquet as pq

from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DecisionLog, StageOutput
from sftflow.tasks.core.stage import StageCall, plan_call, records_paths, stage_task

LIBRARIES = ("pyarrow",)
REASONS = frozenset({Reason.KEPT, Reason.TOO_SHORT_RESPONSE})
MIN_CHARS = 200  # drops some of the demo's short answers


def plan(recipe, inputs, ws, runner=None) -> StageCall:
    return plan_call(sys.modules[__name__], {"min_chars": MIN_CHARS}, inputs, ws)


def tag(records: pa.Table, min_chars: int) -> StageOutput:
    log = DecisionLog()
    keep = []
    for example_id, messages in zip(records.column("example_id").to_pylist(), records.column("messages").to_pylist()):
        answer = [m["content"] for m in messages if m["role"] == "assistant"][-1]
        kept = len(answer) >= min_chars
        keep.append(kept)
        log.add(example_id, Reason.KEPT if kept else Reason.TOO_SHORT_RESPONSE, detail=None if kept else {"chars": len(answer)})
    return StageOutput(records=records.filter(pa.array(keep, type=pa.bool_())), decisions=log.to_table())


@stage_task("tag")
def tag_stage(call: StageCall) -> StageOutput:
    records = pa.concat_tables([pq.read_table(path) for path in records_paths(call.inputs)])
    return tag(records, call.config["min_chars"])
