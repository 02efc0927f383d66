# Thin wrappers around the commands the README documents. No logic is hidden here.
# `make test` and `make book` each install everything first (into .venv), so they work on a fresh clone;
# that includes the `parity` extra (TRL and verl, the oracles of tests/parity).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# On the book's reference machines a CPU wheel of torch 2.13.0 is available locally and must be
# installed before the package (otherwise pip pulls a multi-GB CUDA build). Elsewhere, override, e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.13.0

.PHONY: install test book execute check html lab start lint bench probe clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev,parity]"
	touch $@

## test: unit tests + re-execution of every notebook (nbval: strict on the reference numeric path),
## one pytest worker per CPU core (whole files per worker: a notebook's cells share one kernel)
test: install
	$(BIN)/python -m pytest -n auto --dist loadfile

## book: execute every notebook, validate the book offline, then render the HTML site
book: execute check html

execute: install
	$(BIN)/python tools/execute_notebooks.py

check: install
	$(BIN)/python tools/check_book.py

html: install
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/myst build --html || { \
	  echo ""; \
	  echo "myst build --html failed. It downloads the MyST book theme from the internet;"; \
	  echo "without internet access this step cannot succeed (everything before it did)."; \
	  exit 1; }

## start: live preview of the book at http://localhost:3000 (needs the internet for the theme)
start: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/myst start

## lab: open the notebooks in JupyterLab (installs jupyterlab into the venv on first use)
lab: install
	$(BIN)/python -m pip install jupyterlab
	$(BIN)/jupyter lab book/

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src

## bench: the performance benchmarks (one CPU thread, ~5 min), written to benchmarks/results.md; not part of `make test`
bench: install
	$(BIN)/python benchmarks/run_all.py

## probe: the numeric-path checksum (plain torch); compare with tools/repro_probe.expected
probe: install
	$(BIN)/python tools/repro_probe.py

clean:
	rm -rf _build .pytest_cache
