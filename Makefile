# The README's two commands are `make demo` and `make test`; both set up whatever is missing first.
.PHONY: setup demo demo-full test lint package clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	@scripts/bootstrap.sh

demo: setup
	$(BIN)/oncolake demo

demo-full: setup
	$(BIN)/oncolake demo --full

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

package: setup
	$(BIN)/oncolake package

clean:
	rm -rf lakehouse data dist
