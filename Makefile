# The two commands a new user needs:
#   make demo   run the main job on the embedded defaults (sets everything up on first use)
#   make test   run the test suite (sets everything up, Azurite included, on first use)
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
# Quiet TensorFlow's C++ start-up chatter in training subprocesses.
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: setup setup-tests demo test ui daemon lint bench bench-scale clean-data

setup:
	@scripts/bootstrap.sh

setup-tests:
	@scripts/bootstrap.sh --tests

demo: setup
	$(BIN)/mlassets demo

test: setup-tests
	$(BIN)/ruff check mlassets mlassets_tests benchmarks infra
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The Dagster UI and daemon (sensors, run queue) on http://127.0.0.1:3000
ui: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

# Only the daemon: runs queued by `dagster job launch` and sensor ticks
daemon: setup
	$(BIN)/dagster-daemon run

lint: setup-tests
	$(BIN)/ruff check mlassets mlassets_tests benchmarks infra

bench: setup
	$(BIN)/python -m benchmarks

# The data path at 1M and 10M landed events (about 15 minutes, a few GB of disk)
bench-scale: setup
	$(BIN)/python -m benchmarks scale

# Forget the embedded services' data and the Dagster run history (keeps dagster.yaml)
clean-data:
	rm -rf data
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
