"""The project is imported as `sftflow` only: the repository's flows/ and tasks/ folders are the
installed package's subpackages, and no source imports them under their generic top-level names
(which would load a second copy of a module, or another project's flows/ folder)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERIC_NAMES = {"flows", "tasks"}


def generic_imports(source: str) -> list[str]:
    """Import statements naming `flows` or `tasks` as a top-level package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in GENERIC_NAMES]
    return found


def test_the_check_sees_generic_imports():
    assert generic_imports("from tasks.core import stages\nimport flows.cli\n") == ["tasks.core", "flows.cli"]
    assert generic_imports("from sftflow.tasks.core import stages\nfrom . import x\n") == []


def test_no_source_imports_a_generic_top_level_name():
    offenders = {}
    for folder in ("flows", "tasks", "tests", "bench", "data"):
        for path in sorted((REPO / folder).rglob("*.py")):
            found = generic_imports(path.read_text(encoding="utf-8"))
            if found:
                offenders[str(path.relative_to(REPO))] = found
    assert offenders == {}


def test_installed_package_imports_from_outside_the_repository(tmp_path):
    """Away from the repository's folders, `sftflow.*` resolves to them and `tasks` is not claimed."""
    probe = ("import importlib.util, sftflow.flows.cli, sftflow.tasks.dedup as d; "
             "print(d.__file__); print(importlib.util.find_spec('tasks'), importlib.util.find_spec('flows'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    module_file, generic = done.stdout.splitlines()
    assert Path(module_file) == REPO / "tasks" / "dedup.py"
    assert generic == "None None"
