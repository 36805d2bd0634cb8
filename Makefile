# `make run` and `make test` do all set-up themselves (a .venv with the project installed) and are
# idempotent: the install step reruns only when setup.cfg or pyproject.toml change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install  ## the standalone stack on the embedded default (SQLite + private Redis + simulator)
	$(BIN)/stockpulse standalone

test: install  ## lint, then every test (integration tests use real Redis, PostgreSQL and workers)
	$(BIN)/ruff check .
	$(BIN)/python -m stockpulse.cli config docs --check
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/historical.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
