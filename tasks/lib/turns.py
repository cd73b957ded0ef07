"""Conversations' turns as flat columns, and the text normalization applied to each turn.

normalize (tasks/normalize.py) reads a records part's `messages` column once as flat Arrow and
Python columns (`Turns`): every turn's role and text, where each row's turns start, and each text
normalized by `normalize_text` (NFC, Windows line ends, edge whitespace). Why columns: a list of
{role, content} dicts per row costs more to build than the checks, hashes and classification
normalize runs on it (those run a column at a time where they can). normalize_text is also what
content_hash applies to every turn.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Trimmed from both ends of a turn: Unicode whitespace (`str.isspace`, the same test as the
# regex class `\s`) plus a byte-order mark (leaked from the start of a file) and zero-width
# spaces, which make a turn look empty to a reader while it is not empty to `str.strip`.
EXTRA_EDGE_CHARS = "\ufeff\u200b"


@functools.cache
def edge_chars() -> str:
    """Every character normalize_text trims, for `str.strip` (built on first use: it scans
    all code points, which an import should not pay for)."""
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) + EXTRA_EDGE_CHARS


def normalize_text(text: str) -> str:
    """Unicode NFC, Windows line ends to "\\n", and no leading/trailing whitespace.

    Inner whitespace is content (indentation in code, blank lines in poems) and stays.

    >>> normalize_text("  caf\\u0065\\u0301\\r\\nbar \\n")
    'café\\nbar'
    """
    if not text.isascii():  # ASCII text is already NFC
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.strip(edge_chars())


class Turns:
    """Every row's turns as flat columns, rows in order: turn j belongs to row `row[j]`; a row's
    turns are `start[i]` to `start[i] + length[i]`. A null message list has no turns; a null
    role or text reads as "" (as normalize_messages reads them)."""

    def __init__(self, records: pa.Table):
        n_rows = records.num_rows
        if "messages" in records.schema.names and n_rows:
            lists = records.column("messages").combine_chunks()
            self.length = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
            turns = pc.list_flatten(lists)
            fields = dict(zip([f.name for f in turns.type], turns.flatten()))  # flatten: struct nulls too
            n_turns = len(turns)
            roles = fields.get("role", pa.nulls(n_turns, pa.string()))
            contents = fields.get("content", pa.nulls(n_turns, pa.string()))
        else:
            self.length = np.zeros(n_rows, dtype=np.int64)
            roles = contents = pa.array([], pa.string())
        self.start = np.cumsum(self.length) - self.length
        self.row = np.repeat(np.arange(n_rows), self.length)
        self.roles = pc.fill_null(roles.cast(pa.string()), "")
        self.role_list = self.roles.to_pylist()
        stored = pc.fill_null(contents.cast(pa.string()), "")
        self.raw = stored.to_pylist()  # the texts as stored
        # Only a text that is not ASCII, holds "\r" or starts or ends with whitespace can change;
        # normalize_text runs on those alone. `hashed` is the text content_hash hashes:
        # normalize_text of the normalized text.
        maybe = [j for j, text in enumerate(self.raw)
                 if text and (not text.isascii() or "\r" in text or text[0].isspace() or text[-1].isspace())]
        self.text_list, self.hashed = list(self.raw), list(self.raw)
        changed = np.zeros(len(self.raw), dtype=bool)
        for j in maybe:
            text = normalize_text(self.raw[j])
            if text != self.raw[j]:
                self.text_list[j], changed[j] = text, True
            self.hashed[j] = normalize_text(text) if "\r" in text or not text.isascii() else text
        self.texts = stored
        if changed.any():
            replacements = pa.array([self.text_list[j] for j in np.flatnonzero(changed).tolist()], pa.string())
            self.texts = pc.replace_with_mask(stored, pa.array(changed), replacements)

    def messages(self, index: int) -> list[dict[str, Any]]:
        """Row `index` as stored (what validate_messages reads)."""
        span = range(self.start[index], self.start[index] + self.length[index])
        return [{"role": self.role_list[j], "content": self.raw[j]} for j in span]

    def index(self, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The flat positions of the first `counts[i]` turns of each row `rows[i]`, in order."""
        ends = np.cumsum(counts)
        return np.repeat(self.start[rows] - (ends - counts), counts) + np.arange(ends[-1] if len(ends) else 0)
