# The README's two commands: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean-warehouse

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

test: install
	$(PY) -m pytest

clean-warehouse:
	rm -rf data/warehouse
