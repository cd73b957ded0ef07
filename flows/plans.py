"""What each stage reads from the recipe and the outside world: the inputs of its cache key.

One function per stage turns (recipe, input manifests) into a StageCall whose key covers the
stage's code, the recipe section it reads (less its UNKEYED fields), what it reads from its input
artifacts (`Manifest.data_hash`), the bytes or pinned revisions of any file or model it reads
directly (source files, eval sets, tokenizers, checkpoints), the device where that changes numbers,
and the library versions that change its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import dedup, evaluate, filters, ingest, mix, normalize, score, train
from tasks.core.artifacts import Manifest
from tasks.core.hashing import sha256_file, sha256_tree
from tasks.core.recipe import FilterConfig, Recipe, SourceConfig
from tasks.core.stage import StageCall, plan_stage
from tasks.core.workspace import Workspace
from tasks.lib.scorers import model_fingerprint
from tasks.lib.tokens import resolve_tokenizer_revision, resolve_tokenizer_spec

# Recipe fields a stage reads that change how it computes, not what it writes: they travel in the
# call's config but stay out of its key (tasks.core.stage.keyed_config; docs/caching.md, "Fields
# that are not in a key", says why each one is safe there). Anything not listed here is keyed.
UNKEYED: dict[str, tuple[str, ...]] = {
    # Both backends compute the same candidate pairs and decisions (tests/tasks/test_dedup.py).
    "dedup": ("near.backend",),
    # How many texts go through detoxify per forward pass; profanity-check does not batch.
    "filter": ("toxicity.batch_size", "toxicity.max_batch_tokens"),
    # Pairs per forward pass of the scorer.
    "score": ("batch_size",),
    # Read by the flow after evaluate: what a tripped gate does to the run, not what is measured.
    "evaluate": ("eval.on_regression",),
}


def _plan(stage: str, module: Any, config: dict[str, Any], inputs: list[Manifest], ws: Workspace,
          **kwargs: Any) -> StageCall:
    return plan_stage(stage, module.__name__, config, inputs, module.LIBRARIES,
                      root=ws.root, warehouse=ws.warehouse, unkeyed=UNKEYED.get(stage, ()), **kwargs)


def plan_ingest(source: SourceConfig, ws: Workspace) -> StageCall:
    path = ws.resolve_input(source.path) if source.path else None
    return _plan("ingest", ingest, source.canonical(), [], ws, label=source.name,
                 extra_input_hashes=[ingest.source_fingerprint(source, path)],
                 params={"path": str(path) if path else None})


def plan_normalize(recipe: Recipe, ingested: Manifest, ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    label = ingested.stats.get("source", "")
    # The runner (where parts run) is a parameter, not part of the key: the bytes do not depend on it.
    return _plan("normalize", normalize, recipe.normalize.canonical(), [ingested], ws, label=label,
                 params={"runner": runner or recipe.runner.canonical()})


def plan_dedup(recipe: Recipe, normalized: list[Manifest], ws: Workspace) -> StageCall:
    # Inputs in data-hash order: listing the sources in another order changes nothing.
    return _plan("dedup", dedup, recipe.dedup.canonical(), sorted(normalized, key=lambda m: m.data_hash), ws)


def plan_filter(recipe: Recipe, deduped: Manifest, ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    config = recipe.filters.canonical()
    # The key names the tokenizer that really counts tokens, not the train model it came from, and
    # the hub revision it is loaded at (train.revision when it is the train model's tokenizer).
    length = recipe.filters.length
    config["length"]["tokenizer"] = resolve_tokenizer_spec(length.tokenizer, recipe.train.model)
    config["length"]["tokenizer_revision"] = resolve_tokenizer_revision(
        length.tokenizer, length.tokenizer_revision, recipe.train.model, recipe.train.revision)
    external = filters.filter_input_hashes(FilterConfig.model_validate(config), ws.resolve_input)
    return _plan("filter", filters, config, [deduped], ws, extra_input_hashes=external,
                 params={"runner": runner or recipe.runner.canonical()})


def plan_score(recipe: Recipe, filtered: Manifest, ws: Workspace) -> StageCall:
    external = model_fingerprint(recipe.score, ws.resolve_input) if recipe.score.enabled else []
    return _plan("score", score, recipe.score.canonical(), [filtered], ws, extra_input_hashes=external)


def plan_mix(recipe: Recipe, scored: Manifest, ws: Workspace) -> StageCall:
    return _plan("mix", mix, recipe.mix.canonical(), [scored], ws)


def plan_train(recipe: Recipe, mixed: Manifest, ws: Workspace, data_card: dict[str, Any]) -> StageCall:
    external = []
    if not recipe.train.model.startswith("builtin:"):
        location = train.model_location(recipe.train.model, ws)
        external.append(sha256_tree(Path(location)) if Path(location).is_dir() else f"hub:{location}@{recipe.train.revision}")
    if recipe.train.chat_template and recipe.train.chat_template.lower() != "chatml":
        external.append(sha256_file(ws.resolve_input(recipe.train.chat_template)))
    # Where it runs changes the result (bf16, attention kernel): a CPU model is no cache hit on a GPU.
    external.append(f"device={train.training_device()}")
    params: dict[str, Any] = {"data_card": data_card}
    if recipe.train.accelerate_config:  # processes and machines change the global batch: keyed by bytes
        config_file = ws.resolve_input(recipe.train.accelerate_config)
        external.append(f"accelerate_config={sha256_file(config_file)}")
        params["accelerate_config"] = str(config_file)
    # The data card is descriptive (it names this run): a parameter, not part of the key.
    return _plan("train", train, recipe.train.canonical(), [mixed], ws, extra_input_hashes=external, params=params)


def plan_evaluate(recipe: Recipe, trained: Manifest, mixed: Manifest, ws: Workspace) -> StageCall:
    config = {"eval": recipe.eval.canonical(), "max_length": recipe.train.max_length}
    external = [sha256_file(ws.resolve_input(p)) for p in (recipe.eval.general_text, recipe.eval.prompts) if p]
    # The device picks the precision both models are measured in (evaluate.eval_precision): a
    # verdict measured in fp32 on CPU is no cache hit for a bf16 run on a GPU.
    external.append(f"device={train.training_device()}")
    return _plan("evaluate", evaluate, config, [trained, mixed], ws, extra_input_hashes=external)
