# The two commands the README starts with:  make run  and  make test.
# Both create .venv/ (python3.11) on first use and reinstall only when pyproject.toml changed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

WEB_BUILD   := src/pneumonode/api/static/index.html
WEB_MODULES := web/node_modules/.package-lock.json
WEB_SOURCES := $(shell find web/src -type f) web/index.html web/vite.config.js web/package.json

.PHONY: setup web run test lint typecheck unit bench soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,train]'
	@touch $(STAMP)

setup: $(STAMP)

# The web page: npm ci (only when the lock file changed), then vite build into the API's folder.
$(WEB_MODULES): web/package-lock.json
	cd web && npm ci --no-audit --no-fund

$(WEB_BUILD): $(WEB_MODULES) $(WEB_SOURCES)
	cd web && npm run build

web: $(WEB_BUILD)

run: setup web
	$(BIN)/pneumonode serve

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not gpu"

test: lint typecheck web unit

bench: setup
	$(BIN)/python bench/conversion.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/end_to_end.py

# Ten minutes of steady load: memory and latency over time (a table and bench/out/soak.png).
soak: setup
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache web/node_modules src/pneumonode/api/static
