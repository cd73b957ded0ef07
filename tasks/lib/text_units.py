"""Text units for shingling: the "words" that near-dedup and decontamination build n-grams from.

Scripts written with spaces between words (Latin, Cyrillic, Greek, Arabic, Devanagari, ...) give
one unit per lowercase `\\w+` run, so punctuation, case and whitespace never hide a copy. Scripts
written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar, Tibetan) give one
unit per character: `\\w+` would turn a whole Chinese clause into one "word", so a row of a few
clauses would have no 5-gram at all, and two clauses differing by one character would share
none. Character units are what MinHash dedup of such text commonly uses when no word segmenter
(jieba, MeCab, pythainlp) is at hand; a segmenter would need a model per language, and
characters are exact for the one question asked here (are two texts nearly the same).

Hangul is written with spaces, so Korean stays word-based.

>>> text_units("Hello, WORLD! it's 42")
['hello', 'world', 'it', 's', '42']
>>> text_units("请写一首诗。Write a poem")
['请', '写', '一', '首', '诗', 'write', 'a', 'poem']
>>> text_units("ภาษาไทย ok")
['ภ', 'า', 'ษ', 'า', 'ไ', 'ท', 'ย', 'ok']
"""

from __future__ import annotations

import re

# One character each: CJK ideographs (with extension A, compatibility ideographs and the
# supplementary planes), kana, and the Southeast Asian and Tibetan scripts written without
# spaces. Thai/Lao/Khmer/Myanmar/Tibetan vowel signs and tone marks are not \w but are kept as
# units: they distinguish words there.
_UNSPACED = (
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0003134f"  # CJK extensions B-G
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
)
# one unspaced character, or a run of word characters outside those scripts
_UNIT = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+")
_UNSPACED_CHAR = re.compile(rf"[{_UNSPACED}]")
_WORD = re.compile(r"\w+")


def text_units(text: str) -> list[str]:
    """Lowercase word units of `text`; one unit per character in scripts without spaces."""
    lowered = text.lower()
    if _UNSPACED_CHAR.search(lowered) is None:  # most text: plain \w+ runs, about twice as fast
        return _WORD.findall(lowered)
    return _UNIT.findall(lowered)


def has_unspaced_script(text: str) -> bool:
    """True when `text` holds a character of a script written without spaces.

    >>> has_unspaced_script("plain English"), has_unspaced_script("日本語")
    (False, True)
    """
    return _UNSPACED_CHAR.search(text) is not None


def unspaced_char_count(text: str) -> int:
    """How many characters of `text` belong to scripts written without spaces: each is one unit.

    >>> unspaced_char_count("请写一首诗。Write a poem"), unspaced_char_count("plain")
    (5, 0)
    """
    if _UNSPACED_CHAR.search(text) is None:  # the common case: one scan, nothing allocated
        return 0
    return len(_UNSPACED_CHAR.findall(text))
