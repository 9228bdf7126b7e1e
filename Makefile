# outbox_events developer / CI entry points (GNU make >= 4.0).
#
#   make venv       create .venv and install the package with the [dev] extras
#   make postgres   make sure the local PostgreSQL 15 cluster, role and db exist
#   make test       venv + postgres, then pytest   (extra args: PYTEST_ARGS=...)
#   make demo       run examples/demo.py
#   make lint       ruff check + ruff format --check
#   make typecheck  mypy (strict, configured in pyproject.toml)
#   make clean      remove caches and build output;  make distclean: also .venv

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON      ?= python3
VENV        := .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PG_URL_FILE := .postgres-url
PYTEST_ARGS ?=
LINT_PATHS  := $(wildcard outbox_events tests examples bench)

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv install postgres test demo lint typecheck clean distclean

venv install: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the venv is missing/broken).
$(STAMP): pyproject.toml
	@if ! $(VENV_PY) -c 'import sys' >/dev/null 2>&1; then \
		echo "creating $(VENV) with $$(command -v $(PYTHON))"; \
		rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# The script prints the test database URL on its last stdout line.
postgres:
	@bash scripts/ensure-postgres.sh | tail -n 1 > $(PG_URL_FILE).tmp
	@test -s $(PG_URL_FILE).tmp || { echo "scripts/ensure-postgres.sh printed no URL" >&2; exit 1; }
	@mv -f $(PG_URL_FILE).tmp $(PG_URL_FILE)
	@echo "OUTBOX_TEST_POSTGRES_URL=$$(cat $(PG_URL_FILE))"

# pytest's non-zero exit codes (1 failures, 5 nothing collected, ...) fail make.
test: $(STAMP) postgres
	OUTBOX_TEST_POSTGRES_URL="$$(cat $(PG_URL_FILE))" $(VENV_PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV_PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info \
		$(PG_URL_FILE) $(PG_URL_FILE).tmp .coverage htmlcov
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
