"""The stage registry: the one list of the pipeline's stages, in pipeline order.

Everything that needs to know which stages exist reads it: the flow (the data stages after the
per-source ones run in registry order, each reading the one before), the catalog (`stage_order`,
the ledger's data stages), cache keys (each stage's logic version; a plan must name the
registered module), the progress count, the model card's drop table, the tests. Readers look
`STAGES` up when they run (`stages.STAGES`, the functions below), so a registry changed at run
time (a test's toy stage) is seen everywhere.

A stage module provides `LIBRARIES`, `REASONS` (the decisions it may record), optional `UNKEYED`,
`plan(...) -> StageCall` and the Prefect task `<name>_stage`. Adding a data stage is one such module and one `StageSpec` line here.
"""

from __future__ import annotations

import importlib
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
    uses_runner: bool = False  # its parts run on `recipe.runner` (a Dask cluster stays up for it)
    # Bump when the stage's meaning changes in a way its source would not show (a data file it
    # reads changed); part of every key of the stage.
    logic_version: int = 1
    # Where the stage's config sits in the recipe, to name a changed field (None: the stage's
    # name; "sources": the source the call reads; "": the config names recipe sections itself).
    recipe_section: str | None = None


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "sftflow.tasks.ingest", judges_rows=True, per_source=True, recipe_section="sources"),
    StageSpec("normalize", "sftflow.tasks.normalize", judges_rows=True, per_source=True, uses_runner=True),
    StageSpec("dedup", "sftflow.tasks.dedup", judges_rows=True),
    StageSpec("filter", "sftflow.tasks.filters", judges_rows=True, uses_runner=True, recipe_section="filters"),
    StageSpec("score", "sftflow.tasks.score", judges_rows=True),
    StageSpec("mix", "sftflow.tasks.mix", judges_rows=True),
    # train decides every distinct train row too (kept, or `no_supervised_tokens`), but is not a
    # data stage: its rows come from mix's shards, and only artifacts written since it decides have them
    StageSpec("train", "sftflow.tasks.train", judges_rows=False, level="train"),
    StageSpec("evaluate", "sftflow.tasks.evaluate", judges_rows=False, level="all", recipe_section=""),
)


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def data_stages() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES if s.judges_rows)


def chain_stages() -> tuple[StageSpec, ...]:
    """The data stages that run once over everything, in order (dedup, filter, score, mix): each
    plans on the outputs of the stage before it.

    >>> [s.name for s in chain_stages()]
    ['dedup', 'filter', 'score', 'mix']
    """
    return tuple(s for s in STAGES if s.judges_rows and not s.per_source)


def check_flow_shape() -> None:
    """The registry must have the shape the flow runs: ingest and normalize per source, a chain of
    data stages ending with mix (whose shards train reads), then train and evaluate. A stage can be
    added inside the chain (before mix); anything else needs a change to flows/pipeline.py too.

    >>> check_flow_shape()
    """
    per_source = tuple(s.name for s in STAGES if s.per_source)
    chain = tuple(s.name for s in chain_stages())
    after = tuple(s.name for s in STAGES if not s.judges_rows)
    problems = []
    if per_source != ("ingest", "normalize"):
        problems.append(f"per-source stages are {per_source}, the flow runs ('ingest', 'normalize')")
    if not chain or chain[-1] != "mix":
        problems.append(f"the data chain {chain} must end with mix (train reads its shards)")
    if after != ("train", "evaluate"):
        problems.append(f"stages after the data are {after}, the flow runs ('train', 'evaluate')")
    if problems:
        raise ValueError("tasks/core/stages.py: " + "; ".join(problems))


def spec_of_module(module: str) -> StageSpec:
    """The stage registered with `module`.

    >>> spec_of_module("sftflow.tasks.filters").name
    'filter'
    """
    for spec in STAGES:
        if spec.module == module:
            return spec
    raise KeyError(f"no stage in tasks/core/stages.py is registered with module {module!r}")


def stage_spec(name: str) -> StageSpec:
    """The registered stage `name`.

    >>> stage_spec("filter").module
    'sftflow.tasks.filters'
    >>> stage_spec("filtr")
    Traceback (most recent call last):
    ...
    KeyError: "no stage 'filtr' in tasks/core/stages.py; registered: ingest, normalize, dedup, filter, score, mix, train, evaluate"
    """
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r} in tasks/core/stages.py; registered: {', '.join(stage_names())}")


def stage_reasons(name: str) -> frozenset[str] | None:
    """The reasons registered stage `name` may record: its module's `REASONS` (None for a name
    the registry does not hold; such a stage is held to the closed vocabulary alone).

    >>> sorted(stage_reasons("score"))
    ['below_top_fraction', 'kept']
    """
    spec = next((s for s in STAGES if s.name == name), None)
    if spec is None:
        return None
    # Imported by name, not with an import statement: the registry stays out of every key.
    module = importlib.import_module(spec.module)
    reasons = getattr(module, "REASONS", None)
    if reasons is None:
        raise AttributeError(f"stage module {spec.module} declares no REASONS (the decisions it may record)")
    return frozenset(str(r) for r in reasons)


def n_stage_calls(n_sources: int, level: RunLevel) -> int:
    """How many stage calls a run at `level` makes with `n_sources` sources (its progress count).

    >>> n_stage_calls(3, "all"), n_stage_calls(3, "data"), n_stage_calls(1, "train")
    (12, 10, 7)
    """
    included = _LEVELS[: _LEVELS.index(level) + 1]
    return sum(n_sources if s.per_source else 1 for s in STAGES if s.level in included)
