"""Why a stage computes: the key inputs recorded with every call reproduce its key, and comparing
two records names exactly the input that changed (tasks/core/why.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from sftflow.tasks.core import cache_keys
from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.stage import key_from_inputs, plan_stage
from sftflow.tasks.core.why import explain_call, key_changes, reason_text, why_text


def _manifest(tmp_path: Path, stage: str, key: str, payload: str, label: str = ""):
    writer = ArtifactStore(tmp_path / "artifacts").writer(stage, key)
    writer.write_table("records-00000.parquet", pa.table({"text": [payload]}))
    return writer.commit(inputs=[], config_hash="c", code_hash="h", n_in=1, n_out=1, stats={}, label=label)


def _call(tmp_path: Path, *, threshold: float = 0.5, upstream: str = "rows", source: str = "sha-a",
          libraries: tuple[str, ...] = ("pyarrow",)):
    dedup = _manifest(tmp_path / upstream, "dedup", "k-" + upstream, upstream)
    return plan_stage("filter", "sftflow.tasks.filters", {"toxicity": {"threshold": threshold, "batch": 8}},
                      [dedup], libraries, root=tmp_path, warehouse=tmp_path, unkeyed=["toxicity.batch"],
                      extra_input_hashes={"eval set file": source, "device": "device=cpu"})


def test_key_inputs_reproduce_the_key(tmp_path):
    call = _call(tmp_path)
    record = call.key_inputs()
    assert key_from_inputs(record) == call.key
    assert "batch" not in record["config"]["toxicity"]  # unkeyed fields are not key inputs
    assert set(record["code"]) >= {"sftflow.tasks.filters", "sftflow.tasks.core.hashing"}
    # a list of self-describing strings keys exactly as before names existed
    listed = plan_stage("filter", "sftflow.tasks.filters", {"t": 1}, [], (), root=tmp_path, warehouse=tmp_path,
                        extra_input_hashes=["sha-a", "device=cpu"])
    named = plan_stage("filter", "sftflow.tasks.filters", {"t": 1}, [], (), root=tmp_path, warehouse=tmp_path,
                       extra_input_hashes={"eval set file": "sha-a", "device": "device=cpu"})
    assert listed.key == named.key


def test_each_changed_input_is_named(tmp_path, monkeypatch):
    base = _call(tmp_path).key_inputs()

    def reasons(call):
        return [reason_text(r) for r in key_changes(call.key_inputs(), base)]

    assert reasons(_call(tmp_path)) == []
    assert reasons(_call(tmp_path, threshold=0.3)) == ["recipe filters.toxicity.threshold: 0.5 -> 0.3"]
    assert reasons(_call(tmp_path, source="sha-b")) == ["eval set file changed"]
    assert reasons(_call(tmp_path, upstream="other")) == ["input dedup changed"]
    assert reasons(_call(tmp_path, libraries=("pyarrow", "numpy"))) == [
        f"library numpy: (absent) -> {cache_keys.library_versions(['numpy'])['numpy']}"]

    real = cache_keys._module_file
    edited = tmp_path / "hashing.py"
    edited.write_text(real("sftflow.tasks.core.hashing").read_text(encoding="utf-8") + "\n# edited\n")
    monkeypatch.setattr(cache_keys, "_module_file",
                        lambda name: edited if name == "sftflow.tasks.core.hashing" else real(name))
    cache_keys.code_modules.cache_clear()
    try:
        assert reasons(_call(tmp_path)) == ["code sftflow.tasks.core.hashing edited"]
    finally:
        cache_keys.code_modules.cache_clear()


def test_without_a_usable_baseline_it_says_so(tmp_path):
    call = _call(tmp_path)
    assert why_text(explain_call(call.key_inputs(), call.key, "", None)) == \
        "no earlier artifact of this stage for this recipe"
    old = {"key": "other", "run_id": "r", "key_inputs": {}}
    assert why_text(explain_call(call.key_inputs(), call.key, "", old)) == \
        "the earlier artifact predates recorded key inputs"
    same = {"key": call.key, "run_id": "r", "key_inputs": call.key_inputs()}
    assert "is not in the store" in why_text(explain_call(call.key_inputs(), call.key, "", same))


def test_a_per_source_field_names_its_source(tmp_path):
    base = {"stage": "ingest", "logic_version": 1, "code": {"m": "1"}, "config": {"category": "auto"},
            "inputs": [], "external": [{"name": "source file", "value": "a"}], "libraries": {}}
    now = {**base, "config": {"category": "code"}, "external": [{"name": "source file", "value": "b"}]}
    assert [reason_text(r) for r in key_changes(now, base, label="alpaca")] == [
        'recipe sources[alpaca].category: auto -> code', "source file changed"]


@pytest.mark.parametrize("pending", [True, False])
def test_pending_inputs_are_not_compared(tmp_path, pending):
    base = _call(tmp_path).key_inputs()
    moved = _call(tmp_path, upstream="other").key_inputs()
    assert bool(key_changes(moved, base, inputs_pending=pending)) is not pending


def test_reordered_inputs_and_logic_versions_are_named(tmp_path, monkeypatch):
    import dataclasses

    from sftflow.tasks.core import stages

    call = _call(tmp_path)
    record = call.key_inputs()
    swapped = {**record, "external": record["external"][::-1]}  # the same files in another order
    assert key_from_inputs(swapped) != call.key
    assert why_text(key_changes(swapped, record)) == "the same key inputs in another order"
    bumped = tuple(dataclasses.replace(s, logic_version=2) if s.name == "filter" else s for s in stages.STAGES)
    monkeypatch.setattr(stages, "STAGES", bumped)
    assert key_from_inputs(record) == call.key  # a record hashes with the logic version it holds
    assert why_text(key_changes(_call(tmp_path).key_inputs(), record)) == "stage logic version 1 -> 2"
