"""The stage registry: the one list of the pipeline's stages, in pipeline order.

Everything that needs to know which stages exist reads it: the catalog (`stage_order`, the
ledger's data stages), cache keys (each stage's logic version; a plan must name the registered
module), the flow's progress count, the model card's drop table, the tests. Adding a stage is a
module under tasks/ and one `StageSpec` line here; the flow then calls it in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How far a run goes (`sftflow run --only`): `data` stops after mix, `train` after train, `all`
# runs through evaluate. A stage belongs to the first level that includes it.
RunLevel = Literal["data", "train", "all"]
_LEVELS: tuple[RunLevel, ...] = ("data", "train", "all")


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str  # the stage's module: its code fingerprint starts here
    judges_rows: bool  # every input row gets a kept/dropped decision: a ledger (data) stage
    level: RunLevel = "data"
    per_source: bool = False  # one call (and one artifact) per recipe source
    # Bump when the stage's meaning changes in a way its source would not show (a data file it
    # reads changed); part of every key of the stage.
    logic_version: int = 1


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "tasks.ingest", judges_rows=True, per_source=True),
    StageSpec("normalize", "tasks.normalize", judges_rows=True, per_source=True),
    StageSpec("dedup", "tasks.dedup", judges_rows=True),
    StageSpec("filter", "tasks.filters", judges_rows=True),
    StageSpec("score", "tasks.score", judges_rows=True),
    StageSpec("mix", "tasks.mix", judges_rows=True),
    # train decides every distinct train row too (kept, or `no_supervised_tokens`), but is not a
    # data stage: its rows come from mix's shards, and only artifacts written since it decides have them
    StageSpec("train", "tasks.train", judges_rows=False, level="train"),
    StageSpec("evaluate", "tasks.evaluate", judges_rows=False, level="all"),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
DATA_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.judges_rows)


def stage_spec(name: str) -> StageSpec:
    """The registered stage `name`.

    >>> stage_spec("filter").module
    'tasks.filters'
    >>> stage_spec("filtr")
    Traceback (most recent call last):
    ...
    KeyError: "no stage 'filtr' in tasks/core/stages.py; registered: ingest, normalize, dedup, filter, score, mix, train, evaluate"
    """
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r} in tasks/core/stages.py; registered: {', '.join(STAGE_NAMES)}")


def n_stage_calls(n_sources: int, level: RunLevel) -> int:
    """How many stage calls a run at `level` makes with `n_sources` sources (its progress count).

    >>> n_stage_calls(3, "all"), n_stage_calls(3, "data"), n_stage_calls(1, "train")
    (12, 10, 7)
    """
    included = _LEVELS[: _LEVELS.index(level) + 1]
    return sum(n_sources if s.per_source else 1 for s in STAGES if s.level in included)
