# attnflow: the two commands are `make quickstart` and `make test`; both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.attnflow-installed

.PHONY: install quickstart test test-unit test-integration test-flows bench clean-home help

help:
	@echo "make quickstart   install, then run the offline quickstart comparison on the demo model"
	@echo "make test         install, then run the whole test suite (unit, integration, flows)"
	@echo "make bench        run the benchmarks in bench/ (ratios measured in one process)"

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

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install
	$(PY) -m pytest -q tests/integration

test-flows: install
	$(PY) -m pytest -q tests/flows

bench: install
	$(PY) bench/patch_overhead.py
