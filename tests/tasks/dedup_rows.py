"""Rows the dedup and MinHash tests share: normalized records of random words, near copies graded
by how many words were edited, and the recipe's default dedup section."""

from __future__ import annotations

import random

import pyarrow as pa

from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.recipe_data import DedupConfig
from tests.stage_helpers import records_from_rows

CFG = DedupConfig()  # the recipe defaults: threshold 0.8, 128 perms, 5-grams, bands derived (13 x 7)

_rng = random.Random(7)
VOCAB = sorted({"".join(_rng.choices("abcdefghijklmnopqrstuvwxyz", k=_rng.randint(3, 8))) for _ in range(3000)})


def words(n: int, seed: int) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def record(example_id: str, text: str, prompt: str = "Please answer.", **extra) -> dict:
    """One normalized row: RECORD_SCHEMA columns filled, content_hash from the messages."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    return {
        "example_id": example_id,
        "content_hash": short_hash(messages),
        "source": "test",
        "source_format": "openai",
        "source_uri": "memory://test",
        "source_row": 0,
        "category": "qa",
        "origin": "human",
        "license": "cc0",
        "messages": messages,
        **extra,
    }


def table(rows: list[dict]) -> pa.Table:
    return records_from_rows(rows)


TEXT_A = " ".join(words(60, seed=1))
TEXT_B = " ".join(words(60, seed=2))


def graded_rows(n_pairs: int = 40) -> list[dict]:
    """Pairs 1 to 7 spread-out word edits apart (Jaccard ~0.92 down to ~0.55), an exact copy, a short row."""
    rows = []
    for k in range(n_pairs):
        text = words(120, seed=3000 + k)
        edited = list(text)
        n_edits = 1 + k // 6
        for position in range(0, 120, 120 // n_edits)[:n_edits]:
            edited[position + k % 7] = f"edit{position}"
        rows += [record(f"g{k:02d}a", " ".join(text)), record(f"g{k:02d}b", " ".join(edited))]
    rows += [record("copy", rows[0]["messages"][1]["content"]), record("short", "ok")]
    return rows
