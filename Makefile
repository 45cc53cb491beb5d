# One entry point for contributors and CI: `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test test-slow lint mypy pytest clean bench chaos venv

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## make demo: embedded Redis, a worker, a local HTTPS receiver, sample events.
demo: $(STAMP)
	$(BIN)/python -m demo

## make test: lint, type-check, then the whole test suite against real parts.
test: lint mypy pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

mypy: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

## make test-slow: the guide's real-time scenarios (the 4/8/10 s schedule, 100 a
## minute), about 90 s; kept out of `make test` to hold it near 8 minutes.
test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo

## make bench: benchmark scripts (not part of `make test`); reports go to bench-results/.
## bench.compare runs bench.isolation's scenario itself; run that one alone for its details.
bench: $(STAMP)
	$(BIN)/python -m bench.compare
	$(BIN)/python -m bench.attempt_cpu
	$(BIN)/python -m bench.ratelimit_overhead
	$(BIN)/python -m bench.ordering
	$(BIN)/python -m bench.capacity

## make chaos: every accepted event delivered or dead-lettered while workers and Redis crash
## (bench.chaos; `python -m bench.chaos --quick` for a smoke run); report in bench-results/.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos
