"""The stage registry: the flow shape it must keep, and the runner released after its last user."""

from __future__ import annotations

import sys
import types

import pytest

from sftflow.tasks.core import stages
from sftflow.tasks.core.stages import StageSpec


def registry_with(monkeypatch, spec: StageSpec, after: str) -> None:
    at = stages.stage_names().index(after) + 1
    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES[:at], spec, *stages.STAGES[at:]))


def test_the_shipped_registry_has_the_flow_shape():
    stages.check_flow_shape()
    assert [s.name for s in stages.chain_stages()] == ["dedup", "filter", "score", "mix"]


@pytest.mark.parametrize(("spec", "after", "message"), [
    (StageSpec("late", "sftflow.tasks.late", judges_rows=True), "mix", "must end with mix"),
    (StageSpec("split", "sftflow.tasks.split", judges_rows=True, per_source=True), "normalize", "per-source stages"),
    (StageSpec("report", "sftflow.tasks.report", judges_rows=False), "train", "stages after the data"),
])
def test_a_registry_the_flow_cannot_run_is_refused(monkeypatch, spec, after, message):
    registry_with(monkeypatch, spec, after)
    with pytest.raises(ValueError, match=message):
        stages.check_flow_shape()


def test_the_runner_is_released_before_the_first_stage_after_its_last_user(monkeypatch):
    from sftflow.flows.pipeline import run_chain

    events: list[str] = []
    fake = types.ModuleType("fake_chain_stages")
    for name in ("a", "b", "c", "d"):
        setattr(fake, f"{name}_stage", name)
    fake.plan = lambda recipe, upstream, ws, runner: upstream
    monkeypatch.setitem(sys.modules, "fake_chain_stages", fake)
    chain = (StageSpec("a", "fake_chain_stages", judges_rows=True),
             StageSpec("b", "fake_chain_stages", judges_rows=True, uses_runner=True),
             StageSpec("c", "fake_chain_stages", judges_rows=True),
             StageSpec("d", "fake_chain_stages", judges_rows=True))
    monkeypatch.setattr(stages, "STAGES", chain)

    class Run:
        def run(self, task, call):
            events.append(task)
            return call[0]

    assert run_chain(Run(), None, ["in"], None, {}, release_runner=lambda: events.append("release")) == "in"
    assert events == ["a", "b", "release", "c", "release", "d"]
