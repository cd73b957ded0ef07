"""N-gram decontamination: drop training rows that share a long word n-gram with an eval set.

Words are lowercase `\\w+` runs, so punctuation, case and whitespace never hide a copy. N-grams
are taken within one text (one turn, or one field of an eval row), never across turn
boundaries, and hashed to 64-bit integers: a set of millions of them stays small, and with
2^64 values an accidental collision between two different 13-grams is negligible.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tasks.core.hashing import sha256_file
from tasks.core.recipe import EvalSetConfig

WORD = re.compile(r"\w+")
DECON_ROLES = ("user", "assistant")  # prompts and answers can both leak an eval item


def words(text: str) -> list[str]:
    """
    >>> words("Hello, WORLD!  it's 42")
    ['hello', 'world', 'it', 's', '42']
    """
    return WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> set[int]:
    """Hashed word n-grams of one text; empty when it holds fewer than n words.

    >>> len(word_ngrams("a b c d", 3)), len(word_ngrams("a b", 3))
    (2, 0)
    >>> word_ngrams("A, b. C", 3) == word_ngrams("a b c", 3)
    True
    """
    tokens = words(text)
    return {
        int.from_bytes(hashlib.blake2b(" ".join(tokens[i : i + n]).encode(), digest_size=8).digest(), "big")
        for i in range(len(tokens) - n + 1)
    }


# ------------------------------------------------------------------------------ eval files --
class EvalSetError(ValueError):
    """An eval set file that cannot be read; the message names the file, row and field."""


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row locator, row) pairs: 1-based line for JSONL, 0-based index for JSON and Parquet."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalSetError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvalSetError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a .json eval set is one array of "
                "objects (use .jsonl for one object per line)"
            ) from None
        if not isinstance(data, list):
            raise EvalSetError(f"{path}: a .json eval set must be an array of objects")
        yield from enumerate(data)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist())
    else:
        raise EvalSetError(f"{path}: eval sets are .jsonl, .json or .parquet files, not {suffix or 'no suffix'!r}")


def _field(row: Any, name: str, where: str, required: bool = True) -> Any:
    if not isinstance(row, dict):
        raise EvalSetError(f"{where}: expected an object, found {type(row).__name__}")
    if row.get(name) is None and required:
        raise EvalSetError(f"{where}: missing field {name!r}")
    return row.get(name)


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        return "\n".join(p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise EvalSetError(f"{where}: expected text, found {type(value).__name__}")


def eval_row_texts(row: Any, fmt: str, where: str) -> list[str]:
    """The texts of one eval row whose n-grams count as the eval set's content."""
    if fmt == "text":
        return [_text(_field(row, "text", where), f"{where}.text")]
    if fmt == "alpaca":
        instruction = _text(_field(row, "instruction", where), f"{where}.instruction")
        extra = {name: _field(row, name, where, required=False) for name in ("input", "output")}
        texts = [instruction] + [_text(v, f"{where}.{k}") for k, v in extra.items() if v]
        if extra["input"]:
            # Training rows carry instruction and input in one user turn; n-grams spanning the
            # two would be missed if only the separate fields counted.
            texts.append(f"{instruction}\n\n{_text(extra['input'], f'{where}.input')}")
        return texts
    if fmt == "sharegpt":
        turns = _field(row, "conversations", where)
        return [_text(_field(t, "value", f"{where}.conversations[{i}]"), f"{where}.conversations[{i}].value")
                for i, t in enumerate(turns)]
    if fmt == "openai":
        messages = _field(row, "messages", where)
        return [_text(_field(m, "content", f"{where}.messages[{i}]", required=False) or "", f"{where}.messages[{i}]")
                for i, m in enumerate(messages)]
    raise EvalSetError(f"{where}: unknown eval set format {fmt!r}")


def eval_set_ngrams(path: Path, fmt: str, n: int) -> set[int]:
    """All n-grams of one eval set file."""
    found: set[int] = set()
    for locator, row in _read_rows(path):
        for text in eval_row_texts(row, fmt, f"{path}:{locator}"):
            found |= word_ngrams(text, n)
    return found


def load_eval_ngrams(
    eval_sets: list[EvalSetConfig], n: int, resolve: Callable[[str], Path]
) -> dict[str, set[int]]:
    """Eval set name -> its n-grams. Paths are confined by `resolve` (Workspace.resolve_input)."""
    loaded: dict[str, set[int]] = {}
    for index, eval_set in enumerate(eval_sets):
        if eval_set.name in loaded:
            raise EvalSetError(
                f"filters.decontaminate.eval_sets[{index}]: name {eval_set.name!r} is used twice; names must be unique"
            )
        path = resolve(eval_set.path)
        if not path.is_file():
            raise EvalSetError(
                f"filters.decontaminate.eval_sets[{index}] ({eval_set.name}): file not found: {path}"
            )
        loaded[eval_set.name] = eval_set_ngrams(path, eval_set.format, n)
    return loaded


def eval_set_fingerprints(eval_sets: list[EvalSetConfig], resolve: Callable[[str], Path]) -> list[str]:
    """sha256 of each eval set file, in recipe order: an edited eval file changes the cache key."""
    return [sha256_file(resolve(eval_set.path)) for eval_set in eval_sets]


# ---------------------------------------------------------------------------- training rows --
def message_ngrams(messages: Iterable[dict[str, Any]], n: int, roles: tuple[str, ...] = DECON_ROLES) -> set[int]:
    found: set[int] = set()
    for message in messages:
        if message.get("role") in roles and message.get("content"):
            found |= word_ngrams(message["content"], n)
    return found


def contamination_hits(
    messages: Iterable[dict[str, Any]], eval_ngrams: dict[str, set[int]], n: int
) -> dict[str, int]:
    """Eval set name -> number of distinct n-grams of the row's user and assistant turns it holds."""
    row = message_ngrams(messages, n)
    return {name: len(row & grams) for name, grams in eval_ngrams.items()}
