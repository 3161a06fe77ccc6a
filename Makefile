# The README's commands. Every target creates .venv and installs into it when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.biomed-installed
# the app extra too: the app's server and browser tests run in `make test`
EXTRAS ?= dev,app
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

# Default suite: everything but slow and gpu tests, including the tests on real data and the
# app's browser test (headless Debian chromium; it skips, saying why, where none is installed).
test: data
	$(PYTEST) -q

test-all: data
	$(PYTEST) -q -m "not gpu"

lint: install
	$(BIN)/ruff check biomed apps tests bench

bench: install
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

# The teaching app on http://127.0.0.1:7860 (after `make quickstart`); installs the `app` extra
# (gradio) into the venv when it is not there. Overrides: make app ARGS="server_port=7861"
app: install
	@$(BIN)/python -c "import gradio" 2>/dev/null || \
		$(BIN)/python -m pip install -q -e ".[app]"
	$(BIN)/biomed app $(ARGS)

clean:
	rm -rf $(VENV) outputs
