#!/usr/bin/env bash
# The GPU serving measurement, run on a lent GPU machine from the repository root (benchmarks/gpu_serving.py).
# Prepare here first: `make gpu-carry` (the MPNet tokenizer and the services' wheels for Python 3.11-3.13 in
# .gpu-carry/, ~8 MB), then carry .gpu-carry with the run. The machine has torch + CUDA, transformers, onnx and
# onnxruntime but not FastAPI & co., and no network: the wheels go into a folder on PYTHONPATH, so the
# machine's own torch stays in use. Results land in $OUT (default results/gpu-serving).
set -euo pipefail
OUT=${OUT:-results/gpu-serving}
PY=${GPU_PYTHON:-python3}
mkdir -p "$OUT"
SITE=${TMPDIR:-/tmp}/gpu-serving-site
"$PY" -m pip install -q --no-index --find-links .gpu-carry/wheels --target "$SITE" \
    fastapi uvicorn pydantic-settings prometheus-client httpx
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
lscpu > "$OUT/lscpu.txt" 2>&1 || true
exec "$PY" -m benchmarks.gpu_serving --tokenizer-dir .gpu-carry/tokenizer --out "$OUT" \
    --budget-s "${BUDGET_S:-450}" "$@"
