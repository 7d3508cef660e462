# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install first.
# Day to day: `make check` (lint, types, import layers, the fast tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# parallel pytest workers (pytest-xdist) of `make check` and `make test`
WORKERS ?= 2
# how many of the slowest tests `make test` lists (0: every test)
DURATIONS ?= 20

.PHONY: install demo check test lint ui browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dagster,dev]'
	touch $(STAMP)

install: $(STAMP)

## Seed the demo runs into the embedded ClickHouse (chDB) and run an example pipeline on one.
demo: $(STAMP)
	$(BIN)/manta demo seed --if-empty
	$(BIN)/manta runs-overview
	$(BIN)/python -m examples.tool_errors

## Debian's Chromium for the browser test (apt-get, as root or through sudo), if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## The fast loop: lint, import layers, types (incremental after the first run) and the tests
## not marked slow or serial (unit-level: no subprocess, Dagster run, browser, seeded store or
## timing).
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(WORKERS) -m "not slow and not serial"

# The whole suite: one pytest-xdist session of $(WORKERS) workers over every group of paths
# (each test's chDB database is dropped after it, so a long worker does not slow down), with
# mypy beside it (its output printed after), then the timing-sensitive tests (marked `serial`)
# one at a time, alone. Every step runs even when one fails; the exit code says whether all
# passed.
TEST_GROUPS := "tests manta_lib manta_dagster"

## Lint, type-check and run the whole test suite (this is what CI runs).
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	@status=0; \
	$(BIN)/mypy > $(VENV)/mypy.log 2>&1 & mypy_pid=$$!; \
	for group in $(TEST_GROUPS); do \
	    echo "== pytest $$group"; \
	    $(BIN)/pytest -n $(WORKERS) -m "not serial" --durations=$(DURATIONS) $$group \
	        || status=1; \
	done; \
	echo "== mypy"; wait $$mypy_pid || status=1; cat $(VENV)/mypy.log; \
	echo "== pytest: timing-sensitive tests, one at a time"; \
	$(BIN)/pytest -m serial --durations=$(DURATIONS) tests || status=1; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Start the Dagster UI (127.0.0.1:3000) and the Manta explorer (127.0.0.1:8050) over the demo
## data, linked to each other; prints both URLs, Ctrl-C stops both.
ui: $(STAMP)
	BIN=$(BIN) scripts/ui.sh

clean:
	rm -rf $(VENV) .manta .pytest_cache .mypy_cache .ruff_cache .import_linter_cache artifacts
