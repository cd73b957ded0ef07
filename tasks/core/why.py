"""Why a stage computes: which of its key inputs changed against the newest artifact of that
stage for the same recipe (and source).

A key hashes the stage's code (module by module), the recipe section it reads, its input
artifacts' data hashes, the files and models it reads, and library versions
(`StageCall.key_inputs`, kept in every manifest and in `artifacts.key_inputs`). Comparing two such
records names what changed: `recipe filters.toxicity.threshold: 0.5 -> 0.3`, `code
sftflow.tasks.filters`, `input dedup`, `source file`, `library torch 2.13.0 -> 2.14.0`. The same
comparison answers `sftflow plan` before a run and is recorded in `stage_runs.why` for every
stage a run computes.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from sftflow.tasks.core import stages

# Reason kinds, in the order they are listed.
KINDS = ("first", "unrecorded", "missing", "logic", "recipe", "source", "file", "code", "library", "input", "order")
MAX_VALUE_CHARS = 60  # a long list in a recipe field is cut in the text, never in the JSON


def _recipe_prefix(stage: str, label: str) -> str:
    """Where a stage's config sits in the recipe: `filters.`, `sources[alpaca].`, or nothing
    (evaluate reads `eval` and `max_length` itself)."""
    spec = next((s for s in stages.STAGES if s.name == stage), None)
    section = spec.recipe_section if spec is not None and spec.recipe_section is not None else stage
    if section == "sources":
        return f"sources[{label}]."
    return f"{section}." if section else ""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted fields of a nested config; lists are one value.

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    if not isinstance(config, dict) or not config:
        return {prefix.rstrip("."): config} if prefix else {}
    out: dict[str, Any] = {}
    for name, value in config.items():
        out.update(flatten(value, f"{prefix}{name}."))
    return out


def _external_name(stage: str, index: int, entry: dict[str, str]) -> str:
    """An external input's name: the one its plan gave, else what its value says (`device=cpu`,
    `tokenizer=...`, `pkg==1.0`), else its place in the stage's list."""
    if entry.get("name"):
        return entry["name"]
    value = entry["value"]
    for separator in ("==", "=", ": "):
        if separator in value:
            return value.split(separator, 1)[0]
    return f"{stage} input file #{index}"


def input_name(stage: str, label: str) -> str:
    return f"{stage}[{label}]" if label else stage


def _named(pairs: Any) -> dict[str, str]:
    """(name, value) pairs as a dict; a repeated name (two eval sets) gets a prime per repeat."""
    named: dict[str, str] = {}
    for name, value in pairs:
        while name in named:
            name += "'"
        named[name] = value
    return named


def _externals(stage: str, key_inputs: dict[str, Any]) -> dict[str, str]:
    return _named((_external_name(stage, i, e), e["value"]) for i, e in enumerate(key_inputs.get("external", [])))


def _inputs(key_inputs: dict[str, Any]) -> dict[str, str]:
    return _named((input_name(e["stage"], e.get("label", "")), e["data_hash"]) for e in key_inputs.get("inputs", []))


ABSENT = "(absent)"  # a field or input one side does not have at all (null is a value)


def _changed(kind: str, old: dict[str, Any], new: dict[str, Any], what=lambda name: name) -> list[dict[str, Any]]:
    return [{"kind": kind, "what": what(name), "old": old.get(name, ABSENT), "new": new.get(name, ABSENT)}
            for name in sorted(old.keys() | new.keys()) if old.get(name, ABSENT) != new.get(name, ABSENT)]


def key_changes(current: dict[str, Any], baseline: dict[str, Any] | None, *, label: str = "",
                inputs_pending: bool = False) -> list[dict[str, Any]]:
    """What differs between a call's key inputs and the baseline artifact's, as reasons
    ({kind, what, old, new}); [] when nothing does. `inputs_pending`: the upstream artifacts are
    not computed yet (a plan), so inputs are not compared.

    >>> base = {"stage": "filter", "logic_version": 1, "code": {"m": "1"}, "config": {"toxicity": {"threshold": 0.5}},
    ...         "inputs": [{"stage": "dedup", "label": "", "key": "k", "data_hash": "d1"}], "external": [],
    ...         "libraries": {"torch": "2.13.0"}}
    >>> now = {**base, "config": {"toxicity": {"threshold": 0.3}}, "libraries": {"torch": "2.14.0"}}
    >>> [reason_text(r) for r in key_changes(now, base)]
    ['recipe filters.toxicity.threshold: 0.5 -> 0.3', 'library torch: 2.13.0 -> 2.14.0']
    """
    if baseline is None:
        return [{"kind": "first", "what": "no earlier artifact of this stage for this recipe", "old": None, "new": None}]
    if not baseline.get("code"):
        return [{"kind": "unrecorded", "what": "the earlier artifact predates recorded key inputs",
                 "old": None, "new": None}]
    stage = current["stage"]
    prefix = _recipe_prefix(stage, label)
    reasons = _changed("logic", {"logic_version": baseline.get("logic_version")},
                       {"logic_version": current.get("logic_version")}, lambda _: "stage logic version")
    reasons += _changed("recipe", flatten(baseline["config"]), flatten(current["config"]), lambda n: prefix + n)
    old_ext, new_ext = _externals(stage, baseline), _externals(stage, current)
    reasons += [dict(r, kind="source" if r["what"].startswith("source") else "file")
                for r in _changed("file", old_ext, new_ext)]
    reasons += _changed("code", baseline["code"], current["code"])
    reasons += _changed("library", baseline.get("libraries", {}), current.get("libraries", {}))
    if not inputs_pending:
        reasons += _changed("input", _inputs(baseline), _inputs(current))
        if not reasons and current != baseline:  # the same inputs in another order: another key
            reasons = [{"kind": "order", "what": "the same key inputs in another order", "old": None, "new": None}]
    return sorted(reasons, key=lambda r: KINDS.index(r["kind"]))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def reason_text(reason: dict[str, Any]) -> str:
    """One reason in words.

    >>> reason_text({"kind": "code", "what": "sftflow.tasks.filters", "old": "a", "new": "b"})
    'code sftflow.tasks.filters edited'
    >>> reason_text({"kind": "input", "what": "dedup", "old": "d1", "new": "d2"})
    'input dedup changed'
    """
    kind, what, old, new = reason["kind"], reason["what"], reason.get("old"), reason.get("new")
    if kind in ("first", "unrecorded", "missing", "order"):
        return what
    if kind == "logic":
        return f"stage logic version {old} -> {new}"
    if kind in ("recipe", "library"):
        return f"{kind} {what}: {_short(old)} -> {_short(new)}"
    if kind == "code":
        return f"code {what} {'added' if old == ABSENT else 'removed' if new == ABSENT else 'edited'}"
    state = "added" if old == ABSENT else "removed" if new == ABSENT else "changed"
    if kind == "input":
        return f"input {what} {state}"
    if state == "changed" and "=" in f"{old}{new}":  # self-describing values (device=cpu): show them
        return f"{what}: {_short(old)} -> {_short(new)}"
    return f"{what} {state}"


def why_text(reasons: list[dict[str, Any]]) -> str:
    return "; ".join(reason_text(r) for r in reasons)


# ------------------------------------------------------------------------ catalog lookups --
BASELINES_SQL = """
SELECT sr.stage, coalesce(sr.label, ''), sr.key, a.key_inputs, sr.run_id
FROM stage_runs sr JOIN runs r USING (run_id) LEFT JOIN artifacts a ON a.artifact_id = sr.key
WHERE r.recipe_name = ? AND r.run_id <> ?
QUALIFY row_number() OVER (PARTITION BY sr.stage, coalesce(sr.label, '') ORDER BY r.started_at DESC, sr.rowid DESC) = 1
"""

COMPUTED_SECONDS_SQL = """
SELECT sr.stage, coalesce(sr.label, ''), list(sr.seconds ORDER BY r.started_at DESC)[1:5]
FROM stage_runs sr JOIN runs r USING (run_id)
WHERE r.recipe_name = ? AND NOT sr.cache_hit
GROUP BY ALL
"""


# Every artifact with recorded key inputs, by the (stage, label) of the calls that used it.
CANDIDATES_SQL = """
SELECT DISTINCT sr.stage, coalesce(sr.label, ''), a.artifact_id, a.key_inputs
FROM artifacts a JOIN stage_runs sr ON sr.key = a.artifact_id
WHERE a.key_inputs IS NOT NULL
"""


def candidates(rows: list[tuple]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(stage, label) -> [{key, key_inputs}] of every recorded artifact, from CANDIDATES_SQL's rows."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for stage, label, key, key_inputs in rows:
        found.setdefault((stage, label), []).append({"key": key, "key_inputs": json.loads(key_inputs)})
    return found


def matches_but_pending(current: dict[str, Any], candidate: dict[str, Any], label: str, pending: set[str]) -> bool:
    """Whether `candidate`'s key inputs equal `current`'s in everything but the `pending` inputs
    (upstream artifacts not computed yet): its artifact is the one a run serves if those come out
    with the data they had for it."""
    if key_changes(current, candidate, label=label, inputs_pending=True):
        return False
    now, then = _inputs(current), _inputs(candidate)
    return now.keys() == then.keys() and all(now[name] == then[name] for name in now if name not in pending)


def baselines(rows: list[tuple]) -> dict[tuple[str, str], dict[str, Any]]:
    """(stage, label) -> {key, run_id, key_inputs} of the newest artifact a run of the recipe used,
    from BASELINES_SQL's rows (key_inputs {} for an artifact that predates them)."""
    return {(stage, label): {"key": key, "run_id": run_id, "key_inputs": json.loads(key_inputs) if key_inputs else {}}
            for stage, label, key, key_inputs, run_id in rows}


def estimated_seconds(rows: list[tuple]) -> dict[tuple[str, str], float]:
    """(stage, label) -> median seconds of its last five computed runs, from COMPUTED_SECONDS_SQL's rows."""
    return {(stage, label): round(statistics.median(seconds), 2) for stage, label, seconds in rows if seconds}


def explain_call(key_inputs: dict[str, Any], key: str, label: str,
                 baseline: dict[str, Any] | None, *, inputs_pending: bool = False) -> list[dict[str, Any]]:
    """The reasons a call with these key inputs computes, against the baseline artifact."""
    if baseline is not None and baseline["key"] == key:
        return [{"kind": "missing", "what": f"artifact {key[:12]} is not in the store (collected or damaged)",
                 "old": None, "new": None}]
    return key_changes(key_inputs, baseline["key_inputs"] if baseline else None, label=label,
                       inputs_pending=inputs_pending)
