"""Write the project's sample datasets (data/samples/) from the text banks in sample_texts.py.

    python data/samples/make_samples.py [--out DIR]      # default DIR: this script's folder

Writes alpaca.json, sharegpt.jsonl, openai.jsonl (about 390 rows in five categories, with planted
duplicates, short, toxic, contaminated and malformed rows), eval/heldout_prompts.jsonl,
general_text.jsonl and PLANTED.md (every planted row with its locator and expected outcome).
The files are committed; this script documents how they were made. Stdlib only and
deterministic: one random.Random(SEED) drives every choice, so a re-run is byte-identical
(tests/test_samples.py checks that).

Locators follow ingest: `index N` is the 0-based element of the alpaca JSON array, `line N` the
1-based line of a JSON Lines file.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # sample_texts.py lives next to this script

import sample_texts as texts  # noqa: E402

SEED = 0
CATEGORIES = ("conversation", "qa", "code", "math", "creative")
SYSTEM_PROMPT_SHARE = 0.10
NEAR_DUP_MIN_JACCARD = 0.87  # planted near duplicates must clear the demo threshold (0.8) with margin
WORD = re.compile(r"\w+")  # the dedup and decontamination stages' word definition


# ------------------------------------------------------------------------------ data model --
@dataclass
class Convo:
    """One conversation as normalize should see it: (role, text) turns.

    Roles are system | user | assistant | tool, plus `call` for a ShareGPT function_call turn
    (an assistant turn holding the call text). `fmt` pins the file a row goes to; `style` holds
    per-format choices (alpaca instruction/input split, OpenAI developer role or text parts).
    """

    category: str
    turns: list[tuple[str, str]]
    fmt: str | None = None
    style: dict[str, Any] = field(default_factory=dict)
    tools: str | None = None  # ShareGPT `tools` field of tool-calling rows

    def messages(self) -> list[dict[str, str]]:
        role_of = {"call": "assistant"}
        return [{"role": role_of.get(role, role), "content": text} for role, text in self.turns]

    def user_turns(self) -> int:
        return sum(1 for role, _ in self.turns if role == "user")


@dataclass
class Row:
    """One row of one output file: the JSON value written (or a raw line) and what it plants."""

    fmt: str
    payload: Any
    convo: Convo | None = None  # what the row normalizes to; None when it must not survive
    raw_line: str | None = None  # a JSONL line written verbatim (invalid JSON)
    case: str = "clean"  # clean | exact_duplicate | near_duplicate | too_short | toxic | ...
    what: str = ""
    expected: str = ""
    ref: "Row | None" = None  # the row this one duplicates
    locator: str = ""


# -------------------------------------------------------------------------------- helpers --
def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def shingles(text: str, n: int = 5) -> set[str]:
    tokens = words(text)
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def convo_text(convo: Convo) -> str:
    """All turns joined, as the dedup stage shingles them."""
    return "\n".join(text for _, text in convo.turns)


def money(amount: float | Fraction) -> str:
    return f"${float(amount):,.2f}"


def number(value: float | Fraction, places: int = 2) -> str:
    """A number without a pointless '.0'; rounded to `places` otherwise."""
    value = float(value)
    if abs(value - round(value)) < 1e-9:
        return f"{int(round(value)):,}"
    return f"{value:,.{places}f}".rstrip("0").rstrip(".")


def sentence_start(text: str) -> str:
    """Lowercase a tip's first letter so it can follow "First, " (not for 'I' or acronyms)."""
    first = text.split(" ", 1)[0]
    if first == "I" or len(first) > 1 and first[1].isupper():
        return text
    return text[0].lower() + text[1:]


# ---------------------------------------------------------------------------- conversation --
ADVICE_INTROS = [
    "Here are a few things that usually help:",
    "That is a very common problem, and it is fixable. I would start here:",
    "Good question. A few changes make a big difference:",
    "Some practical ideas to try:",
    "You are not alone in this. Consider these steps:",
]
ADVICE_CLOSINGS = [
    "Give it a couple of weeks before judging the results.",
    "Small, steady changes tend to stick better than a big overhaul.",
    "Pick one of these to start with rather than all of them at once.",
    "Let me know how it goes and we can adjust from there.",
]


def advice_answer(tips: list[str], rng: random.Random) -> str:
    style = rng.choice(["numbered", "bullets", "prose"])
    if style == "numbered":
        body = "\n".join(f"{i}. {tip}" for i, tip in enumerate(tips, 1))
    elif style == "bullets":
        body = "\n".join(f"- {tip}" for tip in tips)
    else:
        lead = ["First, ", "Next, ", "Finally, "]
        body = " ".join(lead[i] + sentence_start(tip) for i, tip in enumerate(tips))
    answer = f"{rng.choice(ADVICE_INTROS)}\n\n{body}"
    if rng.random() < 0.5:
        answer += f"\n\n{rng.choice(ADVICE_CLOSINGS)}"
    return answer


def conversation_convos(rng: random.Random) -> list[Convo]:
    convos = []
    for topic in texts.ADVICE:
        for half in range(2):
            question, reply = topic["followups"][half]
            turns = [
                ("user", topic["openers"][half]),
                ("assistant", advice_answer(topic["tips"][3 * half : 3 * half + 3], rng)),
                ("user", question),
                ("assistant", reply),
            ]
            convos.append(Convo("conversation", turns))
    for opener, reply, followup, reply2 in texts.CHITCHAT:
        turns = [("user", opener), ("assistant", reply), ("user", followup), ("assistant", reply2)]
        convos.append(Convo("conversation", turns))
    return convos


# -------------------------------------------------------------------------------------- qa --
def capital_qa(country: str, capital: str, region: str, fact: str, i: int) -> tuple[str, str]:
    questions = [
        f"What is the capital of {country}?",
        f"Which city is the capital of {country}?",
        f"Can you tell me the capital city of {country}?",
        f"I always forget: what's {country}'s capital?",
    ]
    answers = [
        f"The capital of {country} is {capital}. The city {fact}.",
        f"{capital} is the capital of {country}, in {region}. It {fact}.",
        f"It is {capital}. Located in {region}, {capital} {fact}.",
        f"{country}'s capital is {capital}, which {fact}.",
    ]
    return questions[i % 4], answers[(i // 4) % 4]


def element_qa(name: str, symbol: str, z: int, fact: str, i: int) -> tuple[str, str]:
    kind = i % 3
    if kind == 0:
        return (f"What is the chemical symbol for {name}?",
                f"The chemical symbol for {name} is {symbol}, and its atomic number is {z}. {fact}")
    if kind == 1:
        return (f"Which element has the atomic number {z}?",
                f"Atomic number {z} belongs to {name}, written with the symbol {symbol}. {fact}")
    return (f"Tell me a few facts about the element {name}.",
            f"{name.capitalize()} has the symbol {symbol} and sits at number {z} in the periodic table, "
            f"meaning each atom has {z} proton{'s' if z > 1 else ''}. {fact}")


def planet_qa(name: str, position: str, description: str, i: int) -> tuple[str, str]:
    if i % 2 == 0:
        return (f"Which planet is {position} from the Sun?",
                f"{name} is the {position} planet from the Sun. {description}")
    return (f"What is special about the planet {name}?",
            f"{name}, the {position} planet from the Sun, stands out in several ways. {description}")


def qa_convos(rng: random.Random) -> list[Convo]:
    pairs = [capital_qa(*row, i) for i, row in enumerate(texts.CAPITALS)]
    pairs += [element_qa(*row, i) for i, row in enumerate(texts.ELEMENTS)]
    pairs += [planet_qa(*row, i) for i, row in enumerate(texts.PLANETS)]
    pairs += list(texts.FACT_QA)
    return [Convo("qa", [("user", q), ("assistant", a)]) for q, a in pairs]


# ------------------------------------------------------------------------------------ code --
UNIT_CONVERSIONS = [  # (from, to, factor, sample value, what it is)
    ("miles", "kilometres", 1.609344, 26.2, "the international mile is defined as exactly 1.609344 kilometres"),
    ("pounds", "kilograms", 0.45359237, 150, "the avoirdupois pound is defined as exactly 0.45359237 kilograms"),
    ("inches", "centimetres", 2.54, 12, "an inch has been defined as exactly 2.54 centimetres since 1959"),
    ("gallons", "litres", 3.785411784, 5, "a US liquid gallon holds exactly 3.785411784 litres"),
    ("nautical_miles", "kilometres", 1.852, 40, "a nautical mile is defined as exactly 1.852 kilometres"),
]


def unit_conversion_task(unit_from: str, unit_to: str, factor: float, sample: float, why: str) -> tuple[str, str]:
    label = unit_from.replace("_", " ")
    func = f"{unit_from}_to_{unit_to}"
    prompt = f"Write a Python function that converts {label} to {unit_to}."
    code = (f"{unit_from.upper()}_IN_{unit_to.upper()} = {factor}\n\n\n"
            f"def {func}({unit_from}: float) -> float:\n"
            f"    return {unit_from} * {unit_from.upper()}_IN_{unit_to.upper()}\n\n\n"
            f"print({func}({sample}))  # {number(sample * factor, 3)}")
    answer = (f"Multiply by the conversion factor, which is exact because {why}:\n\n```python\n{code}\n```\n\n"
              f"Naming the constant makes the factor easy to find, and {number(sample)} {label} come out "
              f"as about {number(sample * factor, 3)} {unit_to}.")
    return prompt, answer


def code_convos(rng: random.Random) -> list[Convo]:
    convos = []
    for lang, prompt, intro, code, outro in texts.CODE_TASKS:
        answer = f"{intro}\n\n```{lang}\n{code}\n```\n\n{outro}"
        turns = [("user", prompt), ("assistant", answer)]
        if prompt in texts.CODE_FOLLOWUPS:
            question, reply = texts.CODE_FOLLOWUPS[prompt]
            turns += [("user", question), ("assistant", reply)]
        convos.append(Convo("code", turns))
    for spec in UNIT_CONVERSIONS:
        prompt, answer = unit_conversion_task(*spec)
        convos.append(Convo("code", [("user", prompt), ("assistant", answer)]))
    return convos


# ------------------------------------------------------------------------------------ math --
NAMES = ["Amara", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Gustavo", "Hana", "Ivan", "Jasmine",
         "Kofi", "Leila", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sami", "Tamsin",
         "Umar", "Vera", "Wen", "Ximena", "Yusuf", "Zara"]
PRICED_ITEMS = [("notebooks", 2.45), ("pencils", 0.35), ("mangoes", 1.20), ("concert tickets", 38.50),
                ("paint brushes", 4.75), ("bus passes", 12.80), ("flower pots", 6.90), ("coffee mugs", 8.25),
                ("jars of honey", 5.60), ("packs of cards", 3.15)]
SALE_ITEMS = [("winter coat", 120), ("bicycle helmet", 64), ("pair of hiking boots", 95), ("desk lamp", 42),
              ("board game", 36), ("rain jacket", 78), ("set of saucepans", 150), ("backpack", 58)]
VEHICLES = ["train", "cyclist", "ferry", "delivery van", "long-distance runner", "tour bus", "sailing boat",
            "motorbike"]
RECT_PLACES = ["vegetable garden", "classroom floor", "living room rug", "car park", "swimming pool",
               "football pitch", "patio", "greenhouse floor"]
ROUND_THINGS = ["pizza", "clock face", "round table", "garden pond", "trampoline", "drum skin", "dartboard", "fountain"]
SCORE_KINDS = [("quiz scores", "points"), ("daily step counts in thousands", "thousand steps"),
               ("noon temperatures in degrees Celsius", "degrees"), ("bowling scores", "pins"),
               ("minutes spent reading each evening", "minutes")]
SHARE_ITEMS = ["stickers", "marbles", "trading cards", "strawberries", "seed packets", "biscuits", "coloured pens",
               "shells"]
EVENTS = ["film", "football match", "piano recital", "cooking class", "train journey", "board meeting", "yoga session",
          "school play"]
INGREDIENTS = [("flour", "g"), ("butter", "g"), ("rice", "g"), ("milk", "ml"), ("sugar", "g"), ("chickpeas", "g"),
               ("stock", "ml")]
SETTLEMENTS = ["village", "fishing town", "mountain hamlet", "market town", "island community", "river town"]


def math_unit_price(rng, i):
    name, (item, base) = rng.choice(NAMES), rng.choice(PRICED_ITEMS)
    n, price = rng.randint(3, 14), round(base * rng.uniform(0.8, 1.3), 2)
    total = Fraction(str(price)) * n
    if i % 2 == 0:
        q = f"{name} buys {n} {item} that cost {money(price)} each. How much does {name} spend altogether?"
        a = (f"Multiply the quantity by the price of one item: {n} × {money(price)} = {money(total)}. "
             f"So {name} spends {money(total)} altogether.")
    else:
        q = f"If one of the {item} costs {money(price)}, how much do {n} of them cost?"
        a = (f"Each costs {money(price)}, and there are {n}, so the total is {money(price)} × {n}. "
             f"That comes to {money(total)} for all {n} {item}.")
    return q, a


def math_percent_of(rng, i):
    pct, x = rng.choice([5, 12, 15, 20, 35, 45, 60, 75, 85]), rng.choice(range(40, 900, 20))
    result = Fraction(pct, 100) * x
    if i % 2 == 0:
        q = f"Find {pct} percent of {x}."
        a = (f"{pct} percent means {pct} out of every hundred, so write it as the decimal {pct / 100:g} and "
             f"multiply: {x} × {pct / 100:g} = {number(result)}. The answer is {number(result)}.")
    else:
        q = f"Calculate {pct}% of {x}."
        a = (f"Divide {x} by 100 to get one percent, which is {number(Fraction(x, 100))}, then take {pct} of those: "
             f"{number(Fraction(x, 100))} × {pct} = {number(result)}. So {pct}% of {x} equals {number(result)}.")
    return q, a


def math_discount(rng, i):
    item, price = rng.choice(SALE_ITEMS)
    pct = rng.choice([10, 15, 20, 25, 30, 40])
    off = Fraction(price * pct, 100)
    if i % 2 == 0:
        q = f"A {item} costs {money(price)} and is on sale at {pct} percent off. What is the sale price?"
        a = (f"The discount is {pct}% of {money(price)}, which is {money(off)}. Subtract it from the original "
             f"price: {money(price)} − {money(off)} = {money(price - off)}. The {item} now costs "
             f"{money(price - off)}.")
    else:
        q = f"How much do I pay for a {item} priced at {money(price)} with a {pct}% discount?"
        a = (f"Paying {100 - pct}% of the price is the same as taking {pct}% off, so compute "
             f"{money(price)} × {(100 - pct) / 100:g} = {money(price - off)}. You save {money(off)} on the {item}.")
    return q, a


def math_speed(rng, i):
    vehicle = rng.choice(VEHICLES)
    speed, hours = rng.choice([12, 18, 24, 36, 45, 60, 72, 84, 96]), rng.choice([1.5, 2, 2.5, 3, 4, 5])
    distance = speed * hours
    if i % 2 == 0:
        q = f"A {vehicle} covers {number(distance)} km in {number(hours)} hours. Calculate its average speed."
        a = (f"Average speed is distance divided by time: {number(distance)} km ÷ {number(hours)} h = {speed} km/h. "
             f"The {vehicle} averages {speed} kilometres per hour.")
    else:
        q = f"A {vehicle} travels at a steady {speed} km/h. How many kilometres does it cover in {number(hours)} hours?"
        a = (f"Distance equals speed multiplied by time, so {speed} km/h × {number(hours)} h = {number(distance)} km. "
             f"In {number(hours)} hours the {vehicle} covers {number(distance)} kilometres.")
    return q, a


def math_rectangle(rng, i):
    place = rng.choice(RECT_PLACES)
    length, width = rng.randint(6, 40), rng.randint(3, 18)
    q = (f"A rectangular {place} is {length} m long and {width} m wide. Calculate its area and its perimeter."
         if i % 2 == 0 else
         f"Calculate the area and the perimeter of a {place} measuring {length} metres by {width} metres.")
    a = (f"Area is length times width: {length} × {width} = {length * width} square metres. The perimeter adds "
         f"all four sides: 2 × ({length} + {width}) = {2 * (length + width)} metres. So the {place} covers "
         f"{length * width} m² and has a perimeter of {2 * (length + width)} m.")
    return q, a


def math_circle(rng, i):
    thing, radius = rng.choice(ROUND_THINGS), rng.choice([3, 4, 5, 7, 9, 12, 15, 18, 25])
    area = math.pi * radius**2
    q = (f"What is the area of a circular {thing} with a radius of {radius} cm? Calculate it to two decimal places."
         if i % 2 == 0 else f"Calculate the area of a {thing} that is a circle of radius {radius} cm.")
    a = (f"The area of a circle is π × r². Here r = {radius} cm, so r² = {radius**2} and the area is "
         f"π × {radius**2} ≈ {area:.2f} square centimetres. The {thing} covers about {area:.2f} cm².")
    return q, a


def math_average(rng, i):
    name = rng.choice(NAMES)
    kind, unit = rng.choice(SCORE_KINDS)
    values = [rng.randint(4, 30) for _ in range(5)]
    mean = Fraction(sum(values), len(values))
    listed = ", ".join(map(str, values))
    q = (f"{name} recorded these {kind}: {listed}. Calculate the average."
         if i % 2 == 0 else f"Calculate the mean of {name}'s {kind} this week: {listed}.")
    a = (f"Add the values: {' + '.join(map(str, values))} = {sum(values)}. There are {len(values)} of them, "
         f"so the mean is {sum(values)} ÷ {len(values)} = {number(mean)}. On average that is {number(mean)} {unit}.")
    return q, a


def signed(value: int) -> str:
    return f"+ {value}" if value >= 0 else f"- {-value}"


def math_linear(rng, i):
    a_, x, b = rng.randint(2, 9), rng.randint(-6, 15), rng.choice([v for v in range(-20, 31) if v])
    c = a_ * x + b
    q = (f"Solve for x: {a_}x {signed(b)} = {c}." if i % 2 == 0
         else f"Solve the equation {a_}x {signed(b)} = {c} and check your answer.")
    move = f"Subtract {b} from" if b > 0 else f"Add {-b} to"
    a = (f"{move} both sides to isolate the x term: {a_}x = {c - b}. Then divide both sides by {a_}: x = {x}. "
         f"Check: {a_} × {x} {signed(b)} = {c}, so x = {x} is correct.")
    return q, a


def math_interest(rng, i):
    principal, rate, years = rng.choice(range(500, 5001, 250)), rng.choice([2, 3, 4, 5, 6]), rng.randint(2, 6)
    interest = Fraction(principal * rate * years, 100)
    q = (f"How much simple interest does {money(principal)} earn at {rate}% per year over {years} years?"
         if i % 2 == 0 else
         f"Calculate the simple interest on a deposit of {money(principal)} at an annual rate of {rate} percent "
         f"for {years} years.")
    a = (f"Simple interest is principal × rate × time. Here that is {money(principal)} × {rate / 100:g} × {years} "
         f"= {money(interest)}. After {years} years the account holds {money(principal + interest)} in total.")
    return q, a


def math_share(rng, i):
    name, item = rng.choice(NAMES), rng.choice(SHARE_ITEMS)
    friends = rng.randint(3, 9)
    total = friends * rng.randint(4, 15) + rng.randint(1, friends - 1)
    each, left = divmod(total, friends)
    q = (f"{name} has {total} {item} to share equally among {friends} friends. How many does each friend get, "
         f"and how many are left over?" if i % 2 == 0 else
         f"If {total} {item} are divided equally between {friends} children, how many does each child get and "
         f"how many remain?")
    a = (f"Divide {total} by {friends}: {friends} × {each} = {friends * each}, which leaves a remainder of {left}. "
         f"Each gets {each} {item}, and {left} {'is' if left == 1 else 'are'} left over.")
    return q, a


def math_ages(rng, i):
    older, younger = rng.sample(NAMES, 2)
    gap, now, later = rng.randint(2, 9), rng.randint(6, 30), rng.randint(3, 10)
    total_later = (now + later) + (now + gap + later)
    q = (f"Solve this: {older} is {gap} years older than {younger}. In {later} years the sum of their ages "
         f"will be {total_later}. How old is {younger} now?")
    a = (f"Let {younger}'s age now be y, so {older} is y + {gap}. In {later} years their ages add up to "
         f"(y + {later}) + (y + {gap} + {later}) = 2y + {gap + 2 * later}. Setting this equal to {total_later} "
         f"gives 2y = {total_later - gap - 2 * later}, so y = {now}. {younger} is {now} years old now and "
         f"{older} is {now + gap}.")
    if i % 2:
        q = q.replace("Solve this:", "Solve this age puzzle.")
    return q, a


def math_series(rng, i):
    n = rng.choice(range(20, 301, 10))
    total = n * (n + 1) // 2
    q = (f"Calculate the sum of all whole numbers from 1 to {n}." if i % 2 == 0
         else f"Calculate 1 + 2 + 3 + ... + {n} without adding the terms one by one.")
    a = (f"Pair the numbers from both ends: 1 + {n}, 2 + {n - 1}, and so on, and each pair adds up to {n + 1}. "
         f"There are {n} ÷ 2 = {number(Fraction(n, 2))} such pairs, so the sum is {n} × {n + 1} ÷ 2 = {total:,}.")
    return q, a


def math_lcm(rng, i):
    a_, b = rng.sample([4, 6, 8, 9, 10, 12, 14, 15, 18, 21, 24, 28], 2)
    g = math.gcd(a_, b)
    lcm = a_ * b // g
    q = (f"Find the least common multiple of {a_} and {b}." if i % 2 == 0
         else f"What is the least common multiple of {a_} and {b}? Show how you get it.")
    a = (f"The greatest common divisor of {a_} and {b} is {g}. The least common multiple is their product divided "
         f"by that: {a_} × {b} ÷ {g} = {lcm}. So {lcm} is the smallest number that both {a_} and {b} divide.")
    return q, a


def math_fractions(rng, i):
    b, d = rng.sample([3, 4, 5, 6, 8, 10, 12], 2)
    a_, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
    common = b * d // math.gcd(b, d)
    total = Fraction(a_, b) + Fraction(c, d)
    q = (f"What is {a_}/{b} + {c}/{d}? Give the answer as a fraction in lowest terms." if i % 2 == 0
         else f"Add the fractions {a_}/{b} and {c}/{d} and simplify the result.")
    na, nc = a_ * common // b, c * common // d
    a = (f"Use the common denominator {common}: {a_}/{b} = {na}/{common} and {c}/{d} = {nc}/{common}. Adding the "
         f"numerators gives {na + nc}/{common}, which simplifies to {total.numerator}/{total.denominator}"
         + (f", or {number(total)} as a whole number." if total.denominator == 1 else "."))
    return q, a


def math_temperature(rng, i):
    celsius = rng.choice([-15, -5, 0, 12, 18, 22, 25, 30, 37, 40])
    fahrenheit = Fraction(celsius * 9, 5) + 32
    q = (f"Calculate what {celsius} degrees Celsius is in degrees Fahrenheit." if i % 2 == 0
         else f"Convert {celsius} °C to Fahrenheit and show the calculation.")
    a = (f"Use F = C × 9/5 + 32. Here {celsius} × 9/5 = {number(Fraction(celsius * 9, 5))}, and adding 32 gives "
         f"{number(fahrenheit)}. So {celsius} °C equals {number(fahrenheit)} °F.")
    return q, a


def math_time(rng, i):
    event = rng.choice(EVENTS)
    start_h, start_m = rng.randint(7, 20), rng.choice([0, 10, 15, 20, 30, 40, 45, 50])
    duration = rng.choice(range(35, 200, 5))
    end = start_h * 60 + start_m + duration
    start, finish = f"{start_h}:{start_m:02d}", f"{end // 60 % 24}:{end % 60:02d}"
    q = (f"A {event} begins at {start} and lasts {duration} minutes. Calculate the time it ends." if i % 2 == 0
         else f"If a {event} starts at {start} and runs for {duration} minutes, calculate when it finishes.")
    a = (f"{duration} minutes is {duration // 60} hour{'s' if duration // 60 != 1 else ''} and {duration % 60} "
         f"minutes. Adding that to {start} gives {finish}, so the {event} ends at {finish}.")
    return q, a


def math_volume(rng, i):
    x, y, z = rng.randint(10, 60), rng.randint(10, 40), rng.randint(5, 30)
    volume = x * y * z
    q = (f"A box measures {x} cm by {y} cm by {z} cm. Calculate its volume in cubic centimetres and in litres."
         if i % 2 == 0 else f"Calculate how many litres a tank of {x} cm × {y} cm × {z} cm holds when full.")
    a = (f"Volume is length × width × height: {x} × {y} × {z} = {volume:,} cubic centimetres. One litre is "
         f"1,000 cm³, so that is {number(Fraction(volume, 1000), 3)} litres.")
    return q, a


def math_multiply(rng, i):
    a_, b = rng.randint(23, 99), rng.randint(12, 98)
    tens, ones = b // 10 * 10, b % 10
    q = f"What is {a_} × {b}?" if i % 2 == 0 else f"Compute {a_} times {b} and explain the steps."
    a = (f"Split {b} into {tens} + {ones}. Then {a_} × {tens} = {a_ * tens} and {a_} × {ones} = {a_ * ones}. "
         f"Adding the two parts gives {a_ * tens} + {a_ * ones} = {a_ * b}, so {a_} × {b} = {a_ * b}.")
    return q, a


def math_recipe(rng, i):
    ingredient, unit = rng.choice(INGREDIENTS)
    servings, wanted, amount = rng.choice([2, 4, 6]), rng.choice([3, 5, 8, 10, 12]), rng.choice(range(100, 601, 50))
    scaled = Fraction(amount * wanted, servings)
    q = (f"A recipe for {servings} servings needs {amount} {unit} of {ingredient}. How much {ingredient} is needed "
         f"for {wanted} servings?")
    a = (f"One serving needs {amount} ÷ {servings} = {number(Fraction(amount, servings))} {unit}. For {wanted} "
         f"servings multiply by {wanted}: {number(scaled)} {unit} of {ingredient}.")
    if i % 2:
        q = q.replace("A recipe", "My recipe")
    return q, a


def math_fuel(rng, i):
    per_100, distance = rng.choice([4.5, 5.2, 6, 6.8, 7.5, 8.4, 9]), rng.choice(range(120, 901, 30))
    needed = Fraction(str(per_100)) * distance / 100
    q = (f"A car uses {per_100:g} litres of fuel per 100 km. How much fuel does it need for a {distance} km trip?"
         if i % 2 == 0 else
         f"Calculate the fuel needed to drive {distance} km in a car that burns {per_100:g} litres every 100 km.")
    a = (f"The trip is {distance} ÷ 100 = {number(Fraction(distance, 100))} hundreds of kilometres. Multiply by "
         f"{per_100:g} litres: {number(Fraction(distance, 100))} × {per_100:g} = {number(needed)} litres of fuel.")
    return q, a


def math_wages(rng, i):
    name = rng.choice(NAMES)
    wage, hours, weeks = rng.choice([11.5, 12.75, 14, 15.25, 18, 21.4]), rng.randint(12, 40), rng.randint(2, 8)
    weekly = Fraction(str(wage)) * hours
    q = (f"{name} earns {money(wage)} per hour and works {hours} hours a week. How much does {name} earn in "
         f"{weeks} weeks?")
    a = (f"First find the weekly pay: {money(wage)} × {hours} = {money(weekly)}. Over {weeks} weeks that is "
         f"{money(weekly)} × {weeks} = {money(weekly * weeks)}, before any tax.")
    if i % 2:
        q = f"Calculate this: {q}"
    return q, a


def math_growth(rng, i):
    place = rng.choice(SETTLEMENTS)
    before = rng.choice(range(400, 5001, 100))
    pct = rng.choice([5, 8, 10, 12, 15, 20, 25, 40])
    after = before * (100 + pct) // 100
    q = (f"The population of a {place} grew from {before:,} to {after:,}. What is the percentage increase?"
         if i % 2 == 0 else
         f"Calculate the percentage growth of a {place} whose population rose from {before:,} to {after:,}.")
    a = (f"The increase is {after:,} − {before:,} = {after - before:,}. Divide by the starting value and multiply "
         f"by 100: {after - before:,} ÷ {before:,} × 100 = {number(Fraction(after - before, before) * 100)}%. "
         f"The {place} grew by {number(Fraction(after - before, before) * 100)} percent.")
    return q, a


MATH_TEMPLATES: list[Callable[[random.Random, int], tuple[str, str]]] = [
    math_unit_price, math_percent_of, math_discount, math_speed, math_rectangle, math_circle, math_average,
    math_linear, math_interest, math_share, math_ages, math_series, math_lcm, math_fractions,
    math_temperature, math_time, math_volume, math_multiply, math_recipe, math_fuel, math_wages, math_growth,
]
MATH_PER_TEMPLATE = 3
MATH_MAX_SIBLING_JACCARD = 0.3  # redraw an instance that shares too many 5-grams with its siblings


def math_convos(rng: random.Random) -> list[Convo]:
    convos = []
    for template in MATH_TEMPLATES:
        siblings: list[set[str]] = []
        for i in range(MATH_PER_TEMPLATE):
            for _ in range(100):
                q, a = template(rng, i)
                grams = shingles(f"{q}\n{a}")
                if all(jaccard(grams, other) <= MATH_MAX_SIBLING_JACCARD for other in siblings):
                    break
            siblings.append(grams)
            convos.append(Convo("math", [("user", q), ("assistant", a)]))
    return convos


# -------------------------------------------------------------------------------- creative --
POEM_PROMPTS = [
    "Write a short poem about {s}.",
    "Compose a poem about {s}.",
    "Could you write a little poem about {s}?",
    "Write a free-verse poem about {s}, please.",
    "Write a short poem that captures {s}.",
    "Please compose some poetry about {s}.",
]
POEM_INTROS = ["", "", "Here is a short poem:", "Here is one I wrote for you:", "A few lines for you:"]
POEM_CLOSERS = [
    "and the day folds quietly around {s}.",
    "I keep {s} like a stone warm in my pocket.",
    "nothing is hurried here, not even time.",
    "and I stay until the light lets go.",
    "so {s} goes on, whether we watch or not.",
    "and somewhere a door of memory swings open.",
]


def poem_answer(subject: str, lines: list[str], rng: random.Random) -> str:
    chosen = rng.sample(lines, rng.choice([4, 5, 6]))
    chosen = [line[0].upper() + line[1:] for line in chosen]
    chosen.append(rng.choice(POEM_CLOSERS).format(s=subject).capitalize())
    stanza = 3 if len(chosen) >= 6 else 2
    stanzas = ["\n".join(chosen[i : i + stanza]) for i in range(0, len(chosen), stanza)]
    intro = rng.choice(POEM_INTROS)
    poem = "\n\n".join(stanzas)
    return f"{intro}\n\n{poem}" if intro else poem


def creative_convos(rng: random.Random) -> list[Convo]:
    convos = []
    for i, (subject, lines) in enumerate(texts.POEM_SUBJECTS):
        prompt = POEM_PROMPTS[i % len(POEM_PROMPTS)].format(s=subject)
        convos.append(Convo("creative", [("user", prompt), ("assistant", poem_answer(subject, lines, rng))]))
    for prompt, story in texts.STORIES:
        convos.append(Convo("creative", [("user", prompt), ("assistant", story)]))
    return convos


# -------------------------------------------------------------------------- system prompts --
SYSTEM_PROMPTS = {
    "conversation": ["You are a warm, practical assistant who gives concise everyday advice.",
                     "You are a friendly companion. Keep answers encouraging, specific and short."],
    "qa": ["You are a knowledgeable assistant. Answer factual questions accurately and briefly.",
           "Answer like a good encyclopedia would, in plain language for a general reader."],
    "code": ["You are a senior software engineer. Show idiomatic code and explain it briefly.",
             "You write clean, tested code and point out common pitfalls."],
    "math": ["You are a patient math tutor. Show each step of the working.",
             "Explain every calculation clearly and state the final answer at the end."],
    "creative": ["You are a creative writing assistant with a gift for vivid imagery.",
                 "You write short, original pieces suitable for readers of all ages."],
}
ALPACA_LEADS = {  # instruction text when an alpaca row moves the prompt into `input`
    "qa": ["Answer the following question.", "Give a short, accurate answer to the question below."],
    "code": ["Complete the following programming task.", "Solve this coding request."],
    "math": ["Solve the following problem and show your working.", "Work through this problem step by step."],
    "creative": ["Respond to the writing request below.", "Complete the creative task described in the input."],
}
FORMATS = ("alpaca", "sharegpt", "openai")


def with_system(convo: Convo, rng: random.Random) -> None:
    convo.turns.insert(0, ("system", rng.choice(SYSTEM_PROMPTS[convo.category])))


def assign_format(convo: Convo, rng: random.Random) -> None:
    """Pick a file for an unpinned conversation and that file's style choices."""
    multi = convo.user_turns() > 1
    if convo.fmt is None:
        convo.fmt = rng.choices(FORMATS, (0.12, 0.44, 0.44) if multi else (0.45, 0.25, 0.30))[0]
    if convo.fmt == "alpaca" and not multi and convo.category in ALPACA_LEADS and rng.random() < 0.3:
        lead, prompt = rng.choice(ALPACA_LEADS[convo.category]), convo.turns[-2][1]
        convo.turns[-2] = ("user", f"{lead}\n\n{prompt}")  # what ingest builds from instruction + input
        convo.style["split"] = (lead, prompt)
    if convo.fmt == "openai":
        convo.style.setdefault("developer", rng.random() < 0.5)
        convo.style.setdefault("parts", rng.random() < 0.2)
    if convo.fmt == "sharegpt":
        convo.style.setdefault("system_field", rng.random() < 0.35)


# --------------------------------------------------------------------------------- writers --
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation",
                 "call": "function_call"}


def alpaca_payload(convo: Convo) -> dict[str, Any]:
    turns = list(convo.turns)
    system = turns.pop(0)[1] if turns and turns[0][0] == "system" else None
    roles = [role for role, _ in turns]
    if roles != ["user", "assistant"] * (len(turns) // 2) or not turns:
        raise ValueError(f"alpaca needs alternating user/assistant turns ending with assistant, got {roles}")
    pairs = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns), 2)]
    *history, (prompt, answer) = pairs
    instruction, extra_input = convo.style.get("split", (prompt, ""))
    row: dict[str, Any] = {"instruction": instruction, "input": extra_input, "output": answer}
    if system is not None:
        row["system"] = system
    if history:
        row["history"] = [list(pair) for pair in history]
    return row


def sharegpt_payload(convo: Convo) -> dict[str, Any]:
    turns = list(convo.turns)
    row: dict[str, Any] = {}
    if turns and turns[0][0] == "system" and convo.style.get("system_field"):
        row["system"] = turns.pop(0)[1]  # the row-level form LLaMA-Factory files use
    row["conversations"] = [{"from": SHAREGPT_FROM[role], "value": text} for role, text in turns]
    if convo.tools:
        row["tools"] = convo.tools
    return row


def openai_payload(convo: Convo) -> dict[str, Any]:
    messages = []
    for role, text in convo.turns:
        if role == "system" and convo.style.get("developer"):
            role = "developer"
        content: Any = text
        if role == "user" and convo.style.get("parts"):
            content = [{"type": "text", "text": text}]
        messages.append({"role": role, "content": content})
    return {"messages": messages}


PAYLOADS = {"alpaca": alpaca_payload, "sharegpt": sharegpt_payload, "openai": openai_payload}


def clean_row(convo: Convo) -> Row:
    return Row(convo.fmt, PAYLOADS[convo.fmt](convo), convo)


def copy_convo(convo: Convo, fmt: str, style: dict[str, Any] | None = None,
               text: Callable[[str], str] = lambda t: t) -> Convo:
    return Convo(convo.category, [(r, text(t)) for r, t in convo.turns], fmt, dict(style or {}), convo.tools)


# ---------------------------------------------------------------------- near duplicates --
SYNONYMS = {
    "quickly": "rapidly", "often": "frequently", "every": "each", "small": "little", "large": "big",
    "quiet": "silent", "usually": "generally", "simple": "basic", "whole": "entire", "found": "discovered",
    "began": "started", "long": "lengthy", "later": "afterwards", "happy": "glad", "old": "elderly",
    "very": "really", "help": "assist", "start": "begin", "near": "beside", "slowly": "gradually",
    "finally": "eventually", "little": "tiny", "big": "huge", "asked": "begged", "walked": "strolled",
    "tried": "attempted", "wonderful": "marvellous", "strange": "odd", "then": "next", "also": "too",
}


def perturb(text: str, n_changes: int) -> tuple[str, list[str]]:
    """Swap `n_changes` words for synonyms, spread over the text after its first third."""
    pieces = re.split(r"(\W+)", text)
    candidates = [i for i, p in enumerate(pieces) if p.lower() in SYNONYMS and i > len(pieces) // 3]
    if len(candidates) < n_changes:
        raise ValueError(f"no {n_changes} replaceable words in: {text[:60]}...")
    swaps = []
    for k in range(1, n_changes + 1):
        index = candidates[k * len(candidates) // (n_changes + 1)]
        word = pieces[index]
        swap = SYNONYMS[word.lower()]
        pieces[index] = swap.capitalize() if word[0].isupper() else swap
        swaps.append(f"{word} -> {pieces[index]}")
    return "".join(pieces), swaps


def perturbable(convo: Convo) -> bool:
    try:
        perturb(longest_answer(convo)[1], 2)
    except ValueError:
        return False
    return True


def longest_answer(convo: Convo) -> tuple[int, str]:
    index = max((i for i, (role, _) in enumerate(convo.turns) if role == "assistant"),
                key=lambda i: len(convo.turns[i][1]))
    return index, convo.turns[index][1]


def near_variant(convo: Convo, rng: random.Random) -> tuple[Convo, list[str]]:
    """A copy with one or two words of its longest answer swapped, in a random compatible file."""
    longest, answer = longest_answer(convo)
    n_changes = 1 if len(words(convo_text(convo))) < 200 else 2
    multi = convo.user_turns() > 1
    variant = copy_convo(convo, rng.choice(("sharegpt", "openai") if multi else FORMATS))
    changed, swaps = perturb(answer, n_changes)
    variant.turns[longest] = ("assistant", changed)
    similarity = jaccard(shingles(convo_text(convo)), shingles(convo_text(variant)))
    if similarity < NEAR_DUP_MIN_JACCARD:
        raise ValueError(f"near duplicate too far from its original (5-gram Jaccard {similarity:.2f})")
    return variant, swaps


# -------------------------------------------------------------------------- planted rows --
def planted(fmt: str, convo: Convo | None, case: str, what: str, expected: str, *,
            payload: Any = None, raw_line: str | None = None, ref: Row | None = None) -> Row:
    if payload is None and raw_line is None and convo is not None:
        payload = PAYLOADS[fmt](convo)
    return Row(fmt, payload, convo, raw_line, case, what, expected, ref)


def pick(convos: list[Convo], rng: random.Random, taken: set[int], test: Callable[[Convo], bool]) -> Convo:
    """A random conversation that passes `test` and has not been picked for another case."""
    options = [c for c in convos if id(c) not in taken and test(c)]
    choice = rng.choice(options)
    taken.add(id(choice))
    return choice


def single_turn(c: Convo) -> bool:
    return c.user_turns() == 1


def multi_turn(c: Convo) -> bool:
    return c.user_turns() > 1


def exact_duplicate_plan(pool: dict[str, list[Convo]], extra: Convo, rng: random.Random,
                         taken: set[int]) -> list[tuple[Convo, Callable[[Row], Row]]]:
    """Pin eight originals to the file/style their duplicate needs; return (original, make duplicate).

    The duplicates normalize to the same messages as their originals (format change, developer
    role, text parts, padding whitespace, NFD accents), so they share its content hash.
    """
    dup = "exact_duplicate"
    kept = "one of the pair dropped at dedup: exact_duplicate (dup_of = the smaller example_id)"
    plan = []

    def add(original: Convo, make: Callable[[Row], Row]) -> None:
        plan.append((original, make))

    c1 = pick(pool["qa"], rng, taken, single_turn)
    c1.fmt = "alpaca"
    add(c1, lambda ref, c=c1: planted("openai", c, dup, "{ref} as OpenAI messages with a "
                                      "text-part list as the user content", kept, ref=ref,
                                      payload=openai_payload(copy_convo(c, "openai", {"parts": True}))))
    c2 = pick(pool["creative"], rng, taken, single_turn)
    c2.fmt = "alpaca"
    with_system(c2, rng)
    add(c2, lambda ref, c=c2: planted("sharegpt", c, dup, "{ref} (alpaca with `system`) as a "
                                      "ShareGPT row with a system turn", kept, ref=ref,
                                      payload=sharegpt_payload(copy_convo(c, "sharegpt"))))
    c3 = pick(pool["conversation"], rng, taken, multi_turn)
    c3.fmt = "sharegpt"
    add(c3, lambda ref, c=c3: planted("openai", c, dup, "{ref} (multi-turn) as OpenAI messages",
                                      kept, ref=ref, payload=openai_payload(copy_convo(c, "openai"))))
    c4 = pick(pool["code"], rng, taken, single_turn)
    c4.fmt, c4.style = "openai", {"developer": True}
    with_system(c4, rng)
    add(c4, lambda ref, c=c4: planted("sharegpt", c, dup, "{ref} (role `developer`) as ShareGPT "
                                      "with a `system` turn", kept, ref=ref,
                                      payload=sharegpt_payload(copy_convo(c, "sharegpt"))))
    c5 = pick(pool["math"], rng, taken, single_turn)
    c5.fmt = "openai"
    add(c5, lambda ref, c=c5: planted("openai", c, dup, "{ref} with leading/trailing spaces and "
                                      "newlines around every turn", kept + " (normalize trims turns)", ref=ref,
                                      payload=openai_payload(copy_convo(c, "openai", text=lambda t: f"  {t}   \n"))))
    extra.fmt = "sharegpt"
    add(extra, lambda ref, c=extra: planted("sharegpt", c, dup, "{ref} with its accented letters "
                                            "decomposed (NFD: e + U+0301)", kept + " (normalize applies NFC)", ref=ref,
                                            payload=sharegpt_payload(copy_convo(
                                                c, "sharegpt", text=lambda t: unicodedata.normalize("NFD", t)))))
    c7 = pick(pool["creative"], rng, taken, lambda c: single_turn(c) and len(c.turns[-1][1]) > 400)
    c7.fmt = "alpaca"
    add(c7, lambda ref, c=c7: planted("alpaca", c, dup, "byte-identical copy of {ref}", kept,
                                      ref=ref, payload=json.loads(json.dumps(ref.payload))))
    c8 = pick(pool["conversation"], rng, taken, multi_turn)
    c8.fmt = "alpaca"
    add(c8, lambda ref, c=c8: planted("openai", c, dup, "{ref} (alpaca with `history`) as OpenAI "
                                      "messages", kept, ref=ref, payload=openai_payload(copy_convo(c, "openai"))))
    return plan


def near_duplicate_originals(pool: dict[str, list[Convo]], taken: set[int]) -> list[Convo]:
    """Eight long conversations (the longest perturbable ones of their category not yet used)."""
    chosen = []
    for category in ("creative", "creative", "creative", "conversation", "conversation", "conversation",
                     "conversation", "code"):
        options = [c for c in pool[category] if id(c) not in taken and perturbable(c)]
        best = max(options, key=lambda c: (len(words(convo_text(c))), convo_text(c)))
        taken.add(id(best))
        chosen.append(best)
    return chosen


def simple_planted(rng: random.Random) -> list[Row]:
    """Too-short, toxic, contaminated, borderline, tool and edge-case rows (all well-formed JSON)."""
    rows = []
    for (q, a), fmt in zip(texts.TOO_SHORT, FORMATS * 2):
        convo = Convo("qa", [("user", q), ("assistant", a)], fmt)
        rows.append(planted(fmt, convo, "too_short", f"answer {a!r} (< 10 tokens)",
                            "dropped at filter: too_short_response"))
    for (q, a), fmt in zip(texts.TOXIC_ANSWERS, ("alpaca", "sharegpt", "openai", "alpaca")):
        convo = Convo("qa", [("user", q), ("assistant", a)], fmt)
        rows.append(planted(fmt, convo, "toxic", "profane, insulting assistant reply (profanity-check >= 0.5)",
                            "dropped at filter: toxic"))
    for (q, a), fmt in zip(texts.TOXIC_PROMPTS, ("sharegpt", "openai")):
        convo = Convo("qa", [("user", q), ("assistant", a)], fmt)
        rows.append(planted(fmt, convo, "toxic_prompt", "profane user turn answered politely "
                            "(toxicity_user >= 0.5, toxicity_assistant < 0.5)",
                            "kept at filter (roles: [assistant]); toxicity_user recorded"))
    q, a = texts.BORDERLINE
    rows.append(planted("openai", Convo("qa", [("user", q), ("assistant", a)], "openai"), "borderline_toxicity",
                        "mildly rude reply: the whole turn scores between 0.3 and 0.5, its first sentence "
                        "alone ('That sucks.') 1.0",
                        "dropped at filter: toxic (sentence windows); with filters.toxicity.window=turn kept "
                        "at 0.5 and dropped at threshold=0.3"))
    for (eval_index, q, a), fmt in zip(texts.LEAKS, FORMATS):
        convo = Convo("qa", [("user", q), ("assistant", a)], fmt)
        rows.append(planted(fmt, convo, "contaminated", f"answer quotes heldout_prompts.jsonl line {eval_index + 1} "
                            "(>= 13-word overlap)", "dropped at filter: contaminated"))
    for chat in texts.TOOL_CHATS:
        convo = Convo("qa", list(chat["turns"]), "sharegpt", tools=chat["tools"])
        rows.append(planted("sharegpt", convo, "tool_turns", "function_call and observation turns",
                            "kept: function_call -> assistant, observation -> tool"))
    trailing = Convo("qa", [
        ("user", "What's a good way to remember people's names when I meet them?"),
        ("assistant", "Repeat the name back straight away, use it once more during the conversation, and link it "
                      "to something vivid about the person, such as Maya with the green umbrella. Writing new names "
                      "down afterwards also helps them stick."),
        ("user", "Thanks! I'll try that at the conference tomorrow."),
    ], "openai")
    kept_trimmed = Convo("qa", trailing.turns[:2], "openai")
    rows.append(planted("openai", kept_trimmed, "trailing_user_turn", "ends with a user turn",
                        "kept at normalize: kept_trimmed_trailing_turn (last user turn removed)",
                        payload=openai_payload(trailing)))
    as_string = Convo("qa", [
        ("user", "How long should I steep green tea?"),
        ("assistant", "Steep green tea for about two to three minutes in water that has cooled a little below "
                      "boiling, roughly 75 to 80 degrees Celsius. Hotter water or longer steeping pulls out bitter "
                      "tannins, so taste it early and adjust to your liking."),
    ], "sharegpt")
    string_payload = {"conversations": json.dumps(sharegpt_payload(as_string)["conversations"], ensure_ascii=False)}
    rows.append(planted("sharegpt", as_string, "conversations_as_string",
                        "`conversations` is a JSON string holding the turn list (valid)",
                        "kept: ingest parses the string", payload=string_payload))
    return rows


def sharegpt_turns(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"conversations": [{"from": speaker, "value": text} for speaker, text in turns]}


def openai_turns(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def malformed_rows() -> list[Row]:
    """Rows that must be quarantined or dropped: one per failure the ingest/normalize stages know."""
    hi = "Hi! Can you suggest a name for a bakery by the sea?"
    name = "How about Salt and Crumb? It hints at the sea air and the fresh bread, and it is easy to remember."
    m = "malformed"
    image = [{"type": "text", "text": "What breed is the dog in this photo?"},
             {"type": "image_url", "image_url": {"url": "https://example.com/dog.jpg"}}]
    return [
        planted("sharegpt", None, m, "truncated line: not valid JSON", "quarantined at ingest: invalid_json",
                raw_line='{"conversations": [{"from": "human", "value": "What is the tallest tree species?"}, '
                         '{"from": "gpt", "value": "The coast redwood, which can grow'),
        planted("sharegpt", None, m, 'a turn from the unknown speaker "narrator"',
                "quarantined at ingest: unknown_role", payload=sharegpt_turns(
                    ("human", "Tell me about the old mill."),
                    ("narrator", "The wind rose as the sails began to turn."),
                    ("gpt", "The old mill ground wheat for the village for two centuries before it closed."))),
        planted("sharegpt", None, m, "first turn is from gpt", "dropped at normalize: starts_with_assistant",
                payload=sharegpt_turns(
                    ("gpt", "Welcome back! What would you like to cook today?"),
                    ("human", "Something quick with eggs."),
                    ("gpt", "A French omelette takes five minutes: whisk three eggs, cook them gently in butter "
                            "and fold."))),
        planted("sharegpt", None, m, "two human turns in a row", "dropped at normalize: non_alternating",
                payload=sharegpt_turns(
                    ("human", "I need a gift idea."),
                    ("human", "It is for my sister, who loves hiking."),
                    ("gpt", "A lightweight insulated water bottle or a good headlamp would suit a keen hiker."))),
        planted("sharegpt", None, m, "empty conversation list", "dropped at normalize: empty_conversation",
                payload={"conversations": []}),
        planted("sharegpt", None, m, "from/value and role/content keys mixed in one row",
                "quarantined at ingest: mixed_schema",
                payload={"conversations": [{"from": "human", "value": hi}, {"role": "assistant", "content": name}]}),
        planted("sharegpt", None, m, "the line is a JSON array, not an object", "quarantined at ingest: not_an_object",
                payload=sharegpt_turns(("human", hi), ("gpt", name))["conversations"]),
        planted("openai", None, m, "user content holds an image_url part", "quarantined at ingest: unsupported_content",
                payload=openai_turns(
                    ("user", image),
                    ("assistant", "It looks like a border collie, judging by the black and white coat and the "
                                  "alert ears."))),
        planted("openai", None, m, "assistant content is a number", "quarantined at ingest: wrong_type",
                payload=openai_turns(("user", "What is the answer to everything?"), ("assistant", 42))),
        planted("openai", None, m, "no `messages` field (uses `conversation`)", "quarantined at ingest: missing_field",
                payload={"conversation": openai_turns(("user", hi), ("assistant", name))["messages"]}),
        planted("openai", None, m, "system message after the first turn", "dropped at normalize: system_not_first",
                payload=openai_turns(
                    ("user", "Summarise the plot of Hamlet in one sentence."),
                    ("system", "You are a literature tutor."),
                    ("assistant", "Prince Hamlet seeks revenge on his uncle for murdering his father, and the delay "
                                  "costs nearly everyone their life."))),
        planted("openai", None, m, "assistant content is only whitespace", "dropped at normalize: empty_turn",
                payload=openai_turns(("user", "Can you list three primary colours?"), ("assistant", "   \n  "))),
        planted("alpaca", None, m, "`output` is null", "quarantined at ingest: missing_field",
                payload={"instruction": "Name three rivers in Africa.", "input": "", "output": None}),
        planted("alpaca", None, m, "`output` is a list (ranking-style row)", "quarantined at ingest: wrong_type",
                payload={"instruction": "Suggest a title for a travel blog.", "input": "",
                         "output": ["Roads Less Taken", "Suitcase Stories"]}),
        planted("alpaca", None, m, "empty `instruction` and `input`", "dropped at normalize: empty_turn",
                payload={"instruction": "", "input": "", "output": "Could you tell me what you would like help with?"}),
        planted("alpaca", None, m, "the element is a string, not an object", "quarantined at ingest: not_an_object",
                payload="Translate good morning into Spanish. -> Buenos dias."),
        planted("alpaca", None, m, "no `instruction` field (uses `prompt`)", "quarantined at ingest: missing_field",
                payload={"prompt": "Give me a synonym for happy.", "input": "",
                         "output": "Cheerful is a good synonym for happy, as in a cheerful greeting."}),
        planted("alpaca", None, m, "`history` is a string, not a list of pairs", "quarantined at ingest: wrong_type",
                payload={"instruction": "And what about the second one?", "input": "",
                         "output": "The second one is the older bridge, finished in 1894.",
                         "history": "Which bridges cross the river?"}),
    ]


# ---------------------------------------------------------------------------- general text --
# Everyday prose for the evaluate stage's general perplexity check: three paragraph shapes with
# slots filled from small banks, so the text reads naturally but is not the training data.
GT_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
             "October", "November", "December"]
GT_WEATHER = ["grey", "bright", "windy", "misty", "rain-soaked", "frosty", "warm", "blustery", "still", "humid"]
GT_SHOPS = [("bakery", "the baker", "shaping the morning loaves", "warm bread", "a seeded rye loaf"),
            ("hardware shop", "the owner", "sorting boxes of screws", "oil and sawdust", "a tin of wood varnish"),
            ("flower stall", "the florist", "trimming stems of tulips", "damp leaves and roses",
             "a bunch of daffodils"),
            ("fishmonger's", "the fishmonger", "laying mackerel on crushed ice", "salt and seaweed", "two fresh trout"),
            ("bookshop", "the bookseller", "pricing a box of old atlases", "paper and coffee",
             "a secondhand field guide"),
            ("cheese shop", "the cheesemonger", "cutting a wheel of cheddar", "rind and cellar air",
             "a wedge of blue cheese"),
            ("tailor's", "the tailor", "chalking the hem of a coat", "steam and wool", "a mended jacket"),
            ("greengrocer's", "the grocer", "stacking crates of apples", "earth and citrus", "a bag of leeks")]
GT_SIGHTS = ["the war memorial", "a row of painted cottages", "the old canal lock", "a school crossing",
             "the closed cinema", "a churchyard full of yew trees", "the bus depot", "a pond with two swans",
             "the allotments", "a new mural of the harbour", "the library steps", "a queue at the post office"]
GT_TOPICS = ["the price of heating oil", "the summer fete", "a planning dispute over the old mill",
             "the football results", "a neighbour's new grandchild", "the road repairs", "the spring flower show",
             "a lost dog that had been found", "the choir's concert", "the late frost"]
GT_HABITATS = [  # (habitat, a month that suits what follows, animals, what they do, plants, what they do)
    ("salt marsh", "August", "wading birds", "probe the mud for worms", "sea lavender", "turn the creeks purple"),
    ("beech wood", "May", "chiffchaffs", "sing from the new canopy", "bluebells", "carpet the slopes"),
    ("chalk meadow", "June", "skylarks", "sing high above the grass", "orchids", "push up between the tussocks"),
    ("river valley", "October", "otters", "hunt along the shaded banks", "willows",
     "drop yellow leaves into the current"),
    ("upland moor", "August", "red grouse", "call from the heather", "the heather", "turns the hills purple"),
    ("sand dune", "July", "sand lizards", "bask on warm slopes", "marram grass", "holds the dunes in place"),
    ("old orchard", "September", "wasps", "feast on fallen apples", "the apple trees", "bend under their fruit"),
    ("coastal cliff", "June", "puffins", "nest in burrows on the ledges", "thrift", "cushions the cliff tops pink"),
]
GT_FEELINGS = ["busier and louder", "quieter and more golden", "wilder than before", "almost new",
               "restless with change", "calm and settled"]
GT_BUILDINGS = [("corn exchange", "a grain merchant", "a market hall for farmers", "a roller-skating rink",
                 "a theatre and cafe", "the carved wheat sheaves above the door"),
                ("railway hotel", "the railway company", "a hotel for travelling salesmen", "government offices",
                 "flats with a restaurant below", "the original tiled booking hall"),
                ("water mill", "a family of millers", "a flour mill", "a sawmill", "a small museum",
                 "the iron wheel still turning in the race"),
                ("fire station", "the town council", "the home of a horse-drawn engine", "a garage",
                 "a community arts centre", "the tall tower once used to dry hoses"),
                ("lifeboat house", "local fishermen", "a shelter for the rowing lifeboat", "a net store",
                 "a gallery of seascapes", "the slipway worn smooth by launches"),
                ("chapel", "a congregation of quarry workers", "a place of worship", "a furniture warehouse",
                 "a climbing wall", "the stained glass window of a lamb"),
                ("grammar school", "a wealthy wool trader", "a school for forty boys", "a wartime hospital",
                 "the town library", "names scratched into the schoolroom desks"),
                ("pumping station", "the water board", "the pumps that drained the fens", "a storage depot",
                 "a steam museum", "two beam engines painted green and gold")]
GT_TIMES = ["at first light", "in the late afternoon", "after a shower", "around midday"]
GT_STREETS = ["Market Street", "Mill Lane", "Harbour Road", "Church Walk", "Station Hill", "Bridge Street"]
GT_LEGENDS = ["a tunnel once ran from its cellar to the river", "a ghostly figure walks the top floor in winter",
              "a bag of gold coins is still hidden in the walls", "the first telephone in the county rang there",
              "a famous poet once spent a night in its attic", "its bell can be heard before every storm"]


def general_paragraphs(rng: random.Random) -> list[str]:
    paragraphs = []
    names = list(NAMES)
    for i in range(20):
        name, (shop, keeper, task, smell, purchase) = rng.choice(names), rng.choice(GT_SHOPS)
        sight_a, sight_b = rng.sample(GT_SIGHTS, 2)
        paragraphs.append(
            f"{name} left the house early on a {rng.choice(GT_WEATHER)} morning in {rng.choice(GT_MONTHS)}. The walk "
            f"to the {shop} took {rng.randint(5, 25)} minutes, past {sight_a} and {sight_b}. Inside, {keeper} was "
            f"already busy {task}, and the air smelled of {smell}. {name} bought {purchase} and stayed to talk "
            f"about {rng.choice(GT_TOPICS)} before heading home as the street began to fill.")
    for i in range(20):
        habitat, month, animals, action, plants, plant_action = rng.choice(GT_HABITATS)
        paragraphs.append(
            f"In {month} the {habitat} changes quickly. {animals.capitalize()} {action}, while "
            f"{plants} {plant_action}. Walkers who arrive {rng.choice(GT_TIMES)} "
            f"are most likely to notice it, and on {rng.choice(GT_WEATHER)} days the whole place looks different "
            f"again. By the end of the month the {habitat} feels {rng.choice(GT_FEELINGS)}, and the regular "
            f"visitors start to talk about what the next season will bring.")
    for i in range(20):
        building, founder, use1, use2, use3, detail = rng.choice(GT_BUILDINGS)
        street = rng.choice(GT_STREETS)
        paragraphs.append(
            f"The {building} on {street} was built in {rng.randint(1780, 1910)} by {founder}. For decades it served "
            f"as {use1}, and later, after years of decline, as {use2}. Today it houses {use3}, and visitors can "
            f"still see {detail}. Local people like to say that {rng.choice(GT_LEGENDS)}, although nobody has ever "
            f"found proof.")
    rng.shuffle(paragraphs)
    return paragraphs


# ------------------------------------------------------------------------------- assembly --
FILES = {"alpaca": "alpaca.json", "sharegpt": "sharegpt.jsonl", "openai": "openai.jsonl"}
EVAL_FILE = "eval/heldout_prompts.jsonl"
GENERAL_FILE = "general_text.jsonl"
PLANTED_FILE = "PLANTED.md"


@dataclass
class Samples:
    rows: dict[str, list[Row]]  # format -> rows in file order, locators set
    files: dict[str, str]  # path relative to the output folder -> text


def build() -> Samples:
    """Every sample file's text, plus the rows behind them (for tests and PLANTED.md)."""
    rng = random.Random(SEED)
    pool = {"conversation": conversation_convos(rng), "qa": qa_convos(rng), "code": code_convos(rng),
            "math": math_convos(rng), "creative": creative_convos(rng)}
    accented = Convo("qa", [("user", texts.ACCENTED_QA[0]), ("assistant", texts.ACCENTED_QA[1])])
    taken: set[int] = set()
    duplicate_plan = exact_duplicate_plan(pool, accented, rng, taken)
    near_originals = near_duplicate_originals(pool, taken)

    clean = [c for category in CATEGORIES for c in pool[category]] + [accented]
    pinned = {id(c) for c, _ in duplicate_plan}
    with_prompt = sum(1 for c in clean if c.turns[0][0] == "system")
    n_more = round(len(clean) * SYSTEM_PROMPT_SHARE) - with_prompt
    for convo in rng.sample([c for c in clean if id(c) not in pinned], n_more):
        with_system(convo, rng)
    for convo in clean:
        assign_format(convo, rng)
    row_of = {id(c): clean_row(c) for c in clean}

    special = [make(row_of[id(original)]) for original, make in duplicate_plan]
    for original in near_originals:
        variant, swaps = near_variant(original, rng)
        special.append(planted(variant.fmt, variant, "near_duplicate", f"{{ref}} with {', '.join(swaps)}",
                               "one of the pair dropped at dedup: near_duplicate", ref=row_of[id(original)]))
    special += simple_planted(rng) + malformed_rows()

    rows = {fmt: [row_of[id(c)] for c in clean if c.fmt == fmt] for fmt in FORMATS}
    for fmt in FORMATS:
        rng.shuffle(rows[fmt])
    for row in special:
        rows[row.fmt].insert(rng.randrange(len(rows[row.fmt]) + 1), row)
    for fmt, file_rows in rows.items():
        for position, row in enumerate(file_rows):
            row.locator = f"index {position}" if fmt == "alpaca" else f"line {position + 1}"

    files = {
        FILES["alpaca"]: json.dumps([r.payload for r in rows["alpaca"]], ensure_ascii=False, indent=2) + "\n",
        FILES["sharegpt"]: render_jsonl(rows["sharegpt"]),
        FILES["openai"]: render_jsonl(rows["openai"]),
        EVAL_FILE: "".join(json.dumps({"text": f"Question: {q}\nAnswer: {a}"}, ensure_ascii=False) + "\n"
                           for q, a in texts.EVAL_ITEMS),
        GENERAL_FILE: "".join(json.dumps({"text": p}, ensure_ascii=False) + "\n" for p in general_paragraphs(rng)),
    }
    files[PLANTED_FILE] = render_planted(rows)
    return Samples(rows, files)


def render_jsonl(rows: list[Row]) -> str:
    return "".join((r.raw_line if r.raw_line is not None else json.dumps(r.payload, ensure_ascii=False)) + "\n"
                   for r in rows)


def render_planted(rows: dict[str, list[Row]]) -> str:
    all_rows = [r for fmt in FORMATS for r in rows[fmt]]
    lines = [
        "# Planted cases in the sample data",
        "",
        "Written by `make_samples.py` (do not edit by hand: run `python data/samples/make_samples.py`).",
        "Locators are ingest's: `index N` = 0-based element of the alpaca JSON array, `line N` = 1-based",
        "line of a JSON Lines file. Expected outcomes assume the demo recipe",
        "(deployments/recipes/demo.yaml).",
        "",
        "## Rows per file",
        "",
        "| file | rows | clean | planted | " + " | ".join(f"clean {c}" for c in CATEGORIES) + " |",
        "|---|---|---|---|" + "---|" * len(CATEGORIES),
    ]
    for fmt in FORMATS:
        clean = [r for r in rows[fmt] if r.case == "clean"]
        per_category = [sum(1 for r in clean if r.convo.category == c) for c in CATEGORIES]
        lines.append(f"| {FILES[fmt]} | {len(rows[fmt])} | {len(clean)} | {len(rows[fmt]) - len(clean)} | "
                     + " | ".join(map(str, per_category)) + " |")
    n_clean = sum(1 for r in all_rows if r.case == "clean")
    n_system = sum(1 for r in all_rows if r.convo is not None and r.convo.turns[0][0] == "system")
    lines += [
        f"| total | {len(all_rows)} | {n_clean} | {len(all_rows) - n_clean} | "
        + " | ".join(str(sum(1 for r in all_rows if r.case == "clean" and r.convo.category == c)) for c in CATEGORIES)
        + " |",
        "",
        f"Categories are the generator's intent; normalize's rule-based classifier assigns the real ones. "
        f"{n_system} rows carry a system prompt.",
        "",
        "## Planted rows",
        "",
        "| file | row | case | what | expected outcome |",
        "|---|---|---|---|---|",
    ]
    for row in all_rows:
        if row.case == "clean":
            continue
        what = row.what.format(ref=f"{FILES[row.ref.fmt]} {row.ref.locator}" if row.ref else "")
        lines.append(f"| {FILES[row.fmt]} | {row.locator} | {row.case} | {what} | {row.expected} |")
    counts: dict[str, int] = {}
    for row in all_rows:
        counts[row.case] = counts.get(row.case, 0) + 1
    lines += ["", "## Counts by case", "", "| case | rows |", "|---|---|"]
    lines += [f"| {case} | {n} |" for case, n in sorted(counts.items())]
    return "\n".join(lines) + "\n"


def write_samples(out: Path) -> list[Path]:
    written = []
    for relative, text in build().files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in write_samples(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
