# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-unit lint format bench faults eval clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

## The whole product on one machine: local Kafka, a worker, the MovieLens sample, a live view.
demo: setup
	$(BIN)/interest-stream demo

## Every test: unit, property and integration (starts its own Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set).
## The 20 slowest are listed at the end: CI's budget is 30 minutes, and they are where it goes.
test: setup
	$(BIN)/python -m pytest -q --durations=20

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Encoder backends, the core step, one worker on a local broker (throughput, latency), growth:
## benchmarks/results/bench.md (~30 min; `interest-stream bench --quick` ~10 min).
bench: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[test,bench]'
	$(BIN)/interest-stream bench

## The fault-injection suite at full size (kill -9, several workers, broker restarts, lost state, hostile
## input, a flood; ~30 min here): benchmarks/results/faults.md.  make test runs it at a small size.
faults: setup
	$(BIN)/python benchmarks/faults.py

## Both evaluation protocols on the MovieLens sample, every baseline incl. SASRec: benchmarks/results/.
eval: setup
	$(BIN)/interest-stream evaluate --dataset movielens --out benchmarks/results

clean:
	-$(BIN)/interest-stream broker stop
	-INTEREST_BROKER_DIR=.state/demo-broker $(BIN)/interest-stream broker stop
	rm -rf .state
