"""A StageCall carries what its plan resolved (root, warehouse, allowed data folders), so a task
confines paths exactly as the planner did without reading the environment again: a Prefect or
Dask worker may run with another environment than the flow that planned the call."""

from __future__ import annotations

import ast
from pathlib import Path

from sftflow.tasks.core.stage import StageCall, plan_stage
from sftflow.tasks.core.workspace import PathNotAllowed, Workspace

REPO = Path(__file__).resolve().parents[2]


def planned_call(tmp_path: Path) -> tuple[StageCall, Workspace]:
    extra = tmp_path / "shared-data"
    extra.mkdir()
    ws = Workspace(root=tmp_path / "project", warehouse=tmp_path / "warehouse", data_dirs=(extra,))
    call = plan_stage("score", "sftflow.tasks.score", {"enabled": False}, [], (), root=ws.root,
                      warehouse=ws.warehouse, data_dirs=ws.data_dirs)
    return call, ws


def test_the_call_carries_the_planned_workspace_through_json(tmp_path, monkeypatch):
    call, ws = planned_call(tmp_path)
    monkeypatch.delenv("SFTFLOW_DATA_DIRS", raising=False)  # the worker's environment lacks it
    received = StageCall.model_validate_json(call.model_dump_json())  # as a Prefect parameter travels
    assert received.workspace == ws
    inside = ws.data_dirs[0] / "rows.jsonl"
    assert received.workspace.resolve_input(str(inside)) == inside.resolve()
    try:
        received.workspace.resolve_input(str(tmp_path / "elsewhere.jsonl"))
    except PathNotAllowed:
        pass
    else:
        raise AssertionError("a path outside the planned roots was accepted")


def test_the_call_names_its_work_and_artifact_folders(tmp_path):
    call, ws = planned_call(tmp_path)
    assert call.work_dir == ws.warehouse / "work" / "score" / call.key
    assert call.artifact_dir == ws.warehouse / "artifacts" / "score" / call.key


def test_the_allowed_folders_are_not_in_the_key(tmp_path):
    call, ws = planned_call(tmp_path)
    bare = plan_stage("score", "sftflow.tasks.score", {"enabled": False}, [], (), root=ws.root, warehouse=ws.warehouse)
    assert bare.key == call.key and bare.data_dirs == []


def test_no_task_builds_its_workspace_from_the_environment():
    """Only the flow calls Workspace.from_env; stages and libraries use the call's workspace."""
    offenders = []
    for path in sorted((REPO / "tasks").rglob("*.py")):
        if path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "from_env":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
