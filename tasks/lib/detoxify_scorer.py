"""The detoxify toxicity backend: a transformer classifier's `toxicity` output, by token windows.

`model` is a detoxify model type (original, unbiased, multilingual, ...; downloaded by detoxify) or
a local checkpoint file. Offline, give the checkpoint file plus `huggingface_config_path`, a local
folder with the transformer config and tokenizer. Checkpoints are torch pickles that detoxify loads
with weights_only=False, which runs any code the file holds: a checkpoint file is only loaded when
its sha256 is pinned in `checkpoint_sha256` and the file's bytes match it, checked right before
detoxify reads it. The sha256 is also part of the scorer's name and so of the stage's cache key.
"""

from __future__ import annotations

from pathlib import Path

from sftflow.tasks.core.hashing import sha256_file, sha256_tree
from sftflow.tasks.lib.toxicity import ENGLISH_SCRIPTS, MULTILINGUAL_SCRIPTS, _WORD, _max_over_windows, _version

TOXICITY_CLASS = "toxicity"  # detoxify's standardized name of the overall toxicity output
# RoBERTa-style models number positions from pad_token_id + 1, so that many positions are unusable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert"}


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

    Nothing is truncated: a text longer than the model's position limit is cut into token
    windows (`windows`), and its score is the max over them.

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
        scripts: frozenset[str] | None = None,
    ) -> None:
        """`scripts`: the scripts the model reads (default: Latin and Cyrillic for the
        `multilingual` type, Latin, i.e. English, for the others and for checkpoint files)."""
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
        self._n_special = self._detox.tokenizer.num_special_tokens_to_add(pair=False)
        if scripts is None:
            scripts = MULTILINGUAL_SCRIPTS if model == "multilingual" else ENGLISH_SCRIPTS
        self.scripts = frozenset(scripts)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.name = detoxify_scorer_name(model, huggingface_config_path, digest)

    def score(self, texts: list[str]) -> list[float]:
        """Per text, its toxicity; a text over the position limit gets the max over its windows."""
        if not texts:
            return []
        encoded = self._encode(texts)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        fitting = [i for i, n in enumerate(lengths) if n <= self._max_tokens]
        scores = self._score_encoded(encoded, lengths, fitting, len(texts))
        over = [i for i, n in enumerate(lengths) if n > self._max_tokens]
        if over:  # the windows of all over-long texts, scored together (they fit: no recursion)
            for i, value in zip(over, _max_over_windows([self._token_windows(texts[i]) for i in over], self.score)):
                scores[i] = value
        return scores

    def windows(self, texts: list[str]) -> list[list[str]]:
        """Each text as it is scored: itself when it fits the model, else its token windows."""
        if not texts:
            return []
        lengths = [len(ids) for ids in self._encode(texts)["input_ids"]]
        return [[text] if n <= self._max_tokens else self._token_windows(text) for text, n in zip(texts, lengths)]

    def _encode(self, texts: list[str]):
        tokenizer = self._detox.tokenizer
        # Over-long texts are measured here and cut into windows, never run whole: the
        # tokenizer's "longer than the maximum ... indexing errors" warning does not apply.
        getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
        return tokenizer(list(texts), truncation=False)

    def _token_windows(self, text: str) -> list[str]:
        """Substrings of `text` within the position limit; each window starts where the first
        half of the previous one ends (by tokens), so a span of up to half a window's tokens
        lies whole inside one of them. Cut at white space; a single over-long word (a URL, an
        encoded blob) is cut in halves by characters.
        """
        budget = max(1, self._max_tokens - self._n_special)
        spans = [m.span() for m in _WORD.finditer(text)]
        pieces: list[str] = []
        if len(spans) > 1:
            words = [text[a:b] for a, b in spans]
            word_tokens = [len(ids) for ids in self._detox.tokenizer(words, add_special_tokens=False)["input_ids"]]
            start = 0
            while True:
                end, total = start + 1, word_tokens[start]
                while end < len(spans) and total + word_tokens[end] <= budget:
                    total += word_tokens[end]
                    end += 1
                pieces.append(text[spans[start][0]: spans[end - 1][1]])
                if end == len(spans):
                    break
                half, next_start = 0, start
                while next_start < end - 1 and half + word_tokens[next_start] <= total // 2:
                    half += word_tokens[next_start]
                    next_start += 1
                start = max(next_start, start + 1)
            if len(pieces) == 1:  # per-word counts said it fits, the whole text does not: halve by words
                middle = spans[len(spans) // 2][0]
                pieces = [text[:middle], text[middle:]]
        else:
            middle = len(text) // 2
            pieces = [text[:middle], text[middle:]]
        # Per-word counts can miss merges across words; any piece still too long is cut again.
        lengths = [len(ids) for ids in self._encode(pieces)["input_ids"]]
        return [w for piece, n in zip(pieces, lengths)
                for w in ([piece] if n <= self._max_tokens else self._token_windows(piece))]

    def _score_encoded(self, encoded, lengths: list[int], indices: list[int], n_texts: int) -> list[float]:
        import torch

        model, tokenizer = self._detox.model, self._detox.tokenizer
        model.eval()
        # Tokenized once, unpadded, so batches can be formed by exact token count: each batch then
        # holds texts of nearly equal length and pads little. Padding is most of the work when
        # short prompts and long answers share a batch (every row costs as much as the longest,
        # and attention grows with its square). Longest first: the largest batch, which sets
        # peak memory, comes first.
        order = sorted(indices, key=lengths.__getitem__, reverse=True)
        scores: list[float] = [0.0] * n_texts
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
