"""Which stages' keys an edit to a real source file changes: the project is copied, a file of the
copy edited, and every registered stage's code fingerprint computed from the copy before and after
(in a fresh interpreter, so nothing is cached or already imported from the real tree).

A key covers its stage's own logic and the library code it runs; reports (the model and data
cards) are in no key, and no stage's key holds another stage's module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftflow.tasks.core.stages import stage_names

REPO = Path(__file__).resolve().parents[2]

FINGERPRINTS = """
import json
from sftflow.tasks.core.cache_keys import code_fingerprint
from sftflow.tasks.core.stages import STAGES
print(json.dumps({s.name: code_fingerprint(s.module) for s in STAGES}))
"""


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fingerprint") / "project"
    for package in ("tasks", "flows"):  # laid out as the installed package `sftflow` imports them
        shutil.copytree(REPO / package, root / "sftflow" / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def fingerprints(root: Path) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", FINGERPRINTS], cwd=root, env={"PYTHONPATH": str(root)},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def changed_by(root: Path, relative: str, old: str, new: str) -> set[str]:
    """The stages whose fingerprint changes when `old` becomes `new` in the copy's `relative` file."""
    path = root / "sftflow" / relative
    before_text = path.read_text(encoding="utf-8")
    assert before_text.count(old) >= 1, f"{relative} no longer holds {old!r}: update this test's edit"
    before = fingerprints(root)
    path.write_text(before_text.replace(old, new, 1), encoding="utf-8")
    try:
        after = fingerprints(root)
    finally:
        path.write_text(before_text, encoding="utf-8")
    return {stage for stage in stage_names() if before[stage] != after[stage]}


def test_the_copy_is_fingerprinted_not_the_installed_tree(project_copy):
    assert changed_by(project_copy, "tasks/dedup.py", '"""', '"""Edited. ') == {"dedup"}


@pytest.mark.parametrize(("relative", "old", "new", "stages"), [
    # a report: the model card's wording re-runs nothing
    ("tasks/lib/model_card.py", "def render_model_card", "# wording\ndef render_model_card", set()),
    # a stage's own logic: that stage only (downstream re-runs only if its output changes)
    ("tasks/dedup.py", "def ", "# logic\ndef ", {"dedup"}),
    ("tasks/train.py", "def ", "# logic\ndef ", {"train"}),
    # a shared library: the stages that run it
    ("tasks/lib/text_units.py", "def ", "# helper\ndef ", {"dedup", "filter", "mix"}),
    # eval set files are read by filter (decontamination) and evaluate alike
    ("tasks/lib/eval_files.py", "def ", "# helper\ndef ", {"filter", "evaluate"}),
    ("tasks/lib/chat_template.py", "def ", "# helper\ndef ", {"train"}),
    ("tasks/lib/train_checks.py", "def ", "# helper\ndef ", {"train"}),
    # process plumbing and the registry change no output
    ("tasks/core/failpoints.py", "def ", "# hook\ndef ", set()),
    ("tasks/core/stages.py", "def ", "# registry\ndef ", set()),
])
def test_an_edit_changes_exactly_the_keys_of_the_stages_that_run_it(project_copy, relative, old, new, stages):
    assert changed_by(project_copy, relative, old, new) == stages


def test_an_ingest_error_message_re_runs_no_other_stage(project_copy):
    # the stage-level message for a source without any valid row
    assert changed_by(project_copy, "tasks/ingest.py", "SourceError(", "SourceError(  ") == {"ingest"}


def test_no_module_but_the_flow_imports_a_stage():
    """No library or stage imports a stage: a stage's edits reach only its own key (and the flow)."""
    from sftflow.tasks.core.cache_keys import _module_file, _project_imports
    from sftflow.tasks.core.stages import STAGES

    stage_modules = {spec.module for spec in STAGES}
    offenders = {}
    for path in sorted((REPO / "tasks").rglob("*.py")):
        name = "sftflow." + ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        imported = (_project_imports(path, name) & stage_modules) - {name}  # nor does a stage import another
        if imported:
            offenders[name] = sorted(imported)
    assert offenders == {}
    assert _module_file("sftflow.tasks.lib.formats") is not None  # the walk sees the libraries
