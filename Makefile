# encord-ingest: every target sets itself up from a fresh clone (python3, make, node).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup test demo bench lint dashboard clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev]'
	npm ci --no-audit --no-fund --loglevel=error   # Azurite (Azure Blob emulator), pinned by package-lock.json
	touch $(STAMP)

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

# The dashboard test renders the Prefect UI in Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo: setup
	$(BIN)/encord-ingest demo $(DEMO_ARGS)

# BENCH_ARGS: --quick (smoke run, ~2 min), --only NAME, --markdown bench/RESULTS.md; see bench/run.py.
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The Prefect UI over the database the demo wrote (Ctrl-C to stop).
dashboard: setup
	PREFECT_HOME=$(CURDIR)/.encord-ingest/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  $(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf $(VENV) .encord-ingest .pytest_cache .ruff_cache
