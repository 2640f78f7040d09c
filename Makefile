# The README's two commands are `make demo` and `make test`; both set up whatever is missing first.
# `make test-fast` is the inner loop (no slow tests, no type check); CONTRIBUTING.md says more.
.PHONY: setup setup-test demo demo-full test test-fast lint package clean

VENV := .venv
BIN := $(VENV)/bin
# Extra pytest arguments, e.g. make test-fast PYTEST_ARGS="tests/conf -x"
PYTEST_ARGS ?=

# The static checks: lint, format, the layer contract (pyproject's [tool.importlinter]), types.
define CHECKS
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
endef

setup:
	@scripts/bootstrap.sh

# The full suite also needs a headless browser (the slow registry browser test): installed here only.
setup-test:
	@scripts/bootstrap.sh --test

demo: setup
	$(BIN)/oncolake demo

demo-full: setup
	$(BIN)/oncolake demo --full

test: setup-test
	$(CHECKS)
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" --durations=15 $(PYTEST_ARGS)

lint: setup
	$(CHECKS)

package: setup
	$(BIN)/oncolake package

clean:
	rm -rf lakehouse lakehouse-full data dist
