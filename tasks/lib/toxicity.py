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

Windows. A model scores what it is given as one text: profanity-check's linear model dilutes one
insult among many benign words (1.0 alone, under 0.5 after a few dozen benign words on some
wordings), and a transformer sees at most its position limit (512 tokens for detoxify's models).
So a turn is cut into windows and scored as the max over them (`score_turns`): by default one
window per sentence (`window: sentence`), and each window is cut again at the backend's own
limit (`windows()`): profanity-check
at PROFANITY_WINDOW_WORDS words, detoxify at its token limit, both with half-window overlap, so
nothing is truncated and a short insult lies whole inside some window. `window: turn` skips the
sentence split and keeps only the backend's cut.

Scripts. profanity-check and detoxify's `original`/`unbiased` are English models; `multilingual`
reads en, fr, es, it, pt, tr, ru. A window whose letters are mostly (more than half) in a script
the backend does not read is not scored: it is reported as unjudged with that script's name
(`unjudged_script`), never as a clean 0. Only the script is checked (no language model):
German or Vietnamese in Latin letters is still judged by an English model.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Literal, Protocol

from sftflow.tasks.core.hashing import sha256_file, sha256_tree
from sftflow.tasks.core.recipe import ToxicityConfig

TOXICITY_CLASS = "toxicity"  # detoxify's standardized name of the overall toxicity output
# RoBERTa-style models number positions from pad_token_id + 1, so that many positions are unusable.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert"}


class ToxicityScorer(Protocol):
    """What the filter needs of a backend. Two optional members are read with getattr:
    `windows(texts) -> list[list[str]]` (each text cut to what the model judges whole; default:
    the text itself) and `scripts` (frozenset of script names it reads; default: any script)."""

    name: str  # identifies backend, model and version in stats and cache keys

    def score(self, texts: list[str]) -> list[float]:
        """Probability of toxicity per text, in input order."""
        ...


# ------------------------------------------------------------------------------- windows --
WindowMode = Literal["sentence", "turn"]
PROFANITY_WINDOW_WORDS = 32  # profanity-check: words per window, half-window overlap
EXCERPT_CHARS = 80  # of the highest-scoring window, in the decision detail
ENGLISH_SCRIPTS = frozenset({"Latin"})
# detoxify `multilingual` (XLM-R): en, fr, es, it, pt, tr (Latin script) and ru (Cyrillic).
MULTILINGUAL_SCRIPTS = frozenset({"Latin", "Cyrillic"})

# Sentence ends: . ! ? … followed by white space (with closing quotes/brackets kept on the left),
# CJK full stops (no space follows them), and line breaks (paragraphs, list items, table rows).
_SENTENCE_END = re.compile(r"(?<=[.!?…][\"'”’)\]])\s+|(?<=[.!?…])\s+|(?<=[。！？])|\s*\n\s*")
_WORD = re.compile(r"\S+")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`: cut after . ! ? … followed by white space, after CJK full stops,
    and at line breaks (paragraphs, list items, table rows).

    A rule-based split, not a trained segmenter: a window only has to be short enough that the
    model is not diluted, so an extra cut after "e.g." or "1." costs nothing. Short fragments
    are not joined to their neighbours: a two-word insult ("You idiot.") must stay alone.

    >>> split_sentences("Paris is the capital of France. You idiot! It lies on the Seine.")
    ['Paris is the capital of France.', 'You idiot!', 'It lies on the Seine.']
    >>> split_sentences("Steps:\\n1. Boil the water.\\n\\n2. Add salt.")
    ['Steps:', '1.', 'Boil the water.', '2.', 'Add salt.']
    """
    return [piece.strip() for piece in _SENTENCE_END.split(text) if piece and piece.strip()]


def word_windows(text: str, max_words: int) -> list[str]:
    """`text` as substrings of at most `max_words` white-space words, each starting half a window
    after the previous one, so any run of max_words // 2 words lies whole inside one window.

    >>> word_windows("a b c d e f g", 4)
    ['a b c d', 'c d e f', 'e f g']
    >>> word_windows("a b c", 4)
    ['a b c']
    """
    spans = [m.span() for m in _WORD.finditer(text)]
    if len(spans) <= max_words:
        return [text]
    stride = max(1, max_words // 2)
    windows = []
    for start in range(0, len(spans), stride):
        end = min(start + max_words, len(spans))
        windows.append(text[spans[start][0]: spans[end - 1][1]])
        if end == len(spans):
            break
    return windows


# ------------------------------------------------------------------------------- scripts --
_SCRIPT_ALIASES = {"CJK": "Han"}
_NOT_A_SCRIPT = {"MODIFIER", "COMBINING"}


@functools.lru_cache(maxsize=65536)
def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name ("CYRILLIC SMALL LETTER DE" -> Cyrillic)."""
    try:
        first, _, rest = unicodedata.name(char).partition(" ")
    except ValueError:
        return None
    if first in ("FULLWIDTH", "HALFWIDTH"):
        first = rest.partition(" ")[0]
    if first in _NOT_A_SCRIPT:
        return None
    return _SCRIPT_ALIASES.get(first, first.title())


def unjudged_script(text: str, scripts: frozenset[str] | None) -> str | None:
    """The script a backend reading only `scripts` cannot judge `text` in, or None when it can.

    Unjudged when more than half of the text's letters are outside `scripts`; the most frequent
    such script is named. Texts without letters, and `scripts=None`, are judged.

    >>> unjudged_script("You are an idiot", ENGLISH_SCRIPTS) is None
    True
    >>> unjudged_script("你这个白痴，滚开！", ENGLISH_SCRIPTS), unjudged_script("Ты идиот", ENGLISH_SCRIPTS)
    ('Han', 'Cyrillic')
    >>> unjudged_script("Ты идиот", MULTILINGUAL_SCRIPTS) is None
    True
    >>> unjudged_script("Translate 你好 please", ENGLISH_SCRIPTS) is None  # mostly Latin letters
    True
    """
    if scripts is None or text.isascii():  # ASCII letters are Latin: the common case costs one check
        return None
    counts: Counter[str] = Counter()
    for char in text:
        if char.isalpha():
            script = "Latin" if char.isascii() else _script(char)
            if script is not None:
                counts[script] += 1
    outside = {name: n for name, n in counts.items() if name not in scripts}
    if 2 * sum(outside.values()) <= sum(counts.values()):
        return None
    return max(sorted(outside), key=outside.__getitem__)


# ----------------------------------------------------------------------------- per turn --
@dataclass
class TurnToxicity:
    """One turn's toxicity: the max over its judged windows, and where it came from."""

    score: float | None  # None when no window could be judged
    n_windows: int
    top_window: int | None = None  # index of the highest-scoring window, in reading order
    excerpt: str | None = None  # its first EXCERPT_CHARS characters
    unjudged: Counter = field(default_factory=Counter)  # script -> windows not judged


def turn_windows(text: str, mode: WindowMode) -> list[str]:
    """The pieces a turn is cut into before the backend's own cut (see `score_turns`)."""
    return split_sentences(text) if mode == "sentence" else [text]


def score_turns(texts: list[str], scorer: ToxicityScorer, mode: WindowMode = "sentence") -> list[TurnToxicity]:
    """Per text: max toxicity over its windows, the top window, and the windows left unjudged.

    All windows of all texts go to the backend in one `score` call (it batches them itself).
    """
    cut = getattr(scorer, "windows", None)
    scripts = getattr(scorer, "scripts", None)
    per_text = [turn_windows(text, mode) for text in texts]
    if cut is not None:
        flat = [piece for pieces in per_text for piece in pieces]
        refined = iter(cut(flat))
        per_text = [[w for _ in pieces for w in next(refined)] for pieces in per_text]
    results = [TurnToxicity(score=None, n_windows=len(windows)) for windows in per_text]
    owners: list[tuple[int, int]] = []  # (text, window) of each window sent to the model
    judged: list[str] = []
    for t, windows in enumerate(per_text):
        for w, window in enumerate(windows):
            script = unjudged_script(window, scripts)
            if script is not None:
                results[t].unjudged[script] += 1
            else:
                owners.append((t, w))
                judged.append(window)
    for (t, w), value in zip(owners, scorer.score(judged) if judged else []):
        result = results[t]
        if result.score is None or value > result.score:
            result.score, result.top_window = float(value), w
            result.excerpt = _excerpt(per_text[t][w])
    return results


def _excerpt(text: str) -> str:
    """
    >>> _excerpt("a  b\\nc")
    'a b c'
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


@dataclass
class RoleToxicity:
    """One role's toxicity in one row: the max over all its turns' windows."""

    score: float | None = None
    top: dict | None = None  # {"turn": message index, "window": index in the turn, "of": windows, "excerpt"}
    unjudged: Counter = field(default_factory=Counter)
    n_windows: int = 0

    def add(self, turn: int, result: TurnToxicity) -> None:
        self.n_windows += result.n_windows
        self.unjudged.update(result.unjudged)
        if result.score is not None and (self.score is None or result.score > self.score):
            self.score = result.score
            self.top = {"turn": turn, "window": result.top_window, "of": result.n_windows,
                        "excerpt": result.excerpt}

    def unjudged_detail(self) -> str | None:
        """'script: Han' (every window unjudged) or 'script: Han (2 of 9 windows)'; None if all judged."""
        return describe_unjudged(self.unjudged, self.n_windows) if self.unjudged else None


def describe_unjudged(unjudged: Counter, n_windows: int) -> str:
    """
    >>> describe_unjudged(Counter({"Han": 3}), 3), describe_unjudged(Counter({"Han": 1, "Thai": 1}), 5)
    ('script: Han', 'script: Han, Thai (2 of 5 windows)')
    """
    names = ", ".join(sorted(unjudged))
    n = sum(unjudged.values())
    return f"script: {names}" if n == n_windows else f"script: {names} ({n} of {n_windows} windows)"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


class ProfanityCheckScorer:
    """alt-profanity-check's calibrated linear SVM (predict_prob), trained on English text.

    It has no input limit, but its score is an average over the text's n-grams: one insult in a
    long text is outweighed, so texts are judged PROFANITY_WINDOW_WORDS words at a time.
    """

    scripts = ENGLISH_SCRIPTS

    def __init__(self, scripts: frozenset[str] | None = None) -> None:
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self.name = f"profanity-check@{_version('alt-profanity-check')}"
        if scripts is not None:
            self.scripts = scripts

    def windows(self, texts: list[str]) -> list[list[str]]:
        return [word_windows(text, PROFANITY_WINDOW_WORDS) for text in texts]

    def score(self, texts: list[str]) -> list[float]:
        """Per text, the max over its word windows."""
        if not texts:
            return []
        return _max_over_windows(self.windows(list(texts)), self._score_fitting)

    def _score_fitting(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self._predict_prob(texts)]


def _max_over_windows(per_text: list[list[str]], score: Callable[[list[str]], list[float]]) -> list[float]:
    """Score every window in one call; each text gets the max over its own windows."""
    flat = [window for windows in per_text for window in windows]
    values = iter(score(flat) if flat else [])
    return [max(next(values) for _ in windows) if windows else 0.0 for windows in per_text]


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
