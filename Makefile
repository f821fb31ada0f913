# fedsilo: `make demo` runs the local consortium demo, `make test` runs the whole test suite.
# Both create the virtual environment in .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Kubeflow Pipelines SDK needs protobuf < 7 (fedsilo: >= 7): it lives in its own venv.
KFP_VENV := .venv-kfp
KFP_STAMP := $(KFP_VENV)/.installed
# The TF.js converter's declared dependencies replace TensorFlow and crash beside it: its own venv,
# with TF.js for Node.js (checks converted models) in $(TFJS_VENV)/node.
TFJS_VENV := .venv-tfjs
TFJS_STAMP := $(TFJS_VENV)/.installed
# The tests start hundreds of Python processes (daemons, coordinators, CLI commands): each would
# compile the repository's modules again without a bytecode cache (__pycache__, ignored by git).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast chaos lint typecheck check protos bench bench-round bench-paillier-round bench-learning \
	bench-upload-memory clean \
	testbed testbed-clean kfp-venv tfjs-venv kubeflow-pipeline

# pip -qq: errors only. Index configuration on some machines makes pip warn about every package
# it looks up; a failed install still prints its error and stops make.
$(STAMP): pyproject.toml
	@echo "make: creating $(VENV) and installing fedsilo with its tf, postgres and dev extras"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[tf,postgres,dp,dev]'
	touch $(STAMP)

$(KFP_STAMP): deploy/kubeflow/requirements.txt
	$(PYTHON) -m venv $(KFP_VENV)
	@echo "make: creating $(KFP_VENV) for the Kubeflow Pipelines SDK"
	$(KFP_VENV)/bin/pip install -qq -r deploy/kubeflow/requirements.txt
	touch $(KFP_STAMP)

# About 2½ minutes (longer on a busy machine) and 2.2 GB. Needs node and npm (Node.js 18+).
$(TFJS_STAMP): scripts/tfjs/requirements.txt scripts/tfjs/requirements-no-deps.txt scripts/tfjs/package.json
	@echo "make: creating $(TFJS_VENV) for the TensorFlow.js converter and TF.js under Node.js"
	$(PYTHON) -m venv $(TFJS_VENV)
	$(TFJS_VENV)/bin/pip install -qq -r scripts/tfjs/requirements.txt
	$(TFJS_VENV)/bin/pip install -qq --no-deps -r scripts/tfjs/requirements-no-deps.txt
	mkdir -p $(TFJS_VENV)/node
	cp scripts/tfjs/package.json $(TFJS_VENV)/node/package.json
	npm install --prefix $(TFJS_VENV)/node --no-audit --no-fund --silent
	touch $(TFJS_STAMP)

demo: $(STAMP)
	$(BIN)/fedsilo demo --summary-json out.json

# The whole suite: unit, integration, system, PostgreSQL and TensorFlow tests, and the static
# checks of deploy/ (compose config, hadolint, Kubernetes schemas, the compiled Kubeflow
# pipeline), and the TF.js export run in TF.js. The compose testbed on a real engine is
# `make testbed` (deploy/README.md).
# The fast tests run on every core and one more (pytest-xdist); the rest, which start processes, databases
# and TensorFlow of their own, two at a time (they mostly wait on deadlines, idle phases and
# shaped links; each has its own ports, directories and namespaces), with the slowest listed.
FAST_TESTS := not tf and not postgres and not system and not slow
# The fast tests' temporary directories live in memory where the machine has /dev/shm: the
# participant and the blob store fsync every state file they write (thousands in the fast
# tests), which costs a disk's latency each and nothing on tmpfs. Durability against real
# crashes is tested by the slow tests, on disk.
FAST_TMPDIR := $(if $(wildcard /dev/shm/.),/dev/shm,$(or $(TMPDIR),/tmp))
# About a third of the fast tests' time is spent waiting on in-process servers and child
# processes: one worker more than there are cores keeps the cores busy (39 s -> 32 s on 2).
FAST_WORKERS := $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
test: $(STAMP) $(KFP_STAMP) $(TFJS_STAMP)
	scripts/ensure-test-packages.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	TMPDIR=$(FAST_TMPDIR) $(BIN)/python -m pytest -q -n $(FAST_WORKERS) -m "$(FAST_TESTS)"
	$(BIN)/python -m pytest -q -n 2 -m "not ($(FAST_TESTS))" --durations=15

# Everything without TensorFlow, PostgreSQL or real processes: seconds, not minutes.
test-fast: $(STAMP)
	TMPDIR=$(FAST_TMPDIR) $(BIN)/python -m pytest -q -n $(FAST_WORKERS) -m "$(FAST_TESTS)"

# The long chaos run: a 20-round secure job on PostgreSQL under random kills of the coordinator,
# the database and organizations, and network partitions (make test runs a short one).
# FEDSILO_CHAOS_SEED=N replays a run; FEDSILO_CHAOS_ROUNDS=N changes its length.
chaos: $(STAMP)
	scripts/ensure-test-packages.sh
	FEDSILO_CHAOS_ROUNDS=$${FEDSILO_CHAOS_ROUNDS:-20} $(BIN)/python -m pytest -q tests/system/test_chaos.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

protos: $(STAMP)
	$(BIN)/python protos/generate.py

# Every benchmark (tests/bench/README.md): the secagg library, whole rounds (c), the Paillier
# library, whole paillier rounds (d), the coordinator's memory under large uploads. About 5
# minutes on 2 cores, (d) 2 of them.
bench: $(STAMP)
	$(BIN)/python tests/bench/bench_secagg.py
	$(BIN)/python tests/bench/bench_round.py $(BENCH_ROUND_ARGS)
	$(BIN)/python tests/bench/bench_paillier.py
	$(BIN)/python tests/bench/bench_round.py $(BENCH_PAILLIER_ROUND) $(BENCH_PAILLIER_ROUND_ARGS)
	$(BIN)/python tests/bench/bench_upload_memory.py $(BENCH_UPLOAD_MEMORY_ARGS)

# The coordinator's peak memory with stalled, oversized and accepted uploads of a 256 MiB model,
# as a ratio of the model size (R16). Options go in BENCH_UPLOAD_MEMORY_ARGS, e.g. "--megabytes 512".
bench-upload-memory: $(STAMP)
	$(BIN)/python tests/bench/bench_upload_memory.py $(BENCH_UPLOAD_MEMORY_ARGS)

# A coordinator and 5 participant daemons on loopback: secagg round time / none round time.
# Learning quality under label skew over simulated organizations (tests/bench/README.md).
# Options go in BENCH_LEARNING_ARGS, e.g. make bench-learning BENCH_LEARNING_ARGS="--tasks digits-linear"
bench-learning: $(STAMP)
	$(BIN)/python tests/bench/bench_learning.py $(BENCH_LEARNING_ARGS)

# Options go in BENCH_ROUND_ARGS, e.g. make bench-round BENCH_ROUND_ARGS="--rounds 8 --repeats 2"
bench-round: $(STAMP)
	$(BIN)/python tests/bench/bench_round.py $(BENCH_ROUND_ARGS)

# A coordinator and 3 participant daemons, 100k parameters: paillier round time / secagg's (d).
# Options go in BENCH_PAILLIER_ROUND_ARGS (they override these), e.g. "--rounds 8 --repeats 2".
BENCH_PAILLIER_ROUND := --participants 3 --parameters 100000 --protections secagg paillier --rounds 6
bench-paillier-round: $(STAMP)
	$(BIN)/python tests/bench/bench_round.py $(BENCH_PAILLIER_ROUND) $(BENCH_PAILLIER_ROUND_ARGS)

# The compose consortium on a private Docker engine, end to end, then everything torn down
# (deploy/README.md). Needs root and apt (Debian/Ubuntu); its cache is ~/.cache/fedsilo-testbed.
testbed: $(STAMP)
	PYTHON=$(BIN)/python deploy/testbed/run.sh

# Forget the testbed's engine, images and build cache (nothing of it runs between testbeds).
testbed-clean:
	rm -rf $${FEDSILO_TESTBED_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/fedsilo-testbed}

kfp-venv: $(KFP_STAMP)

# fedsilo model export --format tfjs runs the converter from here (docs/requirements.md).
tfjs-venv: $(TFJS_STAMP)

# Compile the Kubeflow pipeline; the suite fails when deploy/kubeflow/pipeline.yaml is stale.
kubeflow-pipeline: $(KFP_STAMP)
	$(KFP_VENV)/bin/python deploy/kubeflow/pipeline.py deploy/kubeflow/pipeline.yaml

clean:
	rm -rf $(VENV) $(KFP_VENV) $(TFJS_VENV) out.json
