"""Seeded corpora for decontamination: eval items long and short, copied verbatim into training rows.

Shared by tests/tasks/lib/test_decontaminate.py and the before/after measurement in the closing note.
Words are pseudo-words drawn with Zipf frequencies (a few very common "function words", a long
tail), so items and clean rows share common words and short runs of them as real text does.
Everything is generated from a `random.Random(seed)`; no file, no network.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ra", "to", "vi", "de", "po", "ga", "chu", "bel", "sin", "tor", "an"]
BOILERPLATE = (  # 16 words, in every item of the boilerplate eval set: its 13-grams are in every item
    "Answer the following question about general knowledge with one short sentence and explain your reasoning."
)


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


class Writer:
    """Zipf-distributed pseudo-word sentences."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.words = vocabulary(self.rng)
        self.cum_weights = list(itertools.accumulate(1 / rank for rank in range(1, len(self.words) + 1)))

    def words_of(self, n_words: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum_weights, k=n_words))

    def sentence(self, n_words: int) -> str:
        text = self.words_of(n_words)
        return text[0].upper() + text[1:] + self.rng.choice([".", "?", "!", ";"])

    def paragraph(self, n_min: int, n_max: int) -> str:
        n_words, sentences = self.rng.randint(n_min, n_max), []
        while n_words > 0:
            k = min(n_words, self.rng.randint(6, 18))
            sentences.append(self.sentence(k))
            n_words -= k
        return " ".join(sentences)


def chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def eval_items(writer: Writer, n_long: int = 60, n_short: int = 100) -> list[str]:
    """Long items (20-40 words) and short ones (3-12 words, every length about equally often)."""
    items = [writer.sentence(writer.rng.randint(20, 40)) for _ in range(n_long)]
    items += [writer.sentence(3 + i % 10) for i in range(n_short)]
    return items


def copies(writer: Writer, item: str) -> list[list[dict]]:
    """Two training rows holding `item` verbatim: as a whole user turn, and inside a longer turn
    (user or assistant, at a random place, sometimes in capitals)."""
    rng = writer.rng
    whole = chat(item, writer.paragraph(30, 120))
    shown = item.upper() if rng.random() < 0.2 else item
    inside = f"{writer.paragraph(10, 80)} {shown} {writer.paragraph(10, 80)}"
    embedded = chat(inside, writer.paragraph(30, 120)) if rng.random() < 0.5 else chat(writer.sentence(12), inside)
    return [whole, embedded]


def clean_rows(writer: Writer, n_rows: int) -> list[list[dict]]:
    return [chat(writer.paragraph(8, 40), writer.paragraph(40, 200)) for _ in range(n_rows)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------ real alpaca rows --
def alpaca_prompt(row: dict) -> str:
    """The user turn ingest builds from an Alpaca row (sftflow.tasks.lib.formats.alpaca_messages)."""
    return f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]


def alpaca_split(n_eval: int = 150, seed: int = 13) -> tuple[list[dict], list[dict]]:
    """(eval rows, training rows) of ../shared/data/alpaca_en_demo.json, split at random."""
    rows = json.loads((SHARED_DATA / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n_eval]], [rows[i] for i in order[n_eval:]]
