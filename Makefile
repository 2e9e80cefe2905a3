# The two commands a newcomer needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint check clean bench docs

# A virtualenv with dbscope (editable) and everything the tests use; rebuilt when
# pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $(STAMP)

## Run the example notes service on http://127.0.0.1:8000 (SQLite unless DATABASE_URL is set),
## after applying its migrations with the service's own settings.
demo: $(STAMP)
	$(BIN)/dbscope migrate --app examples.notes.app:db -c examples/notes/alembic.ini upgrade head
	$(BIN)/python -m examples.notes

## Run the whole test suite against SQLite, PostgreSQL and MariaDB.
test: $(STAMP)
	$(BIN)/python -m tests.run_suite

## Lint, format check, strict type check and the import layers (pyproject.toml).
lint: $(STAMP)
	$(BIN)/python -m ruff check src tests examples benchmarks
	$(BIN)/python -m ruff format --check src tests examples benchmarks
	$(BIN)/python -m mypy
	$(BIN)/lint-imports

check: lint test

## Build the docs site (mkdocs.yml) into site/, offline, warnings and broken links as errors.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## Benchmark dbscope against raw asyncpg, SQLAlchemy and other libraries (docs/benchmarks.md).
## Builds benchmarks/.venv, installs wrk if missing, takes under 20 minutes.
bench:
	PYTHON=$(PYTHON) bash benchmarks/setup.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
