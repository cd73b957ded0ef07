"""The project is imported as `sftflow` only: the repository's flows/ and tasks/ folders are the
installed package's subpackages, and no source imports them under their generic top-level names
(which would load a second copy of a module, or another project's flows/ folder)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERIC_NAMES = {"flows", "tasks"}


# A module named in a string: a monkeypatch target, a `module:function` part, a registry entry, or
# `python -m` arguments ("-m", "tasks.x").
MODULE_STRING = re.compile(r"^(?:flows|tasks)\.[a-z_]+(?:[.:][A-Za-z_]+)*$")


def generic_imports(source: str) -> list[str]:
    """Import statements naming `flows` or `tasks` as a top-level package, and strings that name
    such a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            names = [node.value]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in GENERIC_NAMES]
    return found


def test_the_check_sees_generic_imports():
    assert generic_imports("from tasks.core import stages\nimport flows.cli\n") == ["tasks.core", "flows.cli"]
    assert generic_imports('mp.setattr("tasks.core.stage.x", 1)\ncmd = ["-m", "flows.cli"]\n') == [
        "tasks.core.stage.x", "flows.cli"]
    assert generic_imports('map_parts(call, "tasks.filters:filter_part")\n') == ["tasks.filters:filter_part"]
    assert generic_imports("from sftflow.tasks.core import stages\nfrom . import x\n") == []
    assert generic_imports('path = "tasks/core/stage.py"; text = "tasks. done"\n') == []


def test_no_source_imports_a_generic_top_level_name():
    offenders = {}
    for folder in ("flows", "tasks", "tests", "bench", "data"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == Path(__file__).resolve():  # this file's examples name them on purpose
                continue
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


def test_the_installed_packages_are_every_project_package():
    """pyproject.toml lists the packages by hand (the mapping needs it): a new subpackage folder
    must be listed, or a wheel install would lack it."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {"sftflow." + ".".join(init.parent.relative_to(REPO).parts)
               for top in GENERIC_NAMES for init in (REPO / top).rglob("__init__.py")}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {f"sftflow.{top}": top for top in sorted(GENERIC_NAMES)}
