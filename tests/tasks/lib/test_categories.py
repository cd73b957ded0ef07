"""The rule-based category classifier: examples per category and the priority order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
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


# The literal prefilter must never change an answer: on any text, prefiltered == plain regex.
_PIECES = ["def f(", "class A:", "```", "function (", "#include <", "from a import b", "console.log(",
           "python", "C++", "c#", "write a function", "code the program", "Java", "SQL", "debugging",
           "regular expression", " ", "\n", "x", "é", "\u212a", "ſ", "DEF g (", "CLASS B extends", "impl",
           "Solve", "calculation", "square root", "prime numbers", "Write a", "tell me", "make up", "poem",
           "story", "Imagine", "once upon a time", "fractions", "Greatest common divisor", "3", "theorem"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=12).map("".join))
def test_the_literal_prefilters_never_change_a_match(text):
    import sftflow.tasks.lib.categories as c

    for name in ("CODE_SYNTAX", "CODE_TOPIC", "MATH_WORDS", "CREATIVE_REQUEST", "CREATIVE_WORDS"):
        pattern, literals = getattr(c, name), getattr(c, f"{name}_LITERALS")
        assert c._any_prefiltered(pattern, literals, [text]) == bool(pattern.search(text)), name
