"""bench/common.py and bench/report.py: RATIO lines, pass/fail direction, the generated table."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "report"):
        sys.modules.pop(name, None)
    return importlib.import_module("common"), importlib.import_module("report")


def test_ratio_lines_and_direction(bench_modules):
    common, _ = bench_modules
    faster = common.Ratio("dedup_vs_datasketch", 5.25, 4)
    share = common.Ratio("rerun_share", 0.06, 0.05, higher_is_better=False)
    assert faster.line() == "RATIO dedup_vs_datasketch 5.25 4 pass"
    assert share.line() == "RATIO rerun_share 0.06 0.05 fail"
    assert common.Ratio("x", 3.9, 4).passed is False and common.Ratio("y", 0.04, 0.05, False).passed is True


def test_report_writes_a_record_and_the_table_is_generated_from_it(bench_modules, tmp_path, monkeypatch, capsys):
    common, report = bench_modules
    monkeypatch.setattr(common, "QUICK_RESULTS_DIR", tmp_path / "results")
    path = common.report("dedup", [common.Ratio("dedup_vs_datasketch", 5.0, 4, note="100k docs")],
                         {"docs": 100}, quick=True, libraries=("datasketch",))
    assert capsys.readouterr().out.strip() == "RATIO dedup_vs_datasketch 5 4 pass"
    record = json.loads(path.read_text())
    assert record["machine"]["cpus"] and record["versions"]["datasketch"] != ""
    monkeypatch.setattr(sys, "argv", ["report.py", "--results", str(tmp_path / "results"),
                                      "--out", str(tmp_path / "BENCHMARKS.md")])
    report.main()
    table = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| dedup | `dedup_vs_datasketch` | 5 | ≥ 4 | pass |" in table
    assert "100k docs" in table and "do not\nedit by hand" in table
