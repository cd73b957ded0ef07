"""What every benchmark shares: goals as RATIO lines, and a JSON record of the run.

A benchmark measures sftflow and its peer side by side in one process run, then calls
`report(name, ratios, details)`. That prints one `RATIO <name> <measured> <goal> <pass|fail>`
line per goal (one machine-readable line a script can grep) and writes `<results dir>/<name>.json` with the
machine, library versions and the exact command, from which bench/report.py generates
docs/BENCHMARKS.md. Nothing in the docs table is typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "build" / "bench"
QUICK_RESULTS_DIR = REPO / "build" / "bench-quick"


@dataclass(frozen=True)
class Ratio:
    """One goal: `measured` must be >= `goal` (higher_is_better) or <= `goal`."""

    name: str
    measured: float
    goal: float
    higher_is_better: bool = True
    note: str = ""  # how it was measured, one line, for the docs table

    @property
    def passed(self) -> bool:
        return self.measured >= self.goal if self.higher_is_better else self.measured <= self.goal

    def line(self) -> str:
        return f"RATIO {self.name} {self.measured:.4g} {self.goal:g} {'pass' if self.passed else 'fail'}"


# The CLI as a user runs it, with this interpreter: benchmarks time whole commands.
SFTFLOW = [sys.executable, "-m", "sftflow.flows.cli"]


def timed_command(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one whole command; the benchmark stops with its output if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare numbers: CPU, cores, memory, Python, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": memory_gib,
            "python": platform.python_version(), "platform": platform.platform()}


def versions(*distributions: str) -> dict[str, str]:
    found = {}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def results_dir(quick: bool) -> Path:
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


def report(name: str, ratios: list[Ratio], details: dict[str, Any], *, quick: bool = False,
           libraries: tuple[str, ...] = ()) -> Path:
    """Print the RATIO lines and write `<results dir>/<name>.json`; returns that path."""
    for ratio in ratios:
        print(ratio.line(), flush=True)
    record = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": quick,
        "machine": machine(),
        "versions": versions("sftflow", *libraries),
        "ratios": [{**asdict(r), "passed": r.passed} for r in ratios],
        "details": details,
    }
    out = results_dir(quick) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return out
