"""The examples in docstrings are tests: every project module's doctests run here."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sftflow.flows
import sftflow.tasks

MODULES = sorted(
    name for package in (sftflow.flows, sftflow.tasks)
    for _finder, name, _is_pkg in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest examples failed"
