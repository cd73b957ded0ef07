"""Toxicity scorers: text in, probability of toxicity in [0, 1] out.

Two backends behind one protocol (tasks/lib/toxicity_loader.py builds the one a recipe names):
- `profanity-check` (alt-profanity-check): a linear model over word n-grams shipped in its wheel;
  offline, fast, and blind to toxicity without profanity. The offline default.
- `detoxify`: a transformer classifier, from a model type or a pinned checkpoint file
  (tasks/lib/detoxify_scorer.py).

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
from itertools import chain
from typing import Callable, Literal, Protocol

import numpy as np

from sftflow.tasks.lib.gc_pause import gc_paused


class ToxicityScorer(Protocol):
    """What the filter needs of a backend. Optional members are read with getattr:
    `windows(texts) -> list[list[str]]` (each text cut to what the model judges whole; default:
    the text itself), `score_windows(windows) -> list[float]` (scores texts already cut by
    `windows`, without cutting them again; default: `score`) and `scripts` (frozenset of script
    names it reads; default: any script)."""

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
# The same cuts for a text without CJK full stops, where every cut starts at a white-space
# character: written to start with `\s`, so the regex engine skips to white space instead of
# trying four alternatives at every character. Each alternative matches from the same start to
# the end of the white-space run, as the alternatives of _SENTENCE_END do, so the pieces are equal
# (tests/tasks/lib/test_toxicity_windows.py compares the two).
_SENTENCE_END_NO_CJK = re.compile(r"\s(?:(?<=[.!?…][\"'”’)\]]\s)\s*|(?<=[.!?…]\s)\s*|(?<=\n)\s*|\s*\n\s*)")
_WORD = re.compile(r"\S+")
_SPACE_RUN = re.compile(r"(\s+)")


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
    cjk = "。" in text or "！" in text or "？" in text
    pattern = _SENTENCE_END if cjk else _SENTENCE_END_NO_CJK
    return [stripped for stripped in map(str.strip, pattern.split(text)) if stripped]


def word_windows(text: str, max_words: int) -> list[str]:
    """`text` as substrings of at most `max_words` white-space words, each starting half a window
    after the previous one, so any run of max_words // 2 words lies whole inside one window.

    >>> word_windows("a b c d e f g", 4)
    ['a b c d', 'c d e f', 'e f g']
    >>> word_windows("a b c", 4)
    ['a b c']
    """
    # str.split() and `\s+` cut at the same characters (Python's Unicode white space: checked for
    # every code point in tests/tasks/lib/test_toxicity_windows.py), so the words counted here
    # are the `\S+` words a window is made of.
    words = text.split()
    n_words = len(words)
    if n_words <= max_words:
        return [text]
    if " ".join(words) == text:  # single spaces only (the common case): join the words
        parts, separator, step = words, " ", 1
    else:  # words and the white space between them, alternating: a window is a slice of it
        parts, separator, step = _SPACE_RUN.split(text.strip()), "", 2
    stride = max(1, max_words // 2)
    windows = []
    for start in range(0, n_words, stride):
        end = min(start + max_words, n_words)
        windows.append(separator.join(parts[step * start: step * end - (step - 1)]))
        if end == n_words:
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
    with gc_paused():  # hundreds of thousands of acyclic lists: tasks/lib/gc_pause.py
        return _score_turns(texts, scorer, mode)


def _score_turns(texts: list[str], scorer: ToxicityScorer, mode: WindowMode) -> list[TurnToxicity]:
    cut = getattr(scorer, "windows", None)
    # windows cut here are scored as they are: the backend need not cut them again
    score = getattr(scorer, "score_windows", scorer.score) if cut is not None else scorer.score
    scripts = getattr(scorer, "scripts", None)
    pieces = [split_sentences(text) for text in texts] if mode == "sentence" else [[text] for text in texts]
    pieces_per_text = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    flat = list(chain.from_iterable(pieces))
    if cut is not None:
        refined = cut(flat)
        windows_per_piece = np.fromiter(map(len, refined), dtype=np.int64, count=len(refined))
        flat = list(chain.from_iterable(refined))
        # a text's windows: those of its pieces, in order
        piece_window_offsets = np.zeros(len(refined) + 1, dtype=np.int64)
        np.cumsum(windows_per_piece, out=piece_window_offsets[1:])
        piece_offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(pieces_per_text, out=piece_offsets[1:])
        offsets = piece_window_offsets[piece_offsets]
    else:
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(pieces_per_text, out=offsets[1:])
    windows_per_text = np.diff(offsets)
    results = [TurnToxicity(score=None, n_windows=n) for n in windows_per_text.tolist()]
    text_of_window = np.repeat(np.arange(len(texts), dtype=np.int64), windows_per_text)
    # unjudged_script judges every ASCII text: only the other windows are checked.
    unjudged = [] if scripts is None else [
        (i, script) for i, window in enumerate(flat)
        if not window.isascii() and (script := unjudged_script(window, scripts)) is not None]
    for i, script in unjudged:
        results[text_of_window[i]].unjudged[script] += 1
    if unjudged:
        judged_at = np.delete(np.arange(len(flat), dtype=np.int64), [i for i, _ in unjudged])
        judged = [flat[i] for i in judged_at.tolist()]
    else:
        judged_at, judged = np.arange(len(flat), dtype=np.int64), flat
    if not judged:
        return results
    values = score(judged)
    # Per text, the first of its highest-scoring judged windows. The windows are in text order,
    # so each text's judged windows are one contiguous run of `values`.
    owner = text_of_window[judged_at]
    scored_texts, run_starts, run_lengths = np.unique(owner, return_index=True, return_counts=True)
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():  # NaN compares false either way: keep the reading-order comparison
        return _first_max_in_order(results, flat, owner, judged_at, offsets, values)
    maxima = np.maximum.reduceat(array, run_starts)
    at_max = np.flatnonzero(array == np.repeat(maxima, run_lengths))
    top = judged_at[at_max[np.searchsorted(at_max, run_starts)]]
    for t, window, value in zip(scored_texts.tolist(), top.tolist(), maxima.tolist()):
        result = results[t]
        result.score, result.top_window, result.excerpt = value, window - int(offsets[t]), _excerpt(flat[window])
    return results


def _first_max_in_order(results: list[TurnToxicity], flat: list[str], owner, judged_at, offsets,
                        values: list[float]) -> list[TurnToxicity]:
    for t, window, value in zip(owner.tolist(), judged_at.tolist(), values):
        result = results[t]
        if result.score is None or value > result.score:
            result.score, result.top_window = float(value), window - int(offsets[t])
            result.excerpt = _excerpt(flat[window])
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
        if result.unjudged:  # Counter.update is Python code: skipped for the usual empty one
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
        from sftflow.tasks.lib.profanity_model import ProfanityModel

        self._model = ProfanityModel()  # profanity_check.predict_prob, bitwise, in array steps
        self.name = f"profanity-check@{_version('alt-profanity-check')}"
        if scripts is not None:
            self.scripts = scripts

    def windows(self, texts: list[str]) -> list[list[str]]:
        return [word_windows(text, PROFANITY_WINDOW_WORDS) for text in texts]

    def score(self, texts: list[str]) -> list[float]:
        """Per text, the max over its word windows."""
        if not texts:
            return []
        return _max_over_windows(self.windows(list(texts)), self.score_windows)

    def score_windows(self, windows: list[str]) -> list[float]:
        """Per window (at most PROFANITY_WINDOW_WORDS words, as `windows` cuts), its probability."""
        return self._model.predict_prob(list(windows)).tolist()


def _max_over_windows(per_text: list[list[str]], score: Callable[[list[str]], list[float]]) -> list[float]:
    """Score every window in one call; each text gets the max over its own windows."""
    flat = [window for windows in per_text for window in windows]
    values = iter(score(flat) if flat else [])
    return [max(next(values) for _ in windows) if windows else 0.0 for windows in per_text]
