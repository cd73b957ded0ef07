"""Each stage owns its reason vocabulary: its module's REASONS lists the decisions it may record,
the stage refuses any other, and docs/catalog.md's table of reasons by stage is rendered from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sftflow.tasks.core import stages
from sftflow.tasks.core.reasons import KEPT_REASONS, Reason
from sftflow.tasks.core.records import DecisionLog, StageOutput, empty_records
from sftflow.tasks.core.stage import execute, plan_stage

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "catalog.md"
BEGIN, END = "<!-- reasons-by-stage:begin -->", "<!-- reasons-by-stage:end -->"


def reason_table() -> str:
    """Markdown: each stage's kept and drop reasons, stages in pipeline order, reasons in the
    vocabulary's order."""
    lines = ["| stage | kept as | dropped as |", "|---|---|---|"]
    for name in stages.stage_names():
        declared = stages.stage_reasons(name)
        kept = [f"`{r}`" for r in Reason if r in declared and r in KEPT_REASONS]
        dropped = [f"`{r}`" for r in Reason if r in declared and r not in KEPT_REASONS]
        lines.append(f"| {name} | {', '.join(kept) or '-'} | {', '.join(dropped) or '-'} |")
    return "\n".join(lines)


def test_every_reason_belongs_to_a_stage_and_every_data_stage_can_keep():
    declared = {name: stages.stage_reasons(name) for name in stages.stage_names()}
    assert all(reasons <= set(Reason) for reasons in declared.values())
    assert set().union(*declared.values()) == set(Reason), "a reason no stage records"
    for name in stages.data_stages():
        assert declared[name] & KEPT_REASONS, f"{name} can keep no row"


def test_a_stage_refuses_a_reason_outside_its_vocabulary(tmp_path):
    call = plan_stage("score", "sftflow.tasks.score", {"enabled": False}, [], (), root=tmp_path,
                      warehouse=tmp_path / "warehouse")
    log = DecisionLog()
    log.add("row-1", Reason.KEPT)
    log.add("row-2", Reason.TOXIC)  # a filter reason: the score stage must not record it

    def compute(_call):
        return StageOutput(records=empty_records(), decisions=log.to_table())

    with pytest.raises(ValueError, match=r"score: recorded reason\(s\) toxic outside the stage's REASONS"):
        execute(call, compute)
    assert call.store.load("score", call.key) is None  # nothing was committed


def test_an_unregistered_stage_is_held_to_the_closed_vocabulary_only():
    assert stages.stage_reasons("not-a-stage") is None


def test_catalog_docs_list_each_stages_reasons():
    documented = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), DOC.read_text(encoding="utf-8"), re.S)
    assert documented, f"docs/catalog.md lacks the {BEGIN} ... {END} block"
    assert documented.group(1).strip() == reason_table(), "docs/catalog.md's reasons table is stale:\n" + reason_table()
