"""Decontamination: drop training rows that hold an eval item, by n-grams or, for short items, whole.

Texts are split into units by `sftflow.tasks.lib.text_units` (lowercase `\\w+` words; one unit per character
in Chinese, Japanese, Thai and the other scripts written without spaces), so punctuation, case
and whitespace never hide a copy, and a Chinese question is matched like an English one.

Two kinds of keys are taken from each eval set, always within one text (one turn, or one field
of an eval row), never across turn boundaries:

- **n-grams** of every eval text of at least `ngram` units (prompts and answers), hashed to
  64-bit integers: a set of millions of them stays small, and with 2^64 values an accidental
  collision between two different 13-grams is negligible. The hash is Python's own string hash
  (SipHash, about 20 times faster than a hashlib digest per n-gram of every training turn); it
  is salted per process, so an index is built and used in one process and never stored;
- **whole items**: an eval prompt (a `text` row, an Alpaca instruction with its input, a user
  turn) without a usable n-gram (shorter than `ngram` units, or its own text too short next to
  template text) is matched by its whole unit sequence, as a contiguous run of units anywhere
  in a training turn. Prompts with fewer than `min_item_units` units of their own are not used
  (a two-word question is in too many unrelated rows to mean a leak); *answers* are never whole
  keys ("Paris", "The answer is 4" are not evidence).

Template text (a shared instruction line, a subject preamble) is in many items of one eval set
and in many clean training rows that use the same template. A run of `template_run_units(n)`
units (half an n-gram) found in more than `max_ngram_item_fraction` of a set's distinct items,
or in more than `max_ngram_items` of them, marks its units as template; an n-gram is used only
when at least half of its units are the item's own text, so neither the template line nor the
template line plus a common first word of the question ("... step by step. What") is a key.
A whole prompt repeated by more items than that limit is not used either. Exact repeats of an
item count once.

A training row is contaminated when its user or assistant turns hold one used key; the decision
names the eval set and the item (file:line) of the first matches.

Eval set files are read by tasks/lib/eval_files.py with the sources' readers, so they accept the
files sources accept (.jsonl, .ndjson, .json array or JSON Lines, .parquet; a UTF-8 BOM is fine);
a turn is a prompt when the sources' role table (tasks/lib/formats.py) maps its speaker to user.
Unlike a source row, an eval row that does not parse stops the run with the file and line to fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, islice
from operator import and_
from pathlib import Path
from typing import Any, Callable, Iterable

from sftflow.tasks.core.hashing import sha256_file
from sftflow.tasks.core.recipe_filters import DecontaminateConfig, EvalSetConfig
from sftflow.tasks.lib.eval_files import EvalSetError, eval_row_parts, read_eval_rows
from sftflow.tasks.lib.readers import FILE_SUFFIXES
from sftflow.tasks.lib.text_units import text_units

DECON_ROLES = ("user", "assistant")  # prompts and answers can both leak an eval item
MAX_MATCHES_RECORDED = 5  # distinct eval items named in one decision's detail; hit counts are complete


def ngram_check_offsets(n: int) -> tuple[int, int, int]:
    """Offsets of the units a training n-gram is checked at before it is hashed: first, middle, last.

    >>> ngram_check_offsets(13)
    (0, 6, 12)
    """
    return (0, n // 2, n - 1)


def _key_hash(joined_units: str) -> int:
    """64-bit key of a space-joined unit run; stable within this process only (see above)."""
    return hash(joined_units)


def unit_ngrams(text: str, n: int) -> set[int]:
    """Hashed unit n-grams of one text; empty when it holds fewer than n units.

    >>> len(unit_ngrams("a b c d", 3)), len(unit_ngrams("a b", 3))
    (2, 0)
    >>> unit_ngrams("A, b. C", 3) == unit_ngrams("a b c", 3)
    True
    >>> len(unit_ngrams("天气很好", 3))  # one unit per Han character
    2
    """
    units = text_units(text)
    return {_key_hash(" ".join(units[i : i + n])) for i in range(len(units) - n + 1)}


# ------------------------------------------------------------------------------ eval index --
def key_item_limit(n_items: int, max_fraction: float, max_items: int | None) -> int:
    """The most distinct items of one set a key may be found in and still be used (at least 1).

    >>> key_item_limit(20, 0.1, 50), key_item_limit(5, 0.1, 50), key_item_limit(14_000, 0.1, 50)
    (2, 1, 50)
    >>> key_item_limit(100, 1.0, None)
    100
    """
    limit = int(n_items * max_fraction + 1e-9)
    if max_items is not None:
        limit = min(limit, max_items)
    return max(1, limit)


def template_run_units(n: int) -> int:
    """Length of the runs that detect template text: half an n-gram, rounded up.

    An n-gram is used only when at least this many of its units are not template text, so a
    shared instruction line plus a common first word of the question ("... step by step. What")
    is never a key. Templates shorter than this go undetected, but then every n-gram touching
    them holds at least n - this many units of the item's own text.

    >>> template_run_units(13), template_run_units(8), template_run_units(3)
    (7, 4, 2)
    """
    return (n + 1) // 2


@dataclass
class EvalSetIndex:
    """The used keys of one eval set, each mapped to the first distinct item holding it."""

    name: str
    places: list[str]  # item number -> "file:line"
    ngrams: dict[int, int]  # hashed n-gram -> item number
    whole: dict[str, int]  # the unit sequence of a prompt without n-grams, space-joined -> item number
    stats: dict[str, int]
    # offset -> the units at that offset (first, middle, last) of every used n-gram: a training
    # n-gram is hashed only when its own units there are among them (EvalIndex.turn_keys)
    ngram_units_at: dict[int, set[str]] = field(default_factory=dict)


def _template_mask(units: list[str], t: int, is_template: Callable[[int], bool]) -> list[int]:
    """1 for each unit covered by a template run of t units, else 0."""
    mask = [0] * len(units)
    for i in range(len(units) - t + 1):
        if is_template(_key_hash(" ".join(units[i : i + t]))):
            mask[i : i + t] = [1] * t
    return mask


def build_eval_set_index(
    name: str, rows: Iterable[tuple[str, Any]], fmt: str, cfg: DecontaminateConfig
) -> EvalSetIndex:
    """Keys of one eval set from its (place, row) pairs; see the module docstring for the rules.

    >>> cfg = DecontaminateConfig(ngram=4, min_item_units=2)
    >>> rows = [("e:1", {"text": "Say hi"}), ("e:2", {"text": "Say hi"}), ("e:3", {"text": "no"}),
    ...         ("e:4", {"text": "one two three four five"})]
    >>> index = build_eval_set_index("e", rows, "text", cfg)
    >>> index.whole, len(index.ngrams), index.places
    ({'say hi': 0}, 2, ['e:1', 'e:3', 'e:4'])
    >>> index.stats["duplicate_items"], index.stats["items_without_keys"]
    (1, 1)
    """
    n, t = cfg.ngram, template_run_units(cfg.ngram)
    places: list[str] = []
    items: list[list[tuple[list[str], bool]]] = []
    seen: set[tuple[str, ...]] = set()
    duplicates = 0
    run_items: Counter[int] = Counter()  # hashed t-unit run -> distinct items holding it
    for place, row in rows:
        parts = [(text_units(text), is_prompt) for text, is_prompt in eval_row_parts(row, fmt, place)]
        fingerprint = tuple(" ".join(units) for units, _ in parts)
        if fingerprint in seen:  # an exact repeat is one item: it must not make its own text "template"
            duplicates += 1
            continue
        seen.add(fingerprint)
        places.append(place)
        items.append(parts)
        run_items.update({_key_hash(" ".join(u[i : i + t])) for u, _ in parts for i in range(len(u) - t + 1)})

    limit = key_item_limit(len(places), cfg.max_ngram_item_fraction, cfg.max_ngram_items)
    frequent = {run for run, count in run_items.items() if count > limit}
    ngrams: dict[int, int] = {}
    units_at: dict[int, set[str]] = {offset: set() for offset in ngram_check_offsets(n)}
    whole_keys: list[set[str]] = []
    with_ngrams: set[int] = set()
    with_template = 0
    for item, parts in enumerate(items):
        wholes: set[str] = set()
        templated = False
        for units, is_prompt in parts:
            mask = _template_mask(units, t, frequent.__contains__) if frequent else [0] * len(units)
            templated |= any(mask)
            covered = [0]  # prefix sums of the mask: template units in units[:i]
            for m in mask:
                covered.append(covered[-1] + m)
            has_ngram = False
            for i in range(len(units) - n + 1):
                if n - (covered[i + n] - covered[i]) >= t:  # enough of the item's own text
                    ngrams.setdefault(_key_hash(" ".join(units[i : i + n])), item)
                    for offset, seen_there in units_at.items():
                        seen_there.add(units[i + offset])
                    has_ngram = True
            if has_ngram:
                with_ngrams.add(item)
            elif is_prompt and len(units) - covered[-1] >= cfg.min_item_units:
                wholes.add(" ".join(units))
        with_template += templated
        whole_keys.append(wholes)

    # A prompt repeated word for word by many items ("Continue.", an instruction-only template)
    # says nothing about which item leaked.
    whole_items: Counter[str] = Counter(key for keys in whole_keys for key in keys)
    whole: dict[str, int] = {}
    keyed_items = set(with_ngrams)
    for item, keys in enumerate(whole_keys):
        for key in keys:
            if whole_items[key] <= limit:
                whole.setdefault(key, item)
                keyed_items.add(item)
    stats = {
        "items": len(places),
        "duplicate_items": duplicates,
        "ngrams": len(ngrams),
        "whole_items": len(whole),
        "key_item_limit": limit,
        "template_run_units": t,
        "items_with_template_text": with_template,
        "frequent_whole_items_ignored": sum(1 for c in whole_items.values() if c > limit),
        "items_without_keys": len(places) - len(keyed_items),  # too short (< min_item_units), or all template
    }
    return EvalSetIndex(name=name, places=places, ngrams=ngrams, whole=whole, stats=stats,
                        ngram_units_at=units_at)


@dataclass
class RowMatch:
    """What one training row holds of the eval sets."""

    hits_by_set: dict[str, int]  # set name -> distinct keys found (n-grams + whole items)
    matches: list[dict[str, str]]  # up to MAX_MATCHES_RECORDED {"eval_set", "item", "by"}

    @property
    def hits(self) -> int:
        return sum(self.hits_by_set.values())


@dataclass
class EvalIndex:
    """All eval sets' keys, with what a training turn needs to look them up quickly."""

    n: int
    sets: dict[str, EvalSetIndex] = field(default_factory=dict)
    # First unit of any used whole item -> the item lengths starting with it: a turn is cut into
    # candidate runs only where such a unit stands, and only at lengths some item has.
    whole_lengths_by_first_unit: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ngram_units_at: dict[int, set[str]] = field(default_factory=dict)  # over every set's used n-grams

    def __getstate__(self) -> None:
        raise TypeError("an EvalIndex is keyed by this process's string hash: build it where it is used")

    def __post_init__(self) -> None:
        lengths: dict[str, set[int]] = {}
        for index in self.sets.values():
            for key in index.whole:
                units = key.split(" ")
                lengths.setdefault(units[0], set()).add(len(units))
        self.whole_lengths_by_first_unit = {u: tuple(sorted(ks)) for u, ks in lengths.items()}
        self.ngram_units_at = {
            offset: set().union(*(index.ngram_units_at.get(offset, ()) for index in self.sets.values()))
            for offset in ngram_check_offsets(self.n)
        }

    def __bool__(self) -> bool:
        return bool(self.sets)

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: index.stats for name, index in self.sets.items()}

    def turn_keys(self, text: str) -> tuple[set[int], set[str]]:
        """(hashed n-grams that may be keys, candidate whole-item runs) of one training turn.

        An n-gram equal to a key has that key's units at every offset, so only n-grams whose
        first, middle and last units are among the keys' there are joined and hashed: most of a
        turn's n-grams are skipped by three set lookups each (in C, by map and compress). The keys found
        are the same; only an n-gram whose 64-bit hash collides with a key's without being equal
        to it (negligible, see `_key_hash`) is no longer a false hit.
        """
        units = text_units(text)
        n = self.n
        first, middle, last = (map(self.ngram_units_at[offset].__contains__, islice(units, offset, None))
                               for offset in ngram_check_offsets(n))
        may_be_keys = map(and_, map(and_, first, middle), last)  # stops at the last n-gram's start
        grams = {_key_hash(" ".join(units[i : i + n])) for i in compress(range(len(units)), may_be_keys)}
        runs: set[str] = set()
        if self.whole_lengths_by_first_unit:
            for i, unit in enumerate(units):
                for k in self.whole_lengths_by_first_unit.get(unit, ()):
                    if i + k > len(units):
                        break  # lengths are sorted
                    runs.add(" ".join(units[i : i + k]))
        return grams, runs

    def match(self, messages: Iterable[dict[str, Any]], roles: tuple[str, ...] = DECON_ROLES) -> RowMatch:
        """The eval keys in the row's `roles` turns, by set, and the first items matched."""
        grams: set[int] = set()
        runs: set[str] = set()
        for message in messages:
            if message.get("role") in roles and message.get("content"):
                turn_grams, turn_runs = self.turn_keys(message["content"])
                grams |= turn_grams
                runs |= turn_runs
        hits_by_set: dict[str, int] = {}
        matches: list[dict[str, str]] = []
        for name, index in self.sets.items():
            gram_hits = [g for g in grams if g in index.ngrams]
            whole_hits = [r for r in runs if r in index.whole]
            hits_by_set[name] = len(gram_hits) + len(whole_hits)
            items = {index.ngrams[g]: "ngram" for g in gram_hits}
            for run in whole_hits:
                items.setdefault(index.whole[run], "whole_item")
            for item in sorted(items)[: max(0, MAX_MATCHES_RECORDED - len(matches))]:
                matches.append({"eval_set": name, "item": index.places[item], "by": items[item]})
        return RowMatch(hits_by_set=hits_by_set, matches=matches)


def eval_set_file(index: int, eval_set: EvalSetConfig, resolve: Callable[[str], Path]) -> Path:
    """The eval set's file, confined by `resolve` (Workspace.resolve_input); EvalSetError naming
    the recipe field to fix when it is missing or of a kind that cannot be read."""
    path = resolve(eval_set.path)
    field_name = f"filters.decontaminate.eval_sets[{index}]"
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "file not found"
        raise EvalSetError(
            f"{field_name} ({eval_set.name}): {what}: {path}; fix `{field_name}.path` (relative to the project root)"
        )
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise EvalSetError(
            f"{field_name} ({eval_set.name}): {path}: eval sets are .jsonl, .ndjson, .json or .parquet files, "
            f"not {suffix or 'no suffix'!r}; convert the file or fix `{field_name}.path`"
        )
    return path


def load_eval_index(cfg: DecontaminateConfig, resolve: Callable[[str], Path]) -> EvalIndex:
    """Every eval set's keys. Paths are confined by `resolve` (Workspace.resolve_input); items
    are named by the recipe's path, so decisions read the same wherever the project lives."""
    sets: dict[str, EvalSetIndex] = {}
    for index, eval_set in enumerate(cfg.eval_sets):
        if eval_set.name in sets:
            raise EvalSetError(
                f"filters.decontaminate.eval_sets[{index}]: name {eval_set.name!r} is used twice; names must be unique"
            )
        path = eval_set_file(index, eval_set, resolve)
        where = f"filters.decontaminate.eval_sets[{index}] ({eval_set.name}): {path}"
        rows = read_eval_rows(path, where, shown_as=eval_set.path)
        sets[eval_set.name] = build_eval_set_index(eval_set.name, rows, eval_set.format, cfg)
    return EvalIndex(n=cfg.ngram, sets=sets)


def eval_set_fingerprints(eval_sets: list[EvalSetConfig], resolve: Callable[[str], Path]) -> list[str]:
    """sha256 of each eval set file, in recipe order: an edited eval file changes the cache key."""
    return [sha256_file(eval_set_file(index, eval_set, resolve)) for index, eval_set in enumerate(eval_sets)]
