"""The text near-dedup compares: the contents of a row's turns in `dedup.near.roles`, cut into
shingles (n-grams of tasks/lib/text_units.py units), and the assistant text units that the
`longest_response` survivor rule measures.

Written here because datasketch hashes sets of bytes and leaves shingling to its caller. Units are
lowercase words, or single characters in scripts written without spaces; a row written mostly in
such characters gets `ngram_unspaced`-character shingles instead of `ngram`-word ones.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sftflow.tasks.core.recipe_data import NearDedupConfig
from sftflow.tasks.lib.text_units import text_units, unspaced_char_count


def conversation_text(messages: Iterable[dict[str, Any]] | None, roles: Sequence[str] | str = "all") -> str:
    """The contents of the turns whose role is in `roles` (`all`: every turn), joined.

    Roles themselves are left out, so a reformatted dialogue still matches.

    >>> turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    ...          {"role": "assistant", "content": "Hello!"}]
    >>> conversation_text(turns)
    'Be brief.\\nHi\\nHello!'
    >>> conversation_text(turns, ["user", "assistant", "tool"])
    'Hi\\nHello!'
    """
    every = roles == "all"
    return "\n".join(turn.get("content") or "" for turn in (messages or []) if every or turn.get("role") in roles)


def response_units(messages: Iterable[dict[str, Any]] | None) -> int:
    """Text units in the assistant turns: the `longest_response` survivor rule's measure.

    >>> response_units([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there! 你好"}])
    4
    """
    return sum(len(text_units(t.get("content") or "")) for t in (messages or []) if t.get("role") == "assistant")


def shingles(text: str, n: int, n_unspaced: int | None = None) -> list[bytes]:
    """Distinct n-grams of the text units of `text` (tasks/lib/text_units.py), as UTF-8 bytes.

    Units are lowercase words, or single characters in scripts written without spaces; when
    `n_unspaced` is given and most units are such characters, the n-grams are `n_unspaced`
    long instead of `n`. Bytes because datasketch's default hash (SHA-1) takes bytes; order of
    first appearance keeps the output deterministic (MinHash itself does not care about order).

    >>> shingles("The cat sat. The cat sat!", 3)
    [b'the cat sat', b'cat sat the', b'sat the cat']
    >>> shingles("too short", 3)
    []
    >>> [gram.decode() for gram in shingles("请写一首诗", 5, n_unspaced=3)]
    ['请 写 一', '写 一 首', '一 首 诗']
    """
    units = text_units(text)
    unspaced = unspaced_char_count(text) if n_unspaced is not None else 0
    return unit_shingles(units, n_unspaced if n_unspaced is not None and 2 * unspaced > len(units) else n)


def unit_shingles(units: Sequence[str], n: int) -> list[bytes]:
    """Distinct runs of `n` consecutive units, joined by spaces, in order of first appearance."""
    grams = map(" ".join, zip(*(units[i:] for i in range(n))))
    return [gram.encode("utf-8") for gram in dict.fromkeys(grams)]


def row_features(messages: Iterable[dict[str, Any]] | None, cfg: NearDedupConfig) -> tuple[list[bytes], int]:
    """(the shingles near-dedup compares, assistant text units) of one row, each turn split into
    units once: the shingles are those of `conversation_text(messages, cfg.roles)` (units never
    span the newline between turns), the count is `response_units`."""
    every = cfg.roles == "all"
    units: list[str] = []
    n_unspaced = n_response = 0
    for turn in messages or []:
        role, content = turn.get("role"), turn.get("content") or ""
        compared = every or role in cfg.roles
        if not compared and role != "assistant":
            continue
        turn_units = text_units(content)
        if role == "assistant":
            n_response += len(turn_units)
        if compared:
            units += turn_units
            n_unspaced += unspaced_char_count(content)
    n = cfg.ngram_unspaced if 2 * n_unspaced > len(units) else cfg.ngram
    return unit_shingles(units, n), n_response


def row_shingles(messages: Iterable[dict[str, Any]] | None, cfg: NearDedupConfig) -> list[bytes]:
    """The shingles near-dedup compares for one row under `cfg` (roles, ngram, ngram_unspaced).

    >>> from sftflow.tasks.core.recipe_data import NearDedupConfig
    >>> turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi twice."},
    ...          {"role": "assistant", "content": "Hi! Hi!"}]
    >>> row_shingles(turns, NearDedupConfig(ngram=4)) == shingles("Say hi twice. Hi! Hi!", 4)
    True
    """
    return row_features(messages, cfg)[0]
