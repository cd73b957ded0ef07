"""Toxicity scorers: text in, probability of toxicity in [0, 1] out.

Two backends behind one protocol:
- `profanity-check` (alt-profanity-check): a linear model over word n-grams shipped in its wheel;
  offline, fast, and blind to toxicity without profanity. The offline default.
- `detoxify`: a transformer classifier. `model` is a detoxify model type (original, unbiased,
  multilingual, ...; downloaded by detoxify) or a local checkpoint file. Offline, give the
  checkpoint file plus `huggingface_config_path`, a local folder with the transformer config and
  tokenizer. Checkpoints are torch pickles that detoxify loads with weights_only=False, which
  runs any code the file holds: a checkpoint file is only loaded when its sha256 is pinned in
  `checkpoint_sha256` and the file's bytes match it, checked right before detoxify reads it. The
  sha256 is also part of the scorer's name and so of the stage's cache key.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Callable, Protocol

from tasks.core.hashing import sha256_file, sha256_tree
from tasks.core.recipe import ToxicityConfig

TOXICITY_CLASS = "toxicity"  # detoxify's standardized name of the overall toxicity output
# RoBERTa-style models number positions from pad_token_id + 1, so that many positions are unusable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert"}


class ToxicityScorer(Protocol):
    name: str  # identifies backend, model and version in stats and cache keys

    def score(self, texts: list[str]) -> list[float]:
        """Probability of toxicity per text, in input order."""
        ...


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


class ProfanityCheckScorer:
    """alt-profanity-check's calibrated linear SVM (predict_prob)."""

    def __init__(self) -> None:
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self.name = f"profanity-check@{_version('alt-profanity-check')}"

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self._predict_prob(list(texts))]


class CheckpointHashError(ValueError):
    """A detoxify checkpoint file whose sha256 is not pinned, or does not match the pin."""


def verify_checkpoint(path: Path, expected_sha256: str | None) -> str:
    """The checkpoint file's sha256, once it is known to equal the pinned `expected_sha256`.

    detoxify unpickles checkpoints (torch.load with weights_only=False), and unpickling runs any
    code the file holds; pinning the hash makes loading a file that changed an error.
    """
    actual = sha256_file(path)
    if expected_sha256 is None:
        raise CheckpointHashError(
            f"filters.toxicity.model: the checkpoint file {path} would be unpickled by detoxify, which "
            "runs any code it holds, so its sha256 must be pinned. Check that the file comes from a "
            f"source you trust, then set filters.toxicity.checkpoint_sha256: {actual}"
        )
    if actual != expected_sha256.lower():
        raise CheckpointHashError(
            f"filters.toxicity.model: the checkpoint file {path} has sha256 {actual}, but "
            f"filters.toxicity.checkpoint_sha256 pins {expected_sha256.lower()}. The file is not the "
            "one that was pinned: restore it, or check the new file and pin its sha256 instead"
        )
    return actual


def detoxify_scorer_name(model: str, huggingface_config_path: str | Path | None,
                         checkpoint_sha256: str | None = None) -> str:
    """The scorer's name: the model type, or the checkpoint's sha256; plus the config folder's hash.

    `checkpoint_sha256`: the checkpoint's already verified hash (saves hashing the file again).
    """
    if Path(model).is_file():
        name = f"detoxify:checkpoint:sha256={checkpoint_sha256 or sha256_file(Path(model))}"
    else:
        name = f"detoxify:{model}@{_version('detoxify')}"
    if huggingface_config_path is not None:
        name += f"+hf_config:sha256={sha256_tree(Path(huggingface_config_path))}"
    return name


class DetoxifyScorer:
    """A detoxify model's `toxicity` output, scored in batches of texts of similar token count.

    The model runs as stored (fp32), so scores match detoxify's own `predict`. int8 dynamic
    quantization of the Linear layers was tried and is not offered: on bench/toxicity.py's
    checkpoint it changed more than 1 in 100 keep/drop decisions at the default threshold.
    """

    def __init__(
        self,
        model: str,
        huggingface_config_path: str | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        checkpoint_sha256: str | None = None,
        max_batch_tokens: int = 2048,
    ) -> None:
        from detoxify.detoxify import MODEL_URLS, Detoxify

        is_checkpoint = Path(model).is_file()
        if not is_checkpoint and model not in MODEL_URLS:
            raise ValueError(
                f"filters.toxicity.model: {model!r} is neither a checkpoint file nor a detoxify "
                f"model type ({', '.join(sorted(MODEL_URLS))})"
            )
        # Verified here, immediately before detoxify unpickles the file.
        digest = verify_checkpoint(Path(model), checkpoint_sha256) if is_checkpoint else None
        try:
            # With a checkpoint, detoxify takes model_type, model class and tokenizer class from
            # the checkpoint's own config (config.arch.args), so model_type here is unused.
            self._detox = Detoxify(
                model_type=model if not is_checkpoint else "original",
                checkpoint=model if is_checkpoint else None,
                device=device,
                huggingface_config_path=huggingface_config_path,
            )
        except OSError as exc:  # no network, missing config folder, unreadable checkpoint
            raise RuntimeError(
                f"filters.toxicity: detoxify model {model!r} could not be loaded ({exc}). Offline, set "
                "`model` to a local checkpoint file and `huggingface_config_path` to a local folder "
                "with its transformer config and tokenizer, or use backend: profanity-check."
            ) from exc
        if TOXICITY_CLASS not in self._detox.class_names:
            raise ValueError(
                f"filters.toxicity.model: {model!r} has no {TOXICITY_CLASS!r} output "
                f"(its classes: {', '.join(self._detox.class_names)})"
            )
        self._column = self._detox.class_names.index(TOXICITY_CLASS)
        self._max_tokens = _max_input_tokens(self._detox.tokenizer, self._detox.model.config)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.name = detoxify_scorer_name(model, huggingface_config_path, digest)

    def score(self, texts: list[str]) -> list[float]:
        import torch

        if not texts:
            return []
        model, tokenizer = self._detox.model, self._detox.tokenizer
        model.eval()
        # Tokenized once, unpadded, so batches can be formed by exact token count: each batch then
        # holds texts of nearly equal length and pads little. Padding is most of the work when
        # short prompts and long answers share a batch (every row costs as much as the longest,
        # and attention grows with its square). Longest first: the largest batch, which sets
        # peak memory, comes first.
        encoded = tokenizer(list(texts), truncation=True, max_length=self._max_tokens)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__, reverse=True)
        scores: list[float] = [0.0] * len(texts)
        with torch.inference_mode():
            for batch in self._batches(order, lengths):
                inputs = tokenizer.pad(
                    {key: [values[i] for i in batch] for key, values in encoded.items()}, return_tensors="pt"
                ).to(model.device)
                probs = torch.sigmoid(model(**inputs).logits[:, self._column].float()).tolist()
                for index, prob in zip(batch, probs):
                    scores[index] = float(prob)
        return scores

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Consecutive texts of `order` (longest first), at most batch_size of them and at most
        max_batch_tokens padded positions (rows times the first, widest text) per batch.

        The token cap makes long texts go in smaller batches: the long tail's first batch would
        otherwise pad its shorter members up to the longest text, and padded positions cost as
        much as real ones.
        """
        batches: list[list[int]] = []
        for index in order:
            batch = batches[-1] if batches else None
            if (batch is None or len(batch) >= self.batch_size
                    or (len(batch) + 1) * lengths[batch[0]] > self.max_batch_tokens):
                batches.append([index])
            else:
                batch.append(index)
        return batches


def _max_input_tokens(tokenizer, config) -> int:
    positions = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in _OFFSET_POSITION_MODELS:
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    # A tokenizer saved without a length limit reports a huge model_max_length.
    return min(int(tokenizer.model_max_length), positions)


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
    if cfg.backend == "profanity-check":
        return ProfanityCheckScorer()
    model, config_path = _resolve_detoxify_paths(cfg, resolve)
    return DetoxifyScorer(model, config_path, batch_size=cfg.batch_size, device=device,
                          checkpoint_sha256=cfg.checkpoint_sha256, max_batch_tokens=cfg.max_batch_tokens)
