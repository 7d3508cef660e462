# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install first.
# Day to day: `make check` (lint, types, import layers, the fast tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# parallel pytest workers (pytest-xdist) of `make check` and `make test`
WORKERS ?= 2

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

## The fast loop: lint, types, import layers and the tests not marked slow.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n $(WORKERS) -m "not slow and not serial"
	$(BIN)/pytest -q -m "serial and not slow"

# The whole suite: each group in two parallel workers (pytest-xdist; fresh processes per group,
# since one long process accumulates chDB's idle server threads and slows every later test),
# then the timing-sensitive tests (marked `serial`) one at a time. Every group runs even when
# one fails; the exit code says whether all passed.
TEST_GROUPS := tests/dagster "tests/lib/explorer tests/lib/annotations" \
	"tests/lib/importers tests/lib/collector tests/lib/ingest tests/lib/integrations tests/lib/llm" \
	"tests/lib/results tests/lib/runs_log tests/lib/store" tests/lib/pipeline \
	"tests/lib/test_*.py tests/test_*.py manta_lib manta_dagster" tests/robustness

## Lint, type-check and run the whole test suite (this is what CI runs).
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	@status=0; for group in $(TEST_GROUPS); do \
	    echo "== pytest $$group"; \
	    $(BIN)/pytest -n $(WORKERS) -m "not serial" --durations=20 $$group || status=1; \
	done; \
	echo "== pytest: timing-sensitive tests, one at a time"; \
	$(BIN)/pytest -m serial --durations=20 tests || status=1; \
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
