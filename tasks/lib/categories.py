"""Rule-based mixing category of a conversation: conversation, qa, code, math or creative.

A source with `category: auto` gets its rows classified here; a source with a fixed category
keeps it (see tasks/normalize.py). The rules are deliberately simple regexes, so that a user can
predict the category of a row by reading this file, and a test can pin every rule down.

Rules, in priority order (the first that fires wins):

1. code      a code fence (```) or code syntax (`def f(`, `class Foo:`, `function(`,
             `#include <`, `from x import y`, `console.log(`) in a user or assistant turn, or a
             programming topic in a user turn (a language name, SQL, regex, "write a function /
             program / script").
2. math      in a user turn: an arithmetic expression between digits (`12 * 7`, `3 + 4 = 7`,
             `10 - 4`, `2 to the power`), a math word (solve, calculate, equation, integral,
             derivative, probability, percent, algebra, ...), or a word problem ("how many" /
             "how much" together with a number).
3. creative  in a user turn: a request to write a poem/story/haiku/song/limerick/... ("write",
             "compose", "tell me" within a few words of the noun), or imagine / fictional /
             creative.
4. conversation  two or more user turns (a multi-turn chat on no more specific topic).
5. qa        everything else: a single question or instruction and its answer.

Why the order: a request can match several rules ("write a poem about a python function"), and
the more specific skill wins. Code is first because its markers are the least ambiguous; math
before creative because a story problem with numbers teaches arithmetic, not prose;
conversation is a fallback for multi-turn chats because a specific skill is more useful for
mixing than "it has several turns".

Why user turns only for the topic rules: the user's request defines the task, while answers
mention words like "imagine", "calculate" or "python" (the snake) while explaining anything.
Code syntax is the exception: a fenced block or a `def f(` in an answer is code whatever was
asked. System prompts describe the assistant, not the task, and tool output is data: neither is
read. Every match is case-insensitive and bounded by word boundaries.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CATEGORIES = ("conversation", "qa", "code", "math", "creative")
AUTO = "auto"  # the recipe value that asks for this classifier instead of a fixed category

_FLAGS = re.IGNORECASE

# --- 1. code ------------------------------------------------------------------------------------
# Syntax that is code wherever it appears (user or assistant turns).
CODE_SYNTAX = re.compile(
    r"```"  # a fenced code block
    r"|\bdef\s+\w+\s*\("  # Python function definition
    r"|\bclass\s+\w+\s*(?:\(|:|\{|\bextends\b)"  # class definitions (Python, Java, JS)
    r"|\bfunction\s*\w*\s*\("  # JavaScript function
    r"|#include\s*[<\"]"  # C/C++
    r"|\bfrom\s+[\w.]+\s+import\s+\w+"  # Python import
    r"|\bconsole\.log\s*\(",  # JavaScript output
    _FLAGS,
)
# Programming topics, read in user turns only ("python" in an answer may be the snake).
CODE_TOPIC = re.compile(
    r"\b(?:python|javascript|typescript|java|kotlin|php|golang|haskell|bash|html|css|json|sql"
    r"|regex|regexp|regular\s+expressions?|numpy|programming|source\s+code|compiler|debug\w*"
    r"|shell\s+script)\b"
    r"|(?<!\w)(?:c\+\+|c#)(?!\w)"  # \b does not work around "+" and "#"
    r"|\b(?:write|implement|create|code)\s+(?:a|an|the)\s+(?:program|script|function|method|class)\b",
    _FLAGS,
)

# --- 2. math ------------------------------------------------------------------------------------
# "+ * × ÷ ^ =" between digits are arithmetic; "-" and "/" only when spaced, because unspaced they
# are mostly dates, ranges and phone numbers ("2020-2021", "3/4/2020", "24/7").
ARITHMETIC = re.compile(
    r"\d\s*[+*×÷^=]\s*\(?-?\d"
    r"|\d\s+[-/−]\s+\(?\d"
    r"|\d\s+(?:plus|minus|times|divided\s+by|multiplied\s+by|to\s+the\s+power)\b",
    _FLAGS,
)
MATH_WORDS = re.compile(
    r"\b(?:solve|calculate|calculation|compute|equations?|integral|integrate|derivative"
    r"|differentiate|probability|percent|percentage|arithmetic|algebra\w*|geometry|trigonometry"
    r"|theorem|factorial|square\s+root|prime\s+numbers?|fractions?|greatest\s+common\s+divisor"
    r"|least\s+common\s+multiple)\b",
    _FLAGS,
)
# "How many planets are there?" is trivia; "Tom has 5 apples ... how many are left?" is a word
# problem: the number in the same turn tells them apart.
HOW_MANY = re.compile(r"\bhow\s+(?:many|much)\b", _FLAGS)
DIGIT = re.compile(r"\d")

# --- 3. creative --------------------------------------------------------------------------------
# A writing verb within three words of a creative form: "write a short funny poem", "tell me a
# story". The window keeps "write a summary of the story" (four words apart) out.
CREATIVE_FORMS = (
    r"poems?|poetry|stor(?:y|ies)|haiku|songs?|lyrics|limericks?|sonnets?|fables?"
    r"|fairy\s+tales?|verses?|rap|screenplay"
)
CREATIVE_REQUEST = re.compile(
    rf"\b(?:write|compose|create|tell|make\s+up|invent)\b(?:\W+\w+){{0,3}}?\W+(?:{CREATIVE_FORMS})\b",
    _FLAGS,
)
CREATIVE_WORDS = re.compile(r"\b(?:imagine|fictional|creative|creatively|once\s+upon\s+a\s+time)\b", _FLAGS)


# Why a second, relaxed form of each pattern: a case-insensitive alternation whose branches start
# with \b is tried at every position of the text (~100x a plain scan on a long answer), while the
# same alternation without \b or lookarounds, searched case-sensitively in the folded text, is
# skipped through much faster. The relaxed form matches wherever the exact one does (it only drops
# conditions, and `fold` maps every character that one of the patterns' lowercase letters matches,
# ignoring case, to that letter), so a text it does not match cannot match the exact pattern; where
# it matches, the exact pattern decides, searched from the relaxed match's start (an exact match
# starts where a relaxed one does, never before the first; \b and lookbehinds still see the text
# before that position).
def relaxed(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """`pattern` without word boundaries and lookarounds, case-sensitive (for `fold`ed text)."""
    source = pattern.pattern.replace(r"\b", "").replace(r"(?<!\w)", "").replace(r"(?!\w)", "")
    return re.compile(source)


# The characters besides A-Z that an ASCII letter matches ignoring case (re.IGNORECASE follows
# Unicode simple case folding): dotted and dotless i, long s and the Kelvin sign. str.lower maps
# the Kelvin sign to "k" but keeps the dotless i and long s and turns the dotted I into two
# characters ("i" and a combining dot), so these three are replaced first.
_FOLD_FIRST = (("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"))


def fold(text: str) -> str:
    """The text lowercased character for character (same length, same positions), such that every
    character an ASCII letter matches ignoring case becomes that letter, while word, digit and
    space characters stay what they are (tests/tasks/lib/test_categories.py checks every code
    point). On ASCII text it is `str.lower`.

    >>> fold("Write \u017fome DEF\u212a")
    'write some defk'
    """
    if not text.isascii():
        for special, letter in _FOLD_FIRST:
            if special in text:
                text = text.replace(special, letter)
    return text.lower()


# What a relaxed pattern becomes for RE2 (Arrow's regex engine, which runs over a whole column in
# C++), searched ignoring case in the unfolded text: a pattern matching wherever the relaxed one
# matches the folded text, and exactly there on ASCII text. Python's classes are spelled out on
# ASCII (RE2's \s lacks \x0b and \x1c-\x1f) and take in every non-ASCII character, a superset of
# Python's Unicode classes whatever the Unicode version; "i" also takes the dotted and dotless i,
# which Python's case folding matches and RE2's does not (RE2 folds the long s and Kelvin sign
# itself). The class inside [\w.] is replaced first. The non-ASCII range leaves out the long s
# (U+017F) and the Kelvin sign (U+212A): ignoring case, RE2 would take them as "s" and "k" and a
# digit or space class would match those ASCII letters (a class with letters still takes them).
_NON_ASCII = r"\x{80}-\x{17E}\x{180}-\x{2129}\x{212B}-\x{10FFFF}"
RE2_CLASSES = ((r"[\w.]", f"[0-9A-Za-z_.{_NON_ASCII}]"), (r"\s", rf"[\t-\r\x1c-\x1f {_NON_ASCII}]"),
               (r"\w", f"[0-9A-Za-z_{_NON_ASCII}]"), (r"\W", "[^0-9A-Za-z_]"), (r"\d", f"[0-9{_NON_ASCII}]"))


def re2_form(pattern: re.Pattern[str]) -> str:
    """The relaxed form of `pattern` in RE2 syntax, to search ignoring case (see RE2_CLASSES)."""
    source = relaxed(pattern).pattern.replace("i", "[i\u0130\u0131]")  # no class or escape holds an "i"
    for python, spelled_out in RE2_CLASSES:
        source = source.replace(python, spelled_out)
    return source


class Rule:
    """One pattern and its relaxed forms: `rule.search(text, fold(text))` is
    `bool(pattern.search(text))`, at a fraction of the cost."""

    def __init__(self, pattern: re.Pattern[str]):
        self.pattern = pattern
        self.relaxed = relaxed(pattern)
        self.re2 = re2_form(pattern)

    def search(self, text: str, folded: str) -> bool:
        candidate = self.relaxed.search(folded)
        return candidate is not None and self.pattern.search(text, candidate.start()) is not None

    def any(self, texts: list[str], folded: list[str]) -> bool:
        return any(self.search(text, low) for text, low in zip(texts, folded))


CODE_SYNTAX_RULE = Rule(CODE_SYNTAX)
CODE_TOPIC_RULE = Rule(CODE_TOPIC)
ARITHMETIC_RULE = Rule(ARITHMETIC)
MATH_WORDS_RULE = Rule(MATH_WORDS)
HOW_MANY_RULE = Rule(HOW_MANY)
CREATIVE_REQUEST_RULE = Rule(CREATIVE_REQUEST)
CREATIVE_WORDS_RULE = Rule(CREATIVE_WORDS)


def _texts(messages: Iterable[dict[str, Any]], roles: tuple[str, ...]) -> list[str]:
    return [m.get("content") or "" for m in messages if m.get("role") in roles]


def classify_category(messages: list[dict[str, Any]]) -> str:
    """The mixing category of one conversation, by the rules in this module's docstring.

    >>> classify_category([{"role": "user", "content": "Write a haiku about rain."},
    ...                    {"role": "assistant", "content": "Soft rain on the roof"}])
    'creative'
    >>> classify_category([{"role": "user", "content": "What is 12 * 7?"},
    ...                    {"role": "assistant", "content": "84"}])
    'math'
    """
    user, assistant = _texts(messages, ("user",)), _texts(messages, ("assistant",))
    user_folded = [fold(text) for text in user]
    if (CODE_SYNTAX_RULE.any(user, user_folded) or CODE_SYNTAX_RULE.any(assistant, [fold(t) for t in assistant])
            or CODE_TOPIC_RULE.any(user, user_folded)):
        return "code"
    if (ARITHMETIC_RULE.any(user, user_folded) or MATH_WORDS_RULE.any(user, user_folded)
            or any(HOW_MANY_RULE.search(t, low) and DIGIT.search(t) for t, low in zip(user, user_folded))):
        return "math"
    if CREATIVE_REQUEST_RULE.any(user, user_folded) or CREATIVE_WORDS_RULE.any(user, user_folded):
        return "creative"
    if len(user) >= 2:
        return "conversation"
    return "qa"


def classify_conversations(roles: pa.Array, texts: pa.Array, conversation: np.ndarray, n_conversations: int) -> list[str]:
    """classify_category of each of `n_conversations` conversations given as flat turns: turn i
    has role roles[i] and text texts[i] and belongs to conversation conversation[i] (-1: to none,
    the turn is not read; so a column of many rows' turns needs no copy to classify some of them).

    The same answers, a column at a time: each rule's relaxed pattern is searched over the whole
    column by Arrow (re2_form: it matches wherever the relaxed pattern does), and only the texts
    it matches are searched by Rule.search. A conversation is not searched by the rules after the
    one that decided it.
    """
    if not n_conversations:
        return []
    texts = pc.fill_null(texts, "")  # as classify_category reads a null text
    is_user = _mask(pc.equal(roles, "user")) & (conversation >= 0)
    read = (is_user | _mask(pc.equal(roles, "assistant"))) & (conversation >= 0)
    user_turns = np.flatnonzero(is_user)
    every_turn = (texts, conversation, read)
    user = (texts.take(pa.array(user_turns)), conversation[user_turns], np.ones(len(user_turns), dtype=bool))
    decided = np.zeros(n_conversations, dtype=bool)

    def matches(rule: Rule, turns: tuple[pa.Array, np.ndarray, np.ndarray]) -> np.ndarray:
        """Per conversation: whether one of `turns` (texts, conversation, read) matches the rule."""
        texts, conversation, read = turns
        candidates = _mask(pc.match_substring_regex(texts, rule.re2, ignore_case=True)) & read
        index = np.flatnonzero(candidates & ~decided[conversation])
        found = np.zeros(n_conversations, dtype=bool)
        if len(index):
            hit = np.fromiter((rule.search(text, fold(text)) and (rule is not HOW_MANY_RULE or DIGIT.search(text))
                               for text in texts.take(pa.array(index)).to_pylist()), dtype=bool, count=len(index))
            found[conversation[index[hit]]] = True
        decided[found] = True
        return found

    code = matches(CODE_SYNTAX_RULE, every_turn) | matches(CODE_TOPIC_RULE, user)
    math = matches(ARITHMETIC_RULE, user) | matches(MATH_WORDS_RULE, user) | matches(HOW_MANY_RULE, user)
    creative = matches(CREATIVE_REQUEST_RULE, user) | matches(CREATIVE_WORDS_RULE, user)
    several_users = np.bincount(user[1], minlength=n_conversations) >= 2
    return np.select([code, math, creative, several_users], ["code", "math", "creative", "conversation"],
                     "qa").tolist()


def _mask(values: pa.Array) -> np.ndarray:
    """A boolean array as numpy, null as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)
