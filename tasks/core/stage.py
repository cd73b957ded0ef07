"""The stage contract: plan a call (its key), load-or-compute it, and the thin Prefect wrapper.

A stage module provides a pure function `(StageCall) -> StageOutput` and decorates it with
`stage_task("<stage>")`. The decorator turns it into a Prefect task whose cache key IS the
artifact key and whose result is the JSON manifest; inside, the task first looks for a committed
manifest on disk, so a wiped Prefect result store still skips finished work.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from sftflow.tasks.core import stages
from sftflow.tasks.core.artifacts import DECISIONS_FILE, ArtifactStore, Manifest, TableAppender
from sftflow.tasks.core.cache_keys import code_modules, fingerprint_of, library_versions, logic_version, stage_key
from sftflow.tasks.core.failpoints import failpoint
from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.records import PartedOutput, StageOutput
from sftflow.tasks.core.workspace import Workspace

RECORDS_PREFIX = "records"
PART_ROWS = 50_000  # rows per records part: bounded memory per file, few files for small runs


class StageCall(BaseModel):
    """Everything one stage execution needs, small and JSON-able (it is a Prefect parameter)."""

    model_config = ConfigDict(frozen=True)
    stage: str
    key: str
    label: str = ""  # e.g. the source name for per-source stages
    code_hash: str
    config: dict[str, Any]  # the whole section the stage reads, unkeyed fields included
    config_hash: str  # of the keyed part of `config`
    unkeyed: list[str] = Field(default_factory=list)  # dotted fields of `config` left out of the key
    inputs: list[Manifest] = Field(default_factory=list)
    input_hashes: list[str] = Field(default_factory=list)  # non-artifact inputs (source file bytes)
    input_names: list[str] = Field(default_factory=list)  # what each of `input_hashes` is ("" where it says itself)
    code_modules: dict[str, str] = Field(default_factory=dict)  # what `code_hash` hashes: module -> source sha256
    libraries: dict[str, str] = Field(default_factory=dict)  # the keyed library versions
    params: dict[str, Any] = Field(default_factory=dict)  # not in the key: e.g. resolved paths
    root: str
    warehouse: str
    data_dirs: list[str] = Field(default_factory=list)  # further allowed input roots (SFTFLOW_DATA_DIRS)

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(Path(self.warehouse) / "artifacts")

    @property
    def workspace(self) -> Workspace:
        """The workspace the plan resolved: a task confines its paths with it and never reads the
        environment again (a worker process may not share the planner's environment)."""
        return Workspace(root=Path(self.root), warehouse=Path(self.warehouse),
                         data_dirs=tuple(Path(d) for d in self.data_dirs))

    @property
    def work_dir(self) -> Path:
        """Scratch space of this call outside the artifact store: warehouse/work/<stage>/<key>."""
        return Path(self.warehouse) / "work" / self.stage / self.key

    @property
    def artifact_dir(self) -> Path:
        """Where this call's artifact lives once committed."""
        return self.store.stage_dir(self.stage) / self.key

    def key_inputs(self) -> dict[str, Any]:
        """Everything the key hashes, by name: kept in the artifact's manifest and the catalog so a
        later run can say which of them changed (tasks/core/why.py). `key_from_inputs` of it is
        the key itself."""
        return {
            "stage": self.stage,
            "logic_version": logic_version(self.stage),
            "code": dict(self.code_modules),
            "config": keyed_config(self.config, self.unkeyed),
            # an artifact written before manifests named their call's label: its source, if any
            "inputs": [{"stage": m.stage, "label": m.label or m.stats.get("source", ""), "key": m.key,
                        "data_hash": m.data_hash} for m in self.inputs],
            "external": [{"name": name, "value": value} for name, value in zip(self.input_names, self.input_hashes)],
            "libraries": dict(self.libraries),
        }


def key_from_inputs(key_inputs: dict[str, Any]) -> str:
    """The key a `StageCall.key_inputs()` record hashes to: a record that misses a key input
    cannot reproduce its artifact's key."""
    return stage_key(key_inputs["stage"], fingerprint_of(key_inputs["code"]), key_inputs["config"],
                     [i["data_hash"] for i in key_inputs["inputs"]] + [e["value"] for e in key_inputs["external"]],
                     key_inputs["libraries"], logic=key_inputs["logic_version"])


def keyed_config(config: dict[str, Any], unkeyed: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """`config` without the dotted fields in `unkeyed`: the part of it that enters the key.

    Unkeyed fields change how a stage computes (batch sizes, an equivalent backend), not what it
    writes. A field that is not in `config` is an error, so a renamed field cannot silently drop
    out of this list and into the key.

    >>> keyed_config({"threshold": 0.5, "toxicity": {"batch_size": 32, "roles": ["user"]}}, ["toxicity.batch_size"])
    {'threshold': 0.5, 'toxicity': {'roles': ['user']}}
    >>> keyed_config({"threshold": 0.5}, ["batch_size"])
    Traceback (most recent call last):
    ...
    KeyError: "unkeyed field 'batch_size' is not in the stage's config"
    """
    keyed = copy.deepcopy(config)
    for dotted in unkeyed:
        *parents, last = dotted.split(".")
        node: Any = keyed
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise KeyError(f"unkeyed field {dotted!r} is not in the stage's config")
        del node[last]
    return keyed


def plan_stage(
    stage: str,
    module: str,
    config: dict[str, Any],
    inputs: list[Manifest],
    libraries: tuple[str, ...],
    *,
    root: Path,
    warehouse: Path,
    data_dirs: tuple[Path, ...] = (),
    label: str = "",
    extra_input_hashes: list[str] | dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    unkeyed: tuple[str, ...] | list[str] = (),
) -> StageCall:
    """Compute the key of a stage execution from code, config, inputs and library versions.

    The key holds exactly what changes the stage's output:
    - `config` minus its `unkeyed` fields (`keyed_config`); the stage still reads all of `config`;
    - each input artifact's `data_hash` (what the stage reads from it: records and extra tables,
      not the decision log), not its key and not the hash of all its bytes;
    - `extra_input_hashes`: files and models read directly (their bytes or pinned revisions), as a
      list of self-describing `name=value` strings or a dict naming each (the names are not keyed);
    - the code fingerprint and the versions of `libraries`.
    `params` travel with the call and stay out of the key (paths, the runner, the data card).
    A registered stage (tasks/core/stages.py) must be planned with its registered module: the
    fingerprint starts there.
    """
    registered = next((spec for spec in stages.STAGES if spec.name == stage), None)
    if registered is not None and registered.module != module:
        raise ValueError(f"stage {stage!r} is registered with module {registered.module}, planned with {module}")
    modules = code_modules(module)
    code_hash = fingerprint_of(modules)
    keyed = keyed_config(config, unkeyed)
    extra = extra_input_hashes or []
    names = list(extra) if isinstance(extra, dict) else [""] * len(extra)
    extra = list(extra.values()) if isinstance(extra, dict) else list(extra)
    versions = library_versions(libraries)
    key = stage_key(stage, code_hash, keyed, [m.data_hash for m in inputs] + extra, versions)
    return StageCall(
        stage=stage, key=key, label=label, code_hash=code_hash, config=config,
        config_hash=short_hash(keyed), unkeyed=list(unkeyed), inputs=inputs,
        input_hashes=extra, input_names=names, code_modules=dict(modules), libraries=versions,
        params=dict(params or {}), root=str(root), warehouse=str(warehouse), data_dirs=[str(d) for d in data_dirs],
    )


def plan_call(module: ModuleType, config: dict[str, Any], inputs: list[Manifest], ws: Workspace,
              **kwargs: Any) -> StageCall:
    """`plan_stage` for a stage module's `plan`: the stage it is registered as, its `LIBRARIES` and
    `UNKEYED` fields, the workspace's root, warehouse and allowed data folders."""
    spec = stages.spec_of_module(module.__name__)
    return plan_stage(spec.name, module.__name__, config, inputs, module.LIBRARIES, root=ws.root,
                      warehouse=ws.warehouse, data_dirs=ws.data_dirs, unkeyed=getattr(module, "UNKEYED", ()),
                      **kwargs)


def records_paths(manifests: list[Manifest]) -> list[Path]:
    """The records parts of input artifacts, in order."""
    return [p for m in manifests for p in m.files_named(RECORDS_PREFIX)]


def check_reasons(stage: str, decisions: pa.Table, vocabulary: frozenset[str] | None) -> None:
    """Refuse decisions with a reason the stage does not declare: the catalog's drops by stage and
    reason are only as trustworthy as the rule that a reason means one thing in one stage."""
    if vocabulary is None or not decisions.num_rows:
        return
    recorded = set(pc.unique(decisions["reason"]).to_pylist())
    foreign = sorted(recorded - vocabulary)
    if foreign:
        raise ValueError(f"{stage}: recorded reason(s) {', '.join(foreign)} outside the stage's REASONS "
                         f"({', '.join(sorted(vocabulary))}); declare them in the stage module")


def execute(call: StageCall, compute: Callable[[StageCall], StageOutput | PartedOutput]) -> tuple[Manifest, bool]:
    """Load the committed artifact for `call.key`, or compute and commit it. Returns (manifest, hit).

    A PartedOutput is written as it is produced: each part's records become their own
    `records-NNNNN.parquet` files (split at PART_ROWS) and its decisions and extra tables are
    appended to one Parquet file each, so memory holds one part at a time.
    """
    store = call.store
    existing = store.load(call.stage, call.key)
    if existing is not None:
        return existing, True
    vocabulary = stages.stage_reasons(call.stage)  # a stage that declares none fails before computing
    started = time.perf_counter()
    output = compute(call)
    whole = isinstance(output, StageOutput)
    if whole:
        failpoint(f"{call.stage}:computed")
    parts = [output] if whole else output.parts
    writer = store.writer(call.stage, call.key)
    try:
        n_out = n_records_files = 0
        records_schema = None
        appended: dict[str, TableAppender] = {}
        files: dict[str, Path] = {}
        for part in parts:
            records_schema = part.records.schema
            for start in range(0, part.records.num_rows, PART_ROWS):
                writer.write_table(f"{RECORDS_PREFIX}-{n_records_files:05d}.parquet",
                                   part.records.slice(start, PART_ROWS))
                n_records_files += 1
            n_out += part.records.num_rows
            check_reasons(call.stage, part.decisions, vocabulary)
            for name, table in [(DECISIONS_FILE, part.decisions), *part.extra.items()]:
                name = name if name.endswith(".parquet") else f"{name}.parquet"
                if name not in appended:
                    appended[name] = TableAppender(writer, name)
                appended[name].append(table)
            files.update(part.files)
        if not whole:
            failpoint(f"{call.stage}:computed")
        if not n_records_files:  # no kept row: one empty file keeps the schema readable
            empty = records_schema.empty_table() if records_schema is not None else pa.table({})
            writer.write_table(f"{RECORDS_PREFIX}-00000.parquet", empty)
        for table in appended.values():
            table.close()
        for name, source in files.items():
            writer.add_path(name, source)
        failpoint(f"{call.stage}:written")
        stats = output.stats if whole else output.stats()
        n_in = stats.get("n_in", appended[DECISIONS_FILE].n_rows if DECISIONS_FILE in appended else 0)
        stats = {**stats, "compute_seconds": round(time.perf_counter() - started, 3)}
        manifest = writer.commit(
            inputs=[m.key for m in call.inputs], config_hash=call.config_hash, code_hash=call.code_hash,
            n_in=int(n_in), n_out=int(stats.get("n_out", n_out)), stats=stats, label=call.label,
            key_inputs=call.key_inputs(),
        )
    except BaseException:
        writer.abort()
        raise
    failpoint(f"{call.stage}:committed")
    return manifest, False


def stage_task(stage: str) -> Callable[[Callable[[StageCall], StageOutput]], Any]:
    """Wrap a pure `(StageCall) -> StageOutput` function as a cached Prefect task.

    The task returns {"manifest": ..., "computed": bool} as JSON (never pickle). Its Prefect
    cache key is the artifact key, so Prefect and the on-disk store agree on what is cached.
    """

    def decorate(compute: Callable[[StageCall], StageOutput]):
        from prefect import task

        def run(call: StageCall) -> dict[str, Any]:
            manifest, hit = execute(call, compute)
            return {"manifest": manifest.model_dump(mode="json"), "computed": not hit}

        wrapped = task(
            run,
            name=stage,
            cache_key_fn=lambda _context, parameters: parameters["call"].key,
            result_serializer="json",
            persist_result=True,
        )
        wrapped.compute = compute  # the pure function, for tests and benchmarks
        wrapped.stage = stage
        return wrapped

    return decorate
