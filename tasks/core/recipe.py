"""Recipe: the YAML that drives a run, validated by pydantic.

Every model is frozen and forbids unknown keys, so a typo in a recipe is an error that names the
field, never a silently ignored setting. A recipe with only `name` and `sources` is valid: every
other section has the defaults documented on its fields (docs/recipes.md lists them).
This module holds the root model, the sources and the runner, and reads recipe files; the stages'
sections are in recipe_data.py, recipe_filters.py and recipe_training.py, their base in
recipe_section.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from sftflow.tasks.lib.categories import AUTO, CATEGORIES
from sftflow.tasks.core.hashing import canonical_json, short_hash
from sftflow.tasks.core.recipe_data import DedupConfig, MixConfig, NormalizeConfig, ScoreConfig
from sftflow.tasks.core.recipe_filters import FilterConfig
from sftflow.tasks.core.recipe_section import Role, Section
from sftflow.tasks.core.recipe_training import EvalConfig, TrainConfig

SLUG = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


# ---------------------------------------------------------------------------------- sources --
class SourceConfig(Section):
    """One input dataset: a local file/folder (`path`) or a Hugging Face dataset id (`hf_dataset`)."""

    name: str = Field(description="Unique slug; part of every example_id from this source.")
    format: Literal["alpaca", "sharegpt", "openai"] = Field(description="Row layout of the source.")
    path: str | None = Field(
        None,
        description="File (.json array, .jsonl, .parquet) or a folder written by "
        "datasets.save_to_disk; relative to the project root.",
    )
    hf_dataset: str | None = Field(None, description="Hub dataset id for datasets.load_dataset.")
    hf_split: str = Field("train", description="Split to read from a dataset id or DatasetDict folder.")
    hf_revision: str | None = Field(
        None, description="Pinned hub revision; without it a changed hub dataset is not detected."
    )
    category: str = Field("auto", description="Fixed mixing category, or `auto` for the rule-based classifier.")
    origin: Literal["human", "synthetic", "mixed"] | None = Field(None, description="Who wrote the data.")
    license: str | None = Field(None, description="License of the source, recorded in the catalog.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Field mapping from the format's names to this source's names, e.g. "
        "{instruction: prompt, output: completion} or {conversations: turns, from: speaker}.",
    )
    role_map: dict[str, Role] = Field(
        default_factory=dict, description="Extra speaker names mapped to roles (added to the built-in map)."
    )
    tool_turns: Literal["keep", "quarantine"] = Field(
        "keep",
        description="ShareGPT function_call/observation turns: keep them as assistant/tool turns, "
        "or quarantine the whole row with reason tool_turn_quarantined.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"source name {value!r} must be a lowercase slug (a-z, 0-9, _ and -)")
        return value

    @field_validator("category")
    @classmethod
    def _category_slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"category {value!r} must be a lowercase slug or 'auto'")
        return value

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError(f"source {self.name!r}: give exactly one of `path` or `hf_dataset`")
        return self


# ----------------------------------------------------------------------------------- recipe --
class RunnerConfig(Section):
    """Where per-part work runs: normalize and filter compute each records part (<= 50,000 rows)
    of their input as its own task. Not part of any cache key: artifacts are byte-identical on
    every runner."""

    kind: Literal["sequential", "processes", "dask"] = Field(
        "sequential",
        description="`sequential`: in the stage's process; `processes`: Prefect's ProcessPoolTaskRunner; "
        "`dask`: prefect-dask's DaskTaskRunner (install the `dask` extra).",
    )
    workers: int = Field(2, ge=1, description="Processes for `processes`, and for `dask` without an address (a LocalCluster).")
    address: str | None = Field(
        None, description="Dask scheduler address (e.g. tcp://10.0.0.5:8786); the warehouse must be on a "
        "filesystem the workers share.")


class Recipe(Section):
    """A whole run: where the data comes from and how each stage treats it."""

    name: str = Field(description="Recipe name, recorded in runs.recipe_name.")
    description: str = Field("", description="Free text for people.")
    sources: list[SourceConfig] = Field(min_length=1, description="Input datasets (see sources[]).")
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources

    @model_validator(mode="after")
    def _mix_shares_name_producible_categories(self) -> "Recipe":
        """A `mix.shares` name no source can produce is a typo: refuse it before anything runs.

        Every source's category is known here: a fixed slug, or `auto`, whose labels are the closed
        set of tasks/lib/categories.py. (Whether such a category ends up with rows is checked at mix.)"""
        if not self.mix.shares:
            return self
        producible = {s.category for s in self.sources if s.category != AUTO}
        if any(s.category == AUTO for s in self.sources):
            producible |= set(CATEGORIES)
        unknown = sorted(set(self.mix.shares) - producible)
        if unknown:
            raise ValueError(
                f"mix.shares names {', '.join(repr(c) for c in unknown)}, which no source can produce; the "
                f"sources' categories are {', '.join(sorted(producible))} (a fixed `category`, or `auto`: "
                f"{', '.join(CATEGORIES)})")
        return self

    @model_validator(mode="after")
    def _source_priority_names_sources(self) -> "Recipe":
        """`dedup.source_priority` names sources of this recipe: a typo would silently rank nothing."""
        unknown = sorted(set(self.dedup.source_priority) - {s.name for s in self.sources})
        if unknown:
            raise ValueError(
                f"dedup.source_priority names {', '.join(repr(n) for n in unknown)}, which is not a source of "
                f"this recipe; the sources are {', '.join(s.name for s in self.sources)}")
        return self

    def recipe_hash(self) -> str:
        return short_hash(self.canonical())


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the message says where and what to do."""


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML.

    >>> d = {"filters": {"toxicity": {"threshold": 0.5}}, "sources": [{"name": "a"}]}
    >>> apply_override(d, "filters.toxicity.threshold=0.3"); d["filters"]["toxicity"]["threshold"]
    0.3
    >>> apply_override(d, "sources.0.name=b"); d["sources"][0]["name"]
    'b'
    """
    if "=" not in assignment:
        raise RecipeError(f"override {assignment!r} must look like dotted.key=value")
    dotted, raw_value = assignment.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"override {assignment!r} has an empty key")
    value = yaml.safe_load(raw_value) if raw_value.strip() else None
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        node = _child(node, key, dotted, create=True)
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {dotted!r}: cannot set a key inside a {type(node).__name__}")


def _index(node: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise RecipeError(f"override {dotted!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _child(node: Any, key: str, dotted: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, dotted)]
    if isinstance(node, dict):
        if key not in node or node[key] is None:
            node[key] = {}
        return node[key]
    raise RecipeError(f"override {dotted!r}: {key!r} is inside a {type(node).__name__}, not a section")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML, apply `--set` overrides, validate. Errors name the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with at least `name` and `sources`")
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_recipe(data, origin=str(path))


def parse_recipe(data: dict[str, Any], origin: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise RecipeError(f"{origin}: invalid recipe: {problems}") from None


def recipe_canonical_json(recipe: Recipe) -> str:
    return canonical_json(recipe.canonical())
