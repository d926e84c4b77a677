# Developer and CI commands.
#   make run   start the local stack (Temporal dev server, mail sink, worker)
#   make test  run every check that CI runs
# Both create .venv on first use and reinstall only after pyproject.toml
# changes. Extra arguments: make run ARGS="--smtp-port 2525",
# make pytest PYTEST_ARGS="-k ledger".

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Touched after a successful install, so an unchanged pyproject.toml skips it.
INSTALL_STAMP := $(VENV)/.install-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint typecheck pytest install clean

run: $(INSTALL_STAMP)
	$(BIN)/python stack.py $(ARGS)

test: lint typecheck pytest

lint: $(INSTALL_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALL_STAMP)
	$(BIN)/mypy

# pytest exits with 5 when it collected no test. This project always has
# tests, so an empty run means they went missing or were not found, and it
# fails like any other failure instead of passing silently.
pytest: $(INSTALL_STAMP)
	@status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then \
		echo "error: pytest ran no tests (exit code 5); check testpaths in" \
			"pyproject.toml and any -k or path in PYTEST_ARGS" >&2; \
		exit 1; \
	fi; \
	exit $$status

install: $(INSTALL_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11" >&2; \
		exit 1; \
	}
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e ".[dev]"
	touch $@

# Removes caches and build output; keeps .venv and var/ (local data).
clean:
	rm -rf .mypy_cache .pytest_cache .ruff_cache build *.egg-info
