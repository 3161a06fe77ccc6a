# The README's commands. Every target creates .venv and installs into it when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.biomed-installed
EXTRAS ?= dev
PYTEST := $(BIN)/python -m pytest

.PHONY: install data quickstart test test-all test-data lint bench app clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/biomed data fetch

quickstart: data
	$(BIN)/biomed quickstart

# Default suite: everything but slow/gpu/browser tests, including the tests on real data.
test: data
	$(PYTEST) -q

test-all: data
	$(PYTEST) -q -m "not gpu and not browser"

lint: install
	$(BIN)/ruff check biomed tests bench

bench: install
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

app: install
	@if [ -f apps/__init__.py ]; then $(BIN)/biomed app; \
	else echo "the teaching app is not built yet (see the issues)"; exit 1; fi

clean:
	rm -rf $(VENV) outputs
