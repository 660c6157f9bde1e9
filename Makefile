# accel-dra developer entry points. Every target creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo needs the package with its sandbox extra; tests also need the development and chart-rendering extras.
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev

.PHONY: test chaos lint proto verify demo bench clean oracle realk8s

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(BASE): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[sandbox]'
	touch $(BASE)

$(DEV): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,chart,sandbox]'
	touch $(BASE) $(DEV)

demo: $(BASE)
	$(PY) -m driver demo $(DEMO_ARGS)

# The performance targets (docs/performance.md): real plugin and exporter processes; results in
# hack/bench/results/. BENCH_ARGS=--quick for a short smoke run.
bench: $(BASE)
	$(PY) hack/bench/run.py $(BENCH_ARGS)

# The real-cluster test tier's Kubernetes components (docs/testing.md), from the Go module proxy; cached
# outside the tree, so a warm run costs a hash. KUBE_VERSION=v1.36.3 builds (and tests against) 1.36.
realk8s:
	hack/realk8s/build.sh >/dev/null

# Installs Prometheus and promtool where it can (hack/test-deps.sh; else those tests skip, saying so) and
# builds the real-cluster tier's components where Go is installed; without Go those tests skip, saying so.
test: $(DEV) oracle
	hack/test-deps.sh
	@if command -v go >/dev/null 2>&1; then hack/realk8s/build.sh >/dev/null; \
	else echo "make test: Go is not installed: the real-cluster tests will be skipped (docs/testing.md)"; fi
	$(PY) -m pytest $(PYTEST_ARGS)

# Kubernetes' own DRA code as a test oracle (hack/draoracle, Go modules from the proxy); without Go the
# differential tests say so and skip.
oracle: $(DEV)
	$(PY) -m tests.support.draoracle

# The chaos suite alone (tests/chaos; `make test` runs it too). CHAOS_SEED=N replays a run, CHAOS_SCALE=K
# multiplies its cases (a long run: CHAOS_SCALE=40), CHAOS_REPORT=FILE writes the tally as JSON.
chaos: $(DEV)
	$(PY) -m pytest tests/chaos $(PYTEST_ARGS)

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

proto: $(DEV)
	PYTHON=$(PY) hack/update-proto.sh

verify: lint
	PYTHON=$(PY) hack/verify-proto.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
