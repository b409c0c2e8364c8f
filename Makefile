# detflow: `make test` creates .venv when it is missing, installs, lints and runs the whole suite;
# `make demo` does the same set-up, then runs the file-processing demo.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install test lint unit integration reliability over-the-wire chaos demo bench check clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

# The whole suite in-process, then the integration and reliability suites again with the store
# behind MongoDB's wire protocol (manage.py runstore): tests/over_the_wire.py.
test: install lint
	$(BIN)/pytest
	$(BIN)/python -m tests.over_the_wire

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

reliability: install
	$(BIN)/pytest tests/reliability

over-the-wire: install
	$(BIN)/python -m tests.over_the_wire

chaos: install
	$(BIN)/python manage.py chaos --executions 5000 --steps 5 --threads 16 --drain-timeout 900

demo: install
	$(BIN)/python manage.py demo

# detflow against a raw Dramatiq chain and a Celery chain: bench/results.json, bench/results.png and
# the goals table (about 16 minutes; BENCH_ARGS="--quick" for a smoke run, about 3). Not part of `make test`.
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

check: install
	$(BIN)/python manage.py check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
