"""N-gram decontamination: drop training rows that share a long word n-gram with an eval set.

Words are lowercase `\\w+` runs, so punctuation, case and whitespace never hide a copy. N-grams
are taken within one text (one turn, or one field of an eval row), never across turn
boundaries, and hashed to 64-bit integers: a set of millions of them stays small, and with
2^64 values an accidental collision between two different 13-grams is negligible.

Eval set files are read by ingest's readers, so they accept the files sources accept (.jsonl,
.ndjson, .json array or JSON Lines, .parquet; a UTF-8 BOM is fine). Unlike a source row, an eval
row that does not parse stops the run with the file and line to fix.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tasks.core.hashing import sha256_file
from tasks.core.recipe import EvalSetConfig
from tasks.ingest import FILE_SUFFIXES, RawRow, SourceError, iter_file_rows

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


def _row_place(path: Path, row: RawRow) -> str:
    """"e.jsonl:41", "e.json:41 (index 7)" or "e.parquet (index 7)": where to look in the file."""
    if row.line is None:
        return f"{path} ({row.location})"
    if row.location == f"line {row.line}":
        return f"{path}:{row.line}"
    return f"{path}:{row.line} (index {row.source_row})"


def read_eval_rows(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    """(place, row) pairs, read by ingest's readers so eval sets accept the files sources accept.

    An eval set is a curated input: a row that does not parse stops the run instead of being
    skipped, since a skipped eval row would let its copies into the training data unnoticed.
    """
    try:
        for row in iter_file_rows(path, where):
            place = _row_place(path, row)
            if row.problem is not None:
                raise EvalSetError(f"{place}: {row.problem.message}; fix the eval set file there")
            yield place, row.value
    except SourceError as exc:  # the whole file is unreadable
        raise EvalSetError(str(exc)) from None


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


def eval_set_ngrams(path: Path, fmt: str, n: int, where: str | None = None) -> set[int]:
    """All n-grams of one eval set file; `where` names it in file-level errors (default: the path)."""
    found: set[int] = set()
    for place, row in read_eval_rows(path, where or str(path)):
        for text in eval_row_texts(row, fmt, place):
            found |= word_ngrams(text, n)
    return found


def eval_set_file(index: int, eval_set: EvalSetConfig, resolve: Callable[[str], Path]) -> Path:
    """The eval set's file, confined by `resolve` (Workspace.resolve_input); EvalSetError naming
    the recipe field to fix when it is missing or of a kind that cannot be read."""
    path = resolve(eval_set.path)
    field = f"filters.decontaminate.eval_sets[{index}]"
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "file not found"
        raise EvalSetError(
            f"{field} ({eval_set.name}): {what}: {path}; fix `{field}.path` (relative to the project root)"
        )
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise EvalSetError(
            f"{field} ({eval_set.name}): {path}: eval sets are .jsonl, .ndjson, .json or .parquet files, "
            f"not {suffix or 'no suffix'!r}; convert the file or fix `{field}.path`"
        )
    return path


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
        path = eval_set_file(index, eval_set, resolve)
        where = f"filters.decontaminate.eval_sets[{index}] ({eval_set.name}): {path}"
        loaded[eval_set.name] = eval_set_ngrams(path, eval_set.format, n, where)
    return loaded


def eval_set_fingerprints(eval_sets: list[EvalSetConfig], resolve: Callable[[str], Path]) -> list[str]:
    """sha256 of each eval set file, in recipe order: an edited eval file changes the cache key."""
    return [sha256_file(eval_set_file(index, eval_set, resolve)) for index, eval_set in enumerate(eval_sets)]


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
