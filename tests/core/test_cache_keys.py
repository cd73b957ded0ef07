import dataclasses
import sys

from sftflow.tasks.core import cache_keys, stages
from sftflow.tasks.core.cache_keys import code_fingerprint, code_modules, library_versions, stage_key


def test_key_changes_with_each_ingredient():
    base = dict(stage="filter", code_hash="c", config={"t": 0.5}, input_hashes=["i"], libraries={"x": "1"})
    key = stage_key(**base)
    assert stage_key(**base) == key
    for field, value in [("stage", "score"), ("code_hash", "d"), ("config", {"t": 0.3}),
                         ("input_hashes", ["j"]), ("libraries", {"x": "2"})]:
        assert stage_key(**{**base, field: value}) != key, field


def test_logic_version_bump_changes_key(monkeypatch):
    args = dict(stage="dedup", code_hash="c", config={}, input_hashes=[], libraries={})
    before = stage_key(**args)
    bumped = tuple(dataclasses.replace(s, logic_version=99) if s.name == "dedup" else s for s in stages.STAGES)
    monkeypatch.setattr(stages, "STAGES", bumped)
    assert stage_key(**args) != before


def test_fingerprint_follows_project_imports(tmp_path, monkeypatch):
    # Build a throwaway two-module project package (named apart from the installed one, whose name
    # the fingerprint walk is pointed at) and edit the imported helper.
    pkg = tmp_path / "probe_root" / "sftflow_probe"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "helper.py").write_text("VALUE = 1\n")
    (pkg / "stage_x.py").write_text("from sftflow_probe.core.helper import VALUE\n")
    monkeypatch.setattr(cache_keys, "PROJECT_PACKAGE", "sftflow_probe")
    monkeypatch.syspath_prepend(str(tmp_path / "probe_root"))
    code_modules.cache_clear()
    before = code_fingerprint("sftflow_probe.stage_x")
    (pkg / "core" / "helper.py").write_text("VALUE = 2\n")
    code_modules.cache_clear()
    after = code_fingerprint("sftflow_probe.stage_x")
    code_modules.cache_clear()
    assert before != after


def test_library_versions_reports_absent():
    versions = library_versions(["pyarrow", "surely-not-installed-dist"])
    assert versions["surely-not-installed-dist"] == "absent"
    assert versions["pyarrow"][0].isdigit()


def test_dedup_fingerprint_covers_the_band_derivation(tmp_path, monkeypatch):
    """The LSH bands are derived in tasks/core/dedup_lsh.py and decide which pairs dedup compares:
    an edit there must change dedup's key (the recipe models that also call it are not followed)."""
    real = cache_keys._module_file
    edited = tmp_path / "dedup_lsh.py"
    edited.write_text(real("sftflow.tasks.core.dedup_lsh").read_text(encoding="utf-8") + "\nTARGET_RECALL_EDITED = 1\n")
    code_modules.cache_clear()
    before = code_fingerprint("sftflow.tasks.dedup")
    monkeypatch.setattr(cache_keys, "_module_file",
                        lambda name: edited if name == "sftflow.tasks.core.dedup_lsh" else real(name))
    code_modules.cache_clear()
    after = code_fingerprint("sftflow.tasks.dedup")
    code_modules.cache_clear()
    assert before != after


def test_keys_are_computed_as_before_the_key_inputs_were_kept():
    """The fingerprint hashes the sorted (module, source sha256) pairs and the key the same dict as
    ever: a warehouse written before keeps its cache hits."""
    from sftflow.tasks.core.hashing import short_hash

    pairs = code_modules("sftflow.tasks.dedup")
    assert code_fingerprint("sftflow.tasks.dedup") == short_hash(sorted(pairs))  # tuples, as before
    # the key the code before recorded key inputs (51b5181) computed for these ingredients
    assert stage_key("dedup", "c0de", {"t": 0.5}, ["i"], {"x": "1"}) == "888c7d22c8db2a22191701aa94b949af"
