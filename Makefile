# The two commands the README starts with:  make run  and  make test.
# Both create .venv/ (python3.11) on first use and reinstall only when pyproject.toml changed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/pneumonode serve

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not gpu"

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/conversion.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/end_to_end.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
