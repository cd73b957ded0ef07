# The README's two commands: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The UI end-to-end test drives Debian's chromium through playwright (no browser download).
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test fuzz ui serve bench bench-quick clean-warehouse

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the local CPU wheel here, the CUDA build from PyPI elsewhere.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# PYTHONDONTWRITEBYTECODE is set on the build machines: compile once now, or every
	# `import trl` pays for compiling its modules again.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/sftflow run deployments/recipes/demo.yaml

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium > /dev/null

test: install $(CHROMIUM)
	$(PY) -m pytest

# The ingest/normalize fuzz test with 20,000 generated files instead of make test's 2,100 (~5 min).
fuzz: install
	SFTFLOW_FUZZ_EXAMPLES=20000 $(PY) -m pytest tests/tasks/test_fuzz_ledger.py

# Prefect server + UI on http://127.0.0.1:4200 (SQLite database in data/warehouse/prefect/).
ui: install
	$(VENV)/bin/sftflow ui

# Serve the nightly deployment of deployments/prefect.yaml from this process (needs `make ui`).
serve: install
	$(VENV)/bin/sftflow serve

# Benchmarks print `RATIO <name> <measured> <goal> <pass|fail>` lines and write build/bench/*.json;
# bench/report.py turns those records into docs/BENCHMARKS.md. bench-quick: small sizes, minutes.
BENCHES := bench/dedup.py bench/ingest.py bench/toxicity.py bench/training.py bench/scale.py bench/orchestration.py \
           bench/score_memo.py bench/incremental.py
bench: install
	for b in $(BENCHES); do $(PY) $$b || exit 1; done
	$(PY) bench/report.py

bench-quick: install
	for b in $(BENCHES); do $(PY) $$b --quick || exit 1; done
	$(PY) bench/report.py --results build/bench-quick --out build/bench-quick/BENCHMARKS.md

clean-warehouse:
	rm -rf data/warehouse
