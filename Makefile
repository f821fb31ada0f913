# fedsilo: `make demo` runs the local consortium demo, `make test` runs the whole test suite.
# Both create the virtual environment in .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck check protos bench bench-round bench-paillier-round clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[tf,postgres,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedsilo demo --summary-json out.json

# The whole suite: unit, integration, system, PostgreSQL and TensorFlow tests.
test: $(STAMP)
	scripts/ensure-postgres.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Everything without TensorFlow, PostgreSQL or real processes: seconds, not minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not tf and not postgres and not system and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

protos: $(STAMP)
	$(BIN)/python protos/generate.py

# Every benchmark (tests/bench/README.md): the secagg library, whole rounds (c), the Paillier
# library, whole paillier rounds (d). About 4 minutes on 2 cores, (d) half of it.
bench: $(STAMP)
	$(BIN)/python tests/bench/bench_secagg.py
	$(BIN)/python tests/bench/bench_round.py $(BENCH_ROUND_ARGS)
	$(BIN)/python tests/bench/bench_paillier.py
	$(BIN)/python tests/bench/bench_round.py $(BENCH_PAILLIER_ROUND) $(BENCH_PAILLIER_ROUND_ARGS)

# A coordinator and 5 participant daemons on loopback: secagg round time / none round time.
# Options go in BENCH_ROUND_ARGS, e.g. make bench-round BENCH_ROUND_ARGS="--rounds 8 --repeats 2"
bench-round: $(STAMP)
	$(BIN)/python tests/bench/bench_round.py $(BENCH_ROUND_ARGS)

# A coordinator and 3 participant daemons, 100k parameters: paillier round time / secagg's (d).
# Options go in BENCH_PAILLIER_ROUND_ARGS (they override these), e.g. "--rounds 8 --repeats 2".
BENCH_PAILLIER_ROUND := --participants 3 --parameters 100000 --protections secagg paillier --rounds 6
bench-paillier-round: $(STAMP)
	$(BIN)/python tests/bench/bench_round.py $(BENCH_PAILLIER_ROUND) $(BENCH_PAILLIER_ROUND_ARGS)

clean:
	rm -rf $(VENV) out.json
