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


# Literals without which a pattern cannot match: every alternative of the pattern contains one. Why: scanning a long answer with a case-insensitive alternation
# costs ~100x a substring test, and most texts contain none of these. Only ASCII texts are
# prefiltered: there, IGNORECASE matches exactly what `lower()` finds; non-ASCII texts (where
# Unicode case folding has exceptions such as the Kelvin sign) always go to the regex.
CODE_SYNTAX_LITERALS = ("```", "def", "class", "function", "#include", "import", "console.log")
CODE_TOPIC_LITERALS = ("python", "java", "kotlin", "php", "golang", "haskell", "bash", "html", "css", "json",
                       "sql", "regex", "regular", "numpy", "program", "source", "compiler", "debug", "script",
                       "c++", "c#", "function", "method", "class")
MATH_WORDS_LITERALS = ("solve", "calculat", "comput", "equation", "integra", "derivative", "differentiate",
                       "probability", "percent", "arithmetic", "algebra", "geometry", "trigonometry", "theorem",
                       "factorial", "square", "prime", "fraction", "greatest", "least")
CREATIVE_REQUEST_LITERALS = ("write", "compose", "create", "tell", "make", "invent")
CREATIVE_WORDS_LITERALS = ("imagine", "fictional", "creative", "once")


def _texts(messages: Iterable[dict[str, Any]], roles: tuple[str, ...]) -> list[str]:
    return [m.get("content") or "" for m in messages if m.get("role") in roles]


def _any(pattern: re.Pattern[str], texts: list[str]) -> bool:
    return any(pattern.search(text) for text in texts)


def _any_prefiltered(pattern: re.Pattern[str], literals: tuple[str, ...], texts: list[str]) -> bool:
    """`_any(pattern, texts)`, skipping the regex on ASCII texts that hold none of `literals`."""
    for text in texts:
        if text.isascii():
            lowered = text.lower()
            if not any(literal in lowered for literal in literals):
                continue
        if pattern.search(text):
            return True
    return False


def is_code(user: list[str], user_and_assistant: list[str]) -> bool:
    return (_any_prefiltered(CODE_SYNTAX, CODE_SYNTAX_LITERALS, user_and_assistant)
            or _any_prefiltered(CODE_TOPIC, CODE_TOPIC_LITERALS, user))


def is_math(user: list[str]) -> bool:
    if _any(ARITHMETIC, user) or _any_prefiltered(MATH_WORDS, MATH_WORDS_LITERALS, user):
        return True
    return any(HOW_MANY.search(text) and DIGIT.search(text) for text in user)


def is_creative(user: list[str]) -> bool:
    return (_any_prefiltered(CREATIVE_REQUEST, CREATIVE_REQUEST_LITERALS, user)
            or _any_prefiltered(CREATIVE_WORDS, CREATIVE_WORDS_LITERALS, user))


def classify_category(messages: list[dict[str, Any]]) -> str:
    """The mixing category of one conversation, by the rules in this module's docstring.

    >>> classify_category([{"role": "user", "content": "Write a haiku about rain."},
    ...                    {"role": "assistant", "content": "Soft rain on the roof"}])
    'creative'
    >>> classify_category([{"role": "user", "content": "What is 12 * 7?"},
    ...                    {"role": "assistant", "content": "84"}])
    'math'
    """
    user = _texts(messages, ("user",))
    user_and_assistant = _texts(messages, ("user", "assistant"))
    if is_code(user, user_and_assistant):
        return "code"
    if is_math(user):
        return "math"
    if is_creative(user):
        return "creative"
    if len(user) >= 2:
        return "conversation"
    return "qa"
