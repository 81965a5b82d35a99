"""deploy/ray: the service as Ray Serve replicas on a real local Ray cluster (MiniLM artifacts, 2 CPUs).

Ray's processes bind to 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes a single-node cluster
use the loopback address, as on macOS), and every test leaves no Ray process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from loadtest.processes import free_port

from .conftest import REPO

CONFIG = REPO / "deploy" / "ray" / "serve_config.yaml"
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
TEXTS = [
    "Where is the nearest train station?",
    "Dinner is ready.",
    "Paris is the capital of France.",
    "I love hiking in the mountains.",
    "The quarterly report is due on Friday.",
    "Hi",
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


def ray_children() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if p.is_running()]


# --- fast: the config file is what Serve accepts, and it keeps replicas x threads within the cores ---


def test_serve_config_is_valid_and_fits_the_cores():
    from ray.serve.schema import ServeDeploySchema

    from deploy.ray.serve_app import MAX_ONGOING_REQUESTS, MAX_QUEUED_REQUESTS, SHUTDOWN_GRACE_S, build_app

    config = ServeDeploySchema(**yaml.safe_load(CONFIG.read_text()))
    assert config.http_options.host == "127.0.0.1"
    (application,) = config.applications
    assert application.import_path == "deploy.ray.serve_app:build_app"
    (deployment,) = application.deployments
    threads = application.args["threads"]
    autoscaling = deployment.autoscaling_config
    assert autoscaling["max_replicas"] * threads <= 2, "replicas x threads must fit this machine's 2 cores"
    assert 0 < autoscaling["target_ongoing_requests"] < deployment.max_ongoing_requests
    assert deployment.max_ongoing_requests == MAX_ONGOING_REQUESTS
    assert deployment.max_queued_requests == MAX_QUEUED_REQUESTS
    assert deployment.backpressure_config.status_code == 429  # as the plain service when overloaded
    assert deployment.graceful_shutdown_timeout_s == SHUTDOWN_GRACE_S == 25

    app = build_app(application.args)  # builds the graph; starts nothing
    options = app._bound_deployment.ray_actor_options
    assert options["num_cpus"] == threads


def test_build_app_refuses_an_unknown_service():
    from deploy.ray.serve_app import build_app

    with pytest.raises(ValueError, match="service must be one of"):
        build_app({"service": "tensorflow"})


# --- slow: real Ray ---


@pytest.mark.slow
def test_serve_run_with_the_config_file(minilm_artifacts, tmp_path):
    """`serve run deploy/ray/serve_config.yaml` (artifacts and port swapped for the test) serves /embed."""
    config = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["artifacts_dir"] = str(minilm_artifacts)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "serve-run.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(path)],
        cwd=REPO,
        env={**os.environ, **LOOPBACK_ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            assert process.poll() is None, (tmp_path / "serve-run.log").read_text()[-3000:]
            try:
                return httpx.get(f"{base}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 120, "serve run to answer /health")
        response = httpx.post(f"{base}/embed", json={"inputs": TEXTS[:2]}, timeout=30)
        assert response.status_code == 200 and np.asarray(response.json()).shape == (2, 384)
        assert response.headers["x-serve-replica"]
    finally:
        process.send_signal(signal.SIGINT)  # serve run shuts Serve and its local Ray cluster down on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()

    # Ray's own processes (raylet, GCS, workers) run in serve run's session and exit shortly after it.
    def session_processes() -> list[str]:
        found = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(process.pid)], capture_output=True, text=True)
        return found.stdout.strip().splitlines()

    try:
        wait_until(lambda: not session_processes(), 30, "serve run's Ray processes to exit")
    finally:
        leftover = session_processes()
        for line in leftover:
            os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.fixture(scope="module")
def serve_cluster():
    """A local Ray cluster on 127.0.0.1 with 2 CPUs and Serve's proxy on a free port; torn down after."""
    from deploy.ray.measure import ray_cluster

    with ray_cluster(cpus=2) as base_url:
        yield base_url
    wait_until(lambda: not ray_children(), 30, "Ray's processes to exit")


def deploy(artifacts, num_replicas: int, threads: int = 1, variant: str = "auto", **options):
    from ray import serve

    from deploy.ray.serve_app import make_app

    app = make_app(
        {
            "service": "onnx",
            "artifacts_dir": str(artifacts),
            "threads": threads,
            "num_replicas": num_replicas,
            "settings": {"variant": variant},
        },
        **options,
    )
    serve.run(app, name="embeddings", route_prefix="/")


def running_replicas() -> set[str]:
    """Ids of the deployment's RUNNING replicas, from Serve's controller."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployment = details["applications"]["embeddings"]["deployments"]["embeddings"]
    return {r["replica_id"] for r in deployment["replicas"] if r["state"] == "RUNNING"}


@pytest.fixture(scope="module")
def plain_vectors(minilm_artifacts):
    """The plain service (same app factory, same artifacts), one request per text set, for the default
    variant (int8) and for fp32 (onnx_optimized: a vector that does not depend on its batch neighbours)."""
    from fastapi.testclient import TestClient

    from services.common.app import create_app
    from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings

    out = {}
    for variant in ("auto", "onnx_optimized"):
        settings = OnnxSettings(artifacts_dir=minilm_artifacts, threads=1, variant=variant)
        with TestClient(create_app(settings, OnnxEmbedder(settings))) as client:
            wait_until(lambda c=client: c.get("/health").status_code == 200, 120, "the plain service", 0.05)
            out[variant] = {
                i: np.asarray(client.post("/embed", json={"inputs": TEXTS[i : i + 3]}).json())
                for i in range(len(TEXTS))
            }
    return out


@pytest.mark.slow
def test_two_replicas_answer_like_the_plain_service(serve_cluster, minilm_artifacts, plain_vectors):
    deploy(minilm_artifacts, num_replicas=2)
    assert len(running_replicas()) == 2
    # Ready means warm: the first requests after serve.run are answered, never 503.
    assert httpx.get(f"{serve_cluster}/health", timeout=10).status_code == 200
    seen = set()
    with httpx.Client(base_url=serve_cluster, timeout=30) as client:
        for round_ in range(4):
            for i, expected in plain_vectors["auto"].items():
                response = client.post("/embed", json={"inputs": TEXTS[i : i + 3]})
                assert response.status_code == 200, response.text
                vectors = np.asarray(response.json())
                assert vectors.shape == expected.shape
                assert cosine_rows(vectors, expected).min() > 0.9999, (round_, i)
                seen.add(response.headers["x-serve-replica"])
        info = client.get("/info").json()
    assert seen == running_replicas(), f"requests reached {seen}"
    assert info["threads"] == 1 and info["dimension"] == 384


def replicas_if(condition) -> set[str] | None:
    ids = running_replicas()
    return ids if condition(ids) else None


def _replica_actor(replica_id: str):
    import ray

    return ray.get_actor(f"SERVE_REPLICA::embeddings#embeddings#{replica_id}", namespace="serve")


@pytest.mark.slow
def test_killing_a_replica_loses_no_retried_request_and_serve_replaces_it(
    serve_cluster, minilm_artifacts, plain_vectors
):
    import ray

    # fp32: concurrent clients share batches, and an int8 vector moves with its batch neighbours.
    deploy(minilm_artifacts, num_replicas=2, variant="onnx_optimized")
    before = wait_until(lambda: replicas_if(lambda ids: len(ids) == 2), 60, "2 running replicas")
    stop = threading.Event()
    answered = []  # (worker, replica, min cosine against the plain service), appended by the clients

    def client_loop(worker: int) -> dict:
        """Closed loop; a failed attempt (connection error, 5xx) is retried up to 10 times with backoff."""
        stats = {"requests": 0, "retried": 0, "failed_attempts": 0, "lost": 0, "statuses": []}
        with httpx.Client(base_url=serve_cluster, timeout=30) as client:
            while not stop.is_set():
                i = (worker + stats["requests"]) % len(TEXTS)
                for attempt in range(10):
                    try:
                        response = client.post("/embed", json={"inputs": TEXTS[i : i + 3]})
                    except httpx.HTTPError as exc:
                        response, status = None, type(exc).__name__
                    else:
                        status = response.status_code
                    if status == 200:
                        break
                    stats["failed_attempts"] += 1
                    stats["statuses"].append(status)
                    time.sleep(0.2 * (attempt + 1))
                else:
                    stats["lost"] += 1
                    continue
                stats["retried"] += attempt > 0
                stats["requests"] += 1
                vectors = np.asarray(response.json())
                answered.append(
                    (
                        worker,
                        response.headers["x-serve-replica"],
                        float(cosine_rows(vectors, plain_vectors["onnx_optimized"][i]).min()),
                    )
                )
        return stats

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client_loop, w) for w in range(4)]
        wait_until(
            lambda: len({w for w, _, _ in answered}) == 4 or any(f.done() for f in futures),
            60,
            "all four clients to get answers",
        )
        victim = sorted(before)[0]
        ray.kill(_replica_actor(victim), no_restart=True)
        killed_at = time.monotonic()
        try:
            replaced = wait_until(
                lambda: replicas_if(lambda ids: len(ids) == 2 and victim not in ids),
                120,
                "Serve to replace the killed replica",
            )
            recovered_s = time.monotonic() - killed_at
            seen_before = len(answered)
            wait_until(lambda: len(answered) > seen_before + 8, 60, "traffic after the replacement")
        finally:
            stop.set()
            results = [f.result(timeout=120) for f in futures]
    total = {k: sum(r[k] for r in results) for k in ("requests", "retried", "failed_attempts", "lost")}
    statuses = sorted({str(s) for r in results for s in r["statuses"]})
    print(
        f"\nkilled replica {victim}; replaced by {sorted(replaced - before)} after {recovered_s:.1f} s; "
        f"clients: {total}, failed attempts answered {statuses}"
    )
    assert total["lost"] == 0, total
    assert total["requests"] == len(answered) > 20
    assert min(c for _, _, c in answered) > 0.9999
    assert len(running_replicas()) == 2
    assert replaced - before <= {r for _, r, _ in answered}, "the replacement replica never answered"


@pytest.mark.slow
def test_overload_answers_429_with_retry_after(serve_cluster, minilm_artifacts):
    """Past max_ongoing_requests + max_queued_requests, the proxy answers 429 with Retry-After, like the plain
    service when its estimated queue wait is over budget."""
    deploy(minilm_artifacts, num_replicas=1, max_ongoing_requests=1, max_queued_requests=1)
    body = {"inputs": [TEXTS[0] * 8] * 32}

    def post(_):
        return httpx.post(f"{serve_cluster}/embed", json=body, timeout=60)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 429)
