"""The rule-based category classifier: examples per category and the priority order."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sftflow.tasks.lib.categories import AUTO, CATEGORIES, classify_category


def chat(*texts: str, system: str | None = None) -> list[dict[str, str]]:
    """Alternating user/assistant turns from plain strings."""
    roles = ("user", "assistant")
    turns = [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]
    return ([{"role": "system", "content": system}] if system else []) + turns


def test_exports():
    assert CATEGORIES == ("conversation", "qa", "code", "math", "creative")
    assert AUTO == "auto"
    assert AUTO not in CATEGORIES


@pytest.mark.parametrize(
    "messages",
    [
        chat("Write a Python function that reverses a list.", "Use slicing."),
        chat("How do I fix this?", "Try this:\n```\nprint('hi')\n```"),
        chat("Explain this snippet", "def add(a, b):\n    return a + b\n is a function definition."),
        chat("What does SELECT do in SQL?", "It reads rows."),
        chat("Give me a regex that matches an email address.", "^[^@]+@[^@]+$"),
        chat("Write a program that prints the first ten squares.", "Done."),
        chat("Why does my C++ build fail?", "Check the linker flags."),
        chat("What does this print?", "It logs with console.log(x) in the browser."),
        chat("Explain this", "class Stack:\n    pass"),
    ],
)
def test_code(messages):
    assert classify_category(messages) == "code"


@pytest.mark.parametrize(
    "messages",
    [
        chat("What is 12 * 7?", "84"),
        chat("Solve for x: the sum of x and 4 is 10.", "x is 6."),
        chat("Calculate the area of a circle with radius 3.", "About 28.27."),
        chat("What is the derivative of sin(x)?", "cos(x)"),
        chat("What is the probability of rolling two sixes?", "1 in 36."),
        chat("Tom has 5 apples and gives away 2. How many apples are left?", "3."),
        chat("What is 100 - 37?", "63."),
        chat("What is 15 percent of 80?", "12."),
        chat("What is 9 times 8?", "72."),
    ],
)
def test_math(messages):
    assert classify_category(messages) == "math"


@pytest.mark.parametrize(
    "messages",
    [
        chat("Write a poem about the sea.", "Waves roll in..."),
        chat("Compose a haiku about autumn leaves.", "Red leaves fall..."),
        chat("Tell me a bedtime story about a dragon.", "Once upon a time..."),
        chat("Write a short funny limerick about a cat.", "There once was a cat..."),
        chat("Imagine you are a pirate captain and describe your ship.", "Arr..."),
        chat("Describe a fictional city under the ocean.", "Coralia..."),
        chat("Write a song about friendship.", "Verse one..."),
    ],
)
def test_creative(messages):
    assert classify_category(messages) == "creative"


@pytest.mark.parametrize(
    "messages",
    [
        chat("Hi, how are you?", "Fine, and you?", "Good. Any plans for the weekend?", "Reading."),
        chat("I need advice on a gift.", "For whom?", "My sister, she likes hiking.", "A water bottle."),
        chat("Hello!", "Hi!", "Thanks for the help yesterday.", "You're welcome.",
             "Bye.", "Bye!", system="You are friendly."),
    ],
)
def test_conversation(messages):
    assert classify_category(messages) == "conversation"


@pytest.mark.parametrize(
    "messages",
    [
        chat("What is the capital of France?", "Paris."),
        chat("How many planets are in the solar system?", "Eight."),  # trivia: no number asked about
        chat("Who wrote the poem The Raven?", "Edgar Allan Poe."),  # a poem, but no writing request
        chat("Summarize the causes of World War I.", "Alliances, militarism..."),
        chat("Write a summary of the story of Hamlet.", "A prince..."),  # summary, not a story
        chat("Open the window on 2020-2021 reports dated 3/4/2020.", "Done."),  # dates, not arithmetic
    ],
)
def test_qa(messages):
    assert classify_category(messages) == "qa"


def test_python_in_an_answer_is_not_a_code_topic():
    # Topic words count in user turns only: the snake is not code.
    assert classify_category(chat("What is the largest snake?", "The reticulated python.")) == "qa"


def test_answer_words_do_not_make_creative_or_math():
    messages = chat("Why is the sky blue?", "Imagine sunlight scattering; calculate nothing.")
    assert classify_category(messages) == "qa"


def test_system_and_tool_turns_are_not_read():
    messages = [
        {"role": "system", "content": "You are a Python expert. Write a poem when asked."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "```json\n{\"temp\": 3 + 4}\n```"},
        {"role": "assistant", "content": "It is 7 degrees."},
    ]
    assert classify_category(messages) == "qa"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        # code beats math, creative and conversation
        (chat("Write a Python function to compute 3 + 4.", "def f(): return 7"), "code"),
        (chat("Write a poem about a Python class.", "Roses..."), "code"),
        (chat("Hi", "Hello", "Now show me a javascript loop.", "for (...)"), "code"),
        # math beats creative and conversation
        (chat("Write a story where a kid solves 12 * 4.", "Once..."), "math"),
        (chat("Hi", "Hello", "What is 2 + 2?", "4"), "math"),
        # creative beats conversation
        (chat("Hi", "Hello", "Write me a haiku about snow.", "White silence..."), "creative"),
        # conversation beats qa
        (chat("What is the capital of France?", "Paris.", "And of Spain?", "Madrid."), "conversation"),
    ],
)
def test_priority_order(messages, expected):
    assert classify_category(messages) == expected


def test_case_insensitive_and_word_boundaries():
    assert classify_category(chat("WRITE A POEM ABOUT RAIN", "...")) == "creative"
    # whole words only: "calculated" is not "calculate", "sequel" is not "sql"
    assert classify_category(chat("Is the sequel better than the original film?", "Yes.")) == "qa"
    assert classify_category(chat("Why do pilots take calculated risks?", "Training.")) == "qa"


def test_deterministic_and_total():
    messages = chat("Write a poem about the sea.", "Waves.")
    assert {classify_category(messages) for _ in range(5)} == {"creative"}
    assert classify_category([]) == "qa"
    assert classify_category([{"role": "user", "content": None}]) == "qa"


# The fast paths must never change an answer. `fold`, `relaxed` and `re2_form` together make a
# prefilter: it has to match wherever the exact pattern matches, on any text.
_PIECES = ["def f(", "class A:", "```", "function (", "#include <", "from a import b", "console.log(",
           "python", "C++", "c#", "write a function", "code the program", "Java", "SQL", "debugging",
           "regular expression", " ", "\n", "\x0b", "\x1c", "x", "é", "\u212a", "ſ", "\u0130", "\u0131", "\u00a0",
           "\u3000", "\u0663", "DEF g (", "CLASS B extends", "impl", "Solve", "calculation", "square root",
           "prime numbers", "Write a", "tell me", "make up", "poem", "story", "Imagine", "once upon a time",
           "fractions", "Greatest common divisor", "3", "12 * 7", "4 − 2", "3 ÷ 1", "how many", "HOW MUCH",
           "theorem", "MA\u0130N", "pr\u0131me", "ſolve", "\u212aotlin"]
_TEXTS = st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=12).map("".join)


def _rules():
    import sftflow.tasks.lib.categories as c

    return {name: getattr(c, f"{name}_RULE") for name in (
        "CODE_SYNTAX", "CODE_TOPIC", "ARITHMETIC", "MATH_WORDS", "HOW_MANY", "CREATIVE_REQUEST", "CREATIVE_WORDS")}


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
def test_the_relaxed_forms_never_change_a_match(text):
    import pyarrow as pa
    import pyarrow.compute as pc

    from sftflow.tasks.lib.categories import fold

    column = pa.array([text])
    for name, rule in _rules().items():
        exact = rule.pattern.search(text) is not None
        assert rule.search(text, fold(text)) == exact, name
        if exact:  # the prefilters: Python's relaxed pattern on the folded text, RE2's on the text
            assert rule.relaxed.search(fold(text)), name
            assert pc.match_substring_regex(column, rule.re2, ignore_case=True)[0].as_py(), name


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40) | _TEXTS.filter(str.isascii))
@example("0+S").via("a digit class once took an ASCII s for the long s")
@example("1 + k").via("and a k for the Kelvin sign")
def test_on_ascii_text_the_re2_form_is_the_relaxed_pattern(text):
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, rule in _rules().items():
        re2 = pc.match_substring_regex(pa.array([text]), rule.re2, ignore_case=True)[0].as_py()
        assert re2 == (rule.relaxed.search(text.lower()) is not None), name


def test_the_relaxed_forms_only_drop_conditions():
    """Every pattern's letters are lowercase (the folded text is), no character class holds an "i"
    (re2_form spells out each "i"), and relaxing only removes \\b and lookarounds."""
    import re

    for name, rule in _rules().items():
        literal_text = re.sub(r"\\.", "", rule.pattern.pattern)
        assert literal_text == literal_text.lower(), name
        assert not any("i" in group for group in re.findall(r"\[[^\]]*\]", rule.pattern.pattern)), name
        assert rule.relaxed.pattern == re.sub(r"\\b|\(\?<!\\w\)|\(\?!\\w\)", "", rule.pattern.pattern), name


def test_fold_maps_what_ignorecase_matches_and_keeps_classes():
    """Over every code point: fold keeps one character, maps each character an ASCII letter matches
    ignoring case to that letter, and keeps word, digit and space characters what they are."""
    import re
    import sys

    from sftflow.tasks.lib.categories import fold

    letter = re.compile("[a-z]", re.IGNORECASE)
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        folded = fold(char)
        assert len(folded) == 1, hex(code)
        if letter.fullmatch(char):
            assert re.fullmatch(folded, char, re.IGNORECASE) and "a" <= folded <= "z", hex(code)
        else:
            assert not "a" <= folded <= "z", hex(code)
        assert (folded.isalnum() or folded == "_") == (char.isalnum() or char == "_"), hex(code)
        assert folded.isdecimal() == char.isdecimal() and folded.isspace() == char.isspace(), hex(code)


def test_python_classes_are_the_string_methods():
    """What the fold test checks with str methods is what re's \\w, \\d and \\s mean."""
    import re

    for code in list(range(0x3000)) + [0x1680, 0x2028, 0x3000, 0xFF10, 0x1D7CE, 0x10FFFF]:
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        assert bool(re.match(r"\w", char)) == (char.isalnum() or char == "_")
        assert bool(re.match(r"\d", char)) == char.isdecimal()
        assert bool(re.match(r"\s", char)) == char.isspace()


def _conversation(draw_texts, roles):
    return [{"role": role, "content": text} for role, text in zip(roles, draw_texts)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool", None]),
                                   _TEXTS | st.none()), max_size=5), max_size=8))
def test_classify_conversations_equals_classify_category(conversations):
    import numpy as np
    import pyarrow as pa

    from sftflow.tasks.lib.categories import classify_conversations

    messages = [[{"role": role, "content": text} for role, text in turns] for turns in conversations]
    # An extra turn that belongs to no conversation (-1) must not change anything.
    roles = pa.array([m["role"] for turns in messages for m in turns] + ["user"], pa.string())
    texts = pa.array([m["content"] for turns in messages for m in turns] + ["def f(x): write a poem"], pa.string())
    conversation = np.array([i for i, turns in enumerate(messages) for _ in turns] + [-1])
    expected = [classify_category(turns) for turns in messages]
    assert classify_conversations(roles, texts, conversation, len(messages)) == expected
