# accel-dra developer entry points. Every target creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint proto verify demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,chart]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m driver demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

proto: $(STAMP)
	PYTHON=$(PY) hack/update-proto.sh

verify: lint
	PYTHON=$(PY) hack/verify-proto.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
