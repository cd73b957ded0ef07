"""The toxicity backend a recipe's `filters.toxicity` section names: loaded for the filter stage,
or only named, without loading a model, for its cache key. Local paths are confined by `resolve`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sftflow.tasks.core.recipe_filters import ToxicityConfig
from sftflow.tasks.lib.detoxify_scorer import DetoxifyScorer, detoxify_scorer_name, verify_checkpoint
from sftflow.tasks.lib.toxicity import ProfanityCheckScorer, ToxicityScorer, _version


def _resolve_detoxify_paths(cfg: ToxicityConfig, resolve: Callable[[str], Path]) -> tuple[str, str | None]:
    """The model (type, or confined checkpoint path) and the confined config folder."""
    from detoxify.detoxify import MODEL_URLS

    model = cfg.model
    if model in MODEL_URLS and cfg.checkpoint_sha256 is not None:
        raise ValueError(
            f"filters.toxicity.checkpoint_sha256 pins a checkpoint file, but filters.toxicity.model "
            f"{model!r} is a detoxify model type (detoxify downloads it): remove checkpoint_sha256, "
            "or set model to the checkpoint file it pins"
        )
    if model not in MODEL_URLS:
        path = resolve(model)  # raises PathNotAllowed outside the allowed roots
        if not path.is_file():
            raise FileNotFoundError(
                f"filters.toxicity.model: {model!r} is not a detoxify model type "
                f"({', '.join(sorted(MODEL_URLS))}) and no checkpoint file exists at {path}"
            )
        model = str(path)
    config_path = None
    if cfg.huggingface_config_path is not None:
        folder = resolve(cfg.huggingface_config_path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"filters.toxicity.huggingface_config_path: {folder} is not a folder; give the folder "
                "holding the transformer's config.json and tokenizer files"
            )
        config_path = str(folder)
    return model, config_path


def toxicity_scorer_name(cfg: ToxicityConfig, resolve: Callable[[str], Path]) -> str | None:
    """The name `load_toxicity_scorer` would give, without loading a model (for cache keys)."""
    if not cfg.enabled:
        return None
    if cfg.backend == "profanity-check":
        return f"profanity-check@{_version('alt-profanity-check')}"
    model, config_path = _resolve_detoxify_paths(cfg, resolve)
    # Planning fails here, before any stage runs, when a checkpoint is not pinned or has changed.
    digest = verify_checkpoint(Path(model), cfg.checkpoint_sha256) if Path(model).is_file() else None
    return detoxify_scorer_name(model, config_path, digest)


def load_toxicity_scorer(
    cfg: ToxicityConfig, resolve: Callable[[str], Path], device: str = "cpu"
) -> ToxicityScorer:
    """The scorer a recipe's toxicity section names; local paths are confined by `resolve`."""
    scripts = frozenset(cfg.judged_scripts) if cfg.judged_scripts is not None else None
    if cfg.backend == "profanity-check":
        return ProfanityCheckScorer(scripts=scripts)
    model, config_path = _resolve_detoxify_paths(cfg, resolve)
    return DetoxifyScorer(model, config_path, batch_size=cfg.batch_size, device=device,
                          checkpoint_sha256=cfg.checkpoint_sha256, max_batch_tokens=cfg.max_batch_tokens,
                          scripts=scripts)
