# `make test` and `make demo` work on a fresh machine with Python >= 3.11 and pip:
# they create .venv and install aibridge with its dev extras the first time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench bench-soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/aibridge demo

# Figures for BENCHMARKS.md (needs wrk: apt-get install wrk; ~7 min); bench-soak: RSS 10k vs 100k.
bench: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run

bench-soak: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run --soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
