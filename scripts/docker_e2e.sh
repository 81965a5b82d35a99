#!/usr/bin/env bash
# make docker-e2e: the whole compose stack on this machine, proven end to end, then torn down.
#  1. install and start a Docker engine if none answers (no bridge network: host networking only,
#     so no private-range address is ever created or used);
#  2. build a local Python 3.11 base image (no registry here) with debootstrap;
#  3. build the three images; bring the stack up with the offline all-mpnet-base-v2 model;
#  4. check parity of both /embed, measure image sizes and 100 sequential requests per service
#     (scripts/docker_e2e_check.py writes results/docker-e2e.json);
#  5. memory-capped soak: each service in its container, capped at compose's mem_limit (its Kubernetes limit),
#     under 64 clients (4x the 16 that saturate it) sending texts of many lengths for DOCKER_SOAK_S seconds
#     (default 180): no OOM kill, no restart, only 200 and 429 (loadtest/soak.py, results/docker-soak/);
#  6. tear down what it started: the stack and volumes, and dockerd (by pid) if it started it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-.venv/bin/python}
BASE_IMAGE=${BASE_IMAGE:-embedding-lab/python:3.11-bookworm}
PROJECT=embeddinglab
HOST_COMPOSE=""
STARTED_DOCKERD_PID=""
STATE_DIR=${STATE_DIR:-/tmp/embedding-lab-docker}
mkdir -p "$STATE_DIR" results

log() { printf '\n== %s\n' "$*"; }

compose_cli() {
    if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
compose() { compose_cli -p "$PROJECT" -f "$HOST_COMPOSE" "$@"; }

cleanup() {
    local rc=$?
    log "tearing down"
    if [ -n "$HOST_COMPOSE" ] && docker info >/dev/null 2>&1; then
        compose logs --no-color >"$STATE_DIR/compose.log" 2>&1 || true
        compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    if [ -n "$STARTED_DOCKERD_PID" ]; then
        kill "$STARTED_DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        echo "stopped dockerd (pid $STARTED_DOCKERD_PID)"
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

log "docker engine"
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
        || ! { command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; }; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
    fi
    setsid dockerd --bridge=none --iptables=false --ip6tables=false >"$STATE_DIR/dockerd.log" 2>&1 &
    STARTED_DOCKERD_PID=$!
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: see $STATE_DIR/dockerd.log"; exit 1; }
    echo "started dockerd (pid $STARTED_DOCKERD_PID, no bridge)"
fi

log "base image $BASE_IMAGE"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    ROOTFS=$(mktemp -d "$STATE_DIR/rootfs.XXXX")
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" \
        >"$STATE_DIR/debootstrap.log" 2>&1 || { tail -20 "$STATE_DIR/debootstrap.log"; exit 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$ROOTFS"
fi
echo "$BASE_IMAGE: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes"

log "offline model and the CPU torch wheel"
"$PY" scripts/fetch_models.py --dest models --only mpnet
rm -f docker/wheels/torch-*.whl
TORCH_WHEEL=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
if [ -n "$TORCH_WHEEL" ]; then cp "$TORCH_WHEEL" docker/wheels/; TORCH_INDEX_URL=""; else TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu; fi

log "building images"
build() {  # build <tag> <dockerfile> [target]
    local tag=$1 file=$2 target=${3:-} started=$SECONDS
    docker build --network host -t "$tag" -f "$file" ${target:+--target "$target"} \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
        --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" . >"$STATE_DIR/build-${tag//[:\/]/_}.log" 2>&1 \
        || { tail -30 "$STATE_DIR/build-${tag//[:\/]/_}.log"; exit 1; }
    echo "built $tag in $((SECONDS - started)) s"
}
build embedding-lab/artifacts:latest services/torch_api/Dockerfile artifacts
build embedding-lab/torch-api:latest services/torch_api/Dockerfile runtime
build embedding-lab/onnx-api:latest services/onnx_api/Dockerfile
build embedding-lab/locust:latest loadtest/Dockerfile
rm -f docker/wheels/torch-*.whl

log "compose up (artifacts -> torch_api + onnx_api -> locust)"
export MODEL=/models/all-mpnet-base-v2 HF_HUB_OFFLINE=1 MODEL_DIR="$REPO/models" TORCH_API_THREADS=2 ONNX_API_THREADS=2
HOST_COMPOSE="$STATE_DIR/compose.host.yaml"
compose_cli -f compose.yaml config | "$PY" scripts/compose_host_mode.py >"$HOST_COMPOSE"
compose up -d --no-build
"$PY" scripts/docker_e2e_check.py --torch-url http://127.0.0.1:8001 --onnx-url http://127.0.0.1:8002 \
    --locust-url http://127.0.0.1:8089 --model models/all-mpnet-base-v2 --requests 100 --out results/docker-e2e.json \
    --images torch_api=embedding-lab/torch-api:latest onnx_api=embedding-lab/onnx-api:latest

log "memory-capped soak: 64 clients of many-shape texts per service, ${DOCKER_SOAK_S:-180} s each"
for SERVICE in onnx_api torch_api; do
    PORT=$("$PY" -c "from services.catalog import SERVICES; print(SERVICES['$SERVICE'].port)")
    "$PY" -m loadtest.soak --url "http://127.0.0.1:$PORT" --service "$SERVICE" --clients 64 \
        --duration-s "${DOCKER_SOAK_S:-180}" --sample-s 10 --fail-on-errors --out "results/docker-soak/$SERVICE"
    CONTAINER=$(compose ps -q "$SERVICE")
    read -r LIMIT OOM RESTARTS STATUS < <(docker inspect -f \
        '{{.HostConfig.Memory}} {{.State.OOMKilled}} {{.RestartCount}} {{.State.Status}}' "$CONTAINER")
    echo "$SERVICE container: memory limit $((LIMIT / 1048576)) MiB, OOMKilled $OOM, restarts $RESTARTS, $STATUS"
    if [ "$LIMIT" -le 0 ] || [ "$OOM" != false ] || [ "$RESTARTS" != 0 ] || [ "$STATUS" != running ]; then
        echo "memory-capped soak failed for $SERVICE"; exit 1
    fi
done
