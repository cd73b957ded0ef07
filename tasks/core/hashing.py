"""Content hashes used for ids, cache keys and artifact integrity.

Everything that becomes part of a key goes through `canonical_json` first, so that key order,
whitespace and float spelling never change a hash (the meaning of "1" vs "1.0" is fixed by the
pydantic models before anything is hashed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson

HASH_CHARS = 32  # 128 bits of sha256: collision-free for any catalog we will ever hold


def canonical_json(value: Any) -> str:
    """Serialize with sorted keys and no whitespace.

    >>> canonical_json({"b": 1, "a": [1, 2]})
    '{"a":[1,2],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short_hash(*parts: Any) -> str:
    """Hash of the canonical JSON of `parts`, shortened to HASH_CHARS hex characters.

    >>> short_hash("alpaca", 3) == short_hash("alpaca", 3)
    True
    >>> len(short_hash("x"))
    32
    """
    return sha256_text(canonical_json(list(parts)))[:HASH_CHARS]


def texts_hash(value: list) -> str:
    """`short_hash(value)` of a value made only of lists, strings and None (a row's turns), from
    orjson's bytes: for such values they equal canonical_json's (tests compare every code point),
    and orjson writes them several times faster, which counts for a hash taken once per row.

    >>> texts_hash([["user", "Hi"], ["assistant", None]]) == short_hash([["user", "Hi"], ["assistant", None]])
    True
    """
    try:
        return hashlib.sha256(orjson.dumps([value])).hexdigest()[:HASH_CHARS]
    except orjson.JSONEncodeError:  # a lone surrogate, which orjson refuses: canonical_json's own path
        return short_hash(value)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """Hash of a folder: every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
