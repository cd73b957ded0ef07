"""What each stage reads from the recipe and the outside world: the inputs of its cache key.

One function per stage turns (recipe, input manifests) into a StageCall whose key covers the
stage's code, the recipe section it reads, its input artifacts, the bytes of any file it reads
directly (source files, eval sets, local models) and the library versions that change its output.
"""

from __future__ import annotations

from typing import Any

from tasks import dedup, filters, ingest, mix, normalize, score
from tasks.core.artifacts import Manifest
from tasks.core.recipe import FilterConfig, Recipe, SourceConfig
from tasks.core.stage import StageCall, plan_stage
from tasks.core.workspace import Workspace
from tasks.scorers import model_fingerprint
from tasks.tokens import resolve_tokenizer_spec


def _plan(stage: str, module: Any, config: dict[str, Any], inputs: list[Manifest], ws: Workspace,
          **kwargs: Any) -> StageCall:
    return plan_stage(stage, module.__name__, config, inputs, module.LIBRARIES,
                      root=ws.root, warehouse=ws.warehouse, **kwargs)


def plan_ingest(source: SourceConfig, ws: Workspace) -> StageCall:
    path = ws.resolve_input(source.path) if source.path else None
    return _plan("ingest", ingest, source.canonical(), [], ws, label=source.name,
                 extra_input_hashes=[ingest.source_fingerprint(source, path)],
                 params={"path": str(path) if path else None})


def plan_normalize(recipe: Recipe, ingested: Manifest, ws: Workspace) -> StageCall:
    label = ingested.stats.get("source", "")
    return _plan("normalize", normalize, recipe.normalize.canonical(), [ingested], ws, label=label)


def plan_dedup(recipe: Recipe, normalized: list[Manifest], ws: Workspace) -> StageCall:
    # Inputs in content order: listing the sources in another order changes nothing.
    return _plan("dedup", dedup, recipe.dedup.canonical(), sorted(normalized, key=lambda m: m.content_hash), ws)


def plan_filter(recipe: Recipe, deduped: Manifest, ws: Workspace) -> StageCall:
    config = recipe.filters.canonical()
    # The key names the tokenizer that really counts tokens, not the train model it came from.
    config["length"]["tokenizer"] = resolve_tokenizer_spec(recipe.filters.length.tokenizer, recipe.train.model)
    external = filters.filter_input_hashes(FilterConfig.model_validate(config), ws.resolve_input)
    return _plan("filter", filters, config, [deduped], ws, extra_input_hashes=external)


def plan_score(recipe: Recipe, filtered: Manifest, ws: Workspace) -> StageCall:
    external = model_fingerprint(recipe.score, ws.resolve_input) if recipe.score.enabled else []
    return _plan("score", score, recipe.score.canonical(), [filtered], ws, extra_input_hashes=external)


def plan_mix(recipe: Recipe, scored: Manifest, ws: Workspace) -> StageCall:
    return _plan("mix", mix, recipe.mix.canonical(), [scored], ws)
