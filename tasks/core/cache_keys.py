"""Cache keys: the one definition of "has this stage's output already been computed?".

key = hash(stage name, code fingerprint, canonical JSON of the recipe section the stage reads (less
the fields that change how, not what, it computes), data hashes of its inputs (what it reads of
them: not their decision logs), versions of the libraries/models that change its output).
tasks/core/stage.py: plan_stage assembles them; docs/caching.md lists what is and is not keyed.

The code fingerprint is the source of the stage's module plus every project module it imports,
followed transitively (found by parsing imports, not by running them). Prefect's TASK_SOURCE
policy hashes only the task function's own lines, so an edit to a helper it calls would be
missed; this fingerprint catches it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sftflow.tasks.core.hashing import sha256_text, short_hash
from sftflow.tasks.core import stages

# The installed import name; the repository's flows/ and tasks/ folders are its subpackages.
PROJECT_PACKAGE = "sftflow"
PROJECT_SUBPACKAGES = ("tasks", "flows")

# Shared plumbing that every stage imports but whose edits do not change what a stage computes:
# the recipe models (a stage's own section enters its key as canonical JSON, defaults included),
# the reason vocabulary (closed; reasons are added, never renamed), the artifact/catalog/key
# machinery. Following them would make adding a train option recompute every data stage.
# Modules that do shape outputs (records.py: the schema; hashing.py: ids) stay in fingerprints.
# Process plumbing (failpoints: crash-test hooks; children: the worker process's lifetime) and the
# stage registry do not change outputs either.
NOT_FINGERPRINTED = frozenset(f"sftflow.tasks.core.{name}" for name in (
    "recipe", "recipe_section", "recipe_data", "recipe_filters", "recipe_training", "recipe_docs",
    "reasons", "cache_keys", "stage", "artifacts", "catalog", "catalog_schema", "workspace",
    "stages", "failpoints", "children",
)) | frozenset({
    # Reports: the model and data cards are written beside a stage's output, never read by a stage.
    # A wording change shows in the next artifact a stage computes; it re-runs nothing.
    "sftflow.tasks.lib.model_card",
})


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if file is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        file = spec.origin if spec else None
    return Path(file) if file and file.endswith(".py") else None


def _project_imports(path: Path, module_name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in NOT_FINGERPRINTED or name.split(".")[0] != PROJECT_PACKAGE:
                continue
            if _module_file(name) is not None:
                found.add(name)
    return found


@lru_cache(maxsize=None)
def code_modules(module_name: str) -> tuple[tuple[str, str], ...]:
    """(module, sha256 of its source) for a module and every project module it (transitively)
    imports, sorted by name: what a code fingerprint hashes, kept so a changed key can name the
    module whose edit changed it."""
    seen: dict[str, str] = {}
    pending = [module_name]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            raise ValueError(f"cannot fingerprint {name!r}: no Python source found")
        seen[name] = sha256_text(path.read_text(encoding="utf-8"))
        pending.extend(_project_imports(path, name) - seen.keys())
    return tuple(sorted(seen.items()))


def fingerprint_of(modules: dict[str, str] | tuple[tuple[str, str], ...]) -> str:
    """The code fingerprint of `code_modules`' result (or of the same pairs as a dict)."""
    pairs = sorted(modules.items()) if isinstance(modules, dict) else list(modules)
    return short_hash([list(pair) for pair in pairs])


def code_fingerprint(module_name: str) -> str:
    """Hash of a module's source and the sources of the project modules it (transitively) imports."""
    return fingerprint_of(code_modules(module_name))


def project_code_version() -> str:
    """Hash of every project source file: the `runs.code_version` of a run (not a cache key)."""
    files = []
    for package in PROJECT_SUBPACKAGES:
        path = _module_file(f"{PROJECT_PACKAGE}.{package}")
        if path is None:
            continue
        root = path.parent
        files += [(f"{package}/{p.relative_to(root).as_posix()}", sha256_text(p.read_text(encoding="utf-8")))
                  for p in sorted(root.rglob("*.py"))]
    return short_hash(files)


def library_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Installed versions of the distributions that change a stage's output."""
    versions = {}
    for name in names:
        if name == "unicodedata":  # ships with Python, not as a distribution
            import unicodedata

            versions[name] = unicodedata.unidata_version
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def logic_version(stage: str) -> int:
    """The registered stage's explicit logic version (0 for a name the registry does not hold)."""
    return next((spec.logic_version for spec in stages.STAGES if spec.name == stage), 0)


def stage_key(
    stage: str,
    code_hash: str,
    config: Any,
    input_hashes: list[str],
    libraries: dict[str, str],
    logic: int | None = None,
) -> str:
    """The artifact key and the Prefect cache key of one stage execution (`logic`: the stage's
    logic version, the registered one when None)."""
    return short_hash(
        {
            "stage": stage,
            "logic_version": logic_version(stage) if logic is None else logic,
            "code": code_hash,
            "config": config,
            "inputs": list(input_hashes),
            "libraries": libraries,
        }
    )
