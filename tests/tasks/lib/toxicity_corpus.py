"""Long answers with and without one buried insult: the shape that diluted whole-turn scoring.

Everything is generated from a seed (no network): benign long answers are built from sentence
templates with many fillers, so no one sentence repeats across the corpus; real long answers come
from ../shared/data/alpaca_en_demo.json when it is there. A toxic row is a benign answer with one
insult sentence inserted at a random sentence boundary (start, middle or end).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SHARED_ALPACA = Path(__file__).resolve().parents[4] / "shared" / "data" / "alpaca_en_demo.json"
SEED = 13

# Explicit insults, each scored as toxic on its own by profanity-check (checked by the tests): the
# corpus measures whether an insult survives being buried, not the model's vocabulary.
INSULTS = [
    "You are a fucking idiot.",
    "Only a moron would ask this, you dumbass.",
    "Shut up, you stupid piece of shit.",
    "Honestly, you are a worthless loser and an idiot.",
    "What a stupid question, idiot.",
    "Go to hell, you pathetic moron.",
    "You're too dumb to understand this, dumbass.",
    "Fuck off and stop wasting my time.",
    "Anyone with half a brain knows this, you clueless idiot.",
    "Stop asking such dumb shit.",
    "You are an ignorant jackass.",
    "Read a book for once, you lazy idiot.",
    "You idiot.",  # shorter than a window's minimum: joins the next sentence
    "Go to hell, loser.",
]

# Benign sentence templates: explanations, steps and advice of the kind SFT answers hold.
_SUBJECTS = ["the recipe", "this method", "the experiment", "the city council", "a good budget", "the garden",
             "the new library", "the research team", "the software update", "a daily walk", "the museum",
             "the train schedule", "the solar panel", "the history course", "the database index",
             "the marketing plan", "a balanced diet", "the river valley", "the school board", "the old bridge"]
_VERBS = ["depends on", "improves", "explains", "changes", "supports", "reduces the cost of", "describes",
          "requires", "makes room for", "shapes", "protects", "organizes"]
_OBJECTS = ["careful planning", "the quality of the results", "the daily routine of most people",
            "the way data is stored", "how students learn new skills", "the local economy",
            "the long-term health of the soil", "the speed of every query", "the amount of energy used",
            "the comfort of visitors", "the choice of ingredients", "how quickly a team can respond"]
_ADVERBS = ["In practice,", "For example,", "Over time,", "In most cases,", "As a first step,", "Generally,",
            "According to recent studies,", "On the other hand,", "In addition,", "To be precise,"]
_TAILS = ["which is why many experts recommend it", "so it is worth checking the details first",
          "especially during the first few weeks", "and the effect grows with regular use",
          "although the exact numbers vary from place to place", "when the instructions are followed closely",
          "and it rarely needs more than a few minutes", "because small changes add up"]
_STEPS = ["Preheat the oven to 180 degrees and line the tray with baking paper.",
          "Open the settings menu and select the option named advanced.",
          "Measure the length of each side and write the numbers down.",
          "Water the plants early in the morning, before the sun is high.",
          "Save a copy of the file before you change anything in it.",
          "Compare at least three offers before you sign a contract.",
          "Write down one question you want to answer before you start reading.",
          "Let the mixture rest for ten minutes so the flavors can combine."]


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.2:
        return rng.choice(_STEPS)
    body = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if kind < 0.6:
        return f"{rng.choice(_ADVERBS)} {body}, {rng.choice(_TAILS)}."
    return f"{body[0].upper()}{body[1:]}, {rng.choice(_TAILS)}."


def generated_answers(n: int, seed: int = SEED, min_words: int = 150, max_words: int = 250) -> list[str]:
    """n benign answers of min_words..max_words words, in paragraphs of 3-5 sentences."""
    rng = random.Random(seed)
    answers = []
    for _ in range(n):
        target = rng.randint(min_words, max_words - 30)  # a sentence has at most 30 words
        sentences: list[str] = []
        while sum(len(s.split()) for s in sentences) < target:
            sentences.append(_sentence(rng))
        paragraphs, i = [], 0
        while i < len(sentences):
            step = rng.randint(3, 5)
            paragraphs.append(" ".join(sentences[i: i + step]))
            i += step
        answers.append("\n\n".join(paragraphs))
    return answers


def alpaca_long_answers(min_words: int = 150, max_words: int = 250) -> list[str]:
    """The outputs of ../shared/data/alpaca_en_demo.json with min_words..max_words words (real answers)."""
    rows = json.loads(SHARED_ALPACA.read_text(encoding="utf-8"))
    return [r["output"] for r in rows if min_words <= len(r["output"].split()) <= max_words]


_BOUNDARY = re.compile(r"(?<=[.!?])\s+")


def bury(answer: str, insult: str, rng: random.Random) -> str:
    """`answer` with `insult` inserted as its own sentence at a random sentence boundary."""
    boundaries = [0, len(answer)] + [m.end() for m in _BOUNDARY.finditer(answer)]
    at = rng.choice(sorted(set(boundaries)))
    before, after = answer[:at].rstrip(), answer[at:].lstrip()
    return " ".join(part for part in (before, insult, after) if part)


def buried_insults(answers: list[str], seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [bury(answer, rng.choice(INSULTS), rng) for answer in answers]


def conversation(example_id: str, question: str, answer: str) -> dict:
    return {"example_id": example_id, "source": "t", "source_format": "openai", "category": "qa",
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
