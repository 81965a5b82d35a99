"""Both services, in-process (TestClient) and as real uvicorn processes, on real MiniLM artifacts."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from build_artifacts.corpus import english_sentences
from loadtest.processes import free_port, running_service
from runtime.host import probe_cpu
from runtime.selection import SPEEDUP_FOR_FIDELITY
from runtime.variants import INT8_FEATURES, names, served_by
from services.catalog import SERVICES as CATALOG
from services.common.app import create_app
from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings
from services.torch_api.embedder import TorchEmbedder, TorchSettings

from .conftest import REPO

ONNX_SERVED = names(served_by("onnx_api"))

# short name -> (settings class, embedder class, settings for a short in-process run), from services/catalog.py
SERVICES = {row.short: (*row.classes(), row.in_process_settings) for row in CATALOG.values()}


def wait_ready(client: TestClient, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.05)


@pytest.fixture(scope="module", params=list(SERVICES))
def client(request, minilm_artifacts):
    settings_cls, embedder_cls, extra = SERVICES[request.param]
    settings = settings_cls(
        artifacts_dir=minilm_artifacts, threads=1, max_client_batch_size=8, max_payload_bytes=50_000, **extra
    )
    with TestClient(create_app(settings, embedder_cls(settings))) as test_client:
        wait_ready(test_client)
        yield test_client


def test_embed_returns_one_normalized_vector_per_input(client):
    single = client.post("/embed", json={"inputs": "Where is the nearest train station?"})
    assert single.status_code == 200
    assert np.asarray(single.json()).shape == (1, 384)
    many = client.post("/embed", json={"inputs": ["Dinner is ready.", "Paris is the capital of France.", "Hi"]})
    vectors = np.asarray(many.json())
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for header in ("x-total-time", "x-queue-time", "x-inference-time"):
        assert float(many.headers[header]) >= 0


def test_normalize_false_returns_the_raw_pooled_vector(client):
    raw = np.asarray(client.post("/embed", json={"inputs": ["Dinner is ready."], "normalize": False}).json())
    unit = np.asarray(client.post("/embed", json={"inputs": ["Dinner is ready."]}).json())
    assert abs(np.linalg.norm(raw) - 1.0) > 0.05
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


def test_openai_route_floats_and_base64_agree(client):
    body = {"input": ["Dinner is ready.", "I love hiking in the mountains."], "model": "anything"}
    floats = client.post("/v1/embeddings", json=body).json()
    encoded = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    assert floats["object"] == "list" and floats["model"] == "anything"
    assert [d["index"] for d in floats["data"]] == [0, 1] and floats["data"][0]["object"] == "embedding"
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 4
    decoded = np.frombuffer(base64.b64decode(encoded["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][1]["embedding"], atol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        ("/embed", b"{not json", 422, "validation"),
        ("/embed", {"inputs": 5}, 422, "validation"),
        ("/embed", {"inputs": ["ok", 3]}, 422, "validation"),
        ("/embed", {"inputs": "ok", "normalize": "yes"}, 422, "validation"),
        ("/embed", {"text": "wrong field"}, 422, "validation"),
        ("/embed", {"inputs": []}, 400, "empty"),
        ("/embed", {"inputs": ""}, 400, "empty"),
        ("/embed", {"inputs": ["fine", "  "]}, 400, "empty"),
        ("/embed", {"inputs": "\u200b\u200b"}, 400, "empty"),
        ("/embed", {"inputs": ["ok", "\u0000"]}, 400, "empty"),
        ("/embed", {"inputs": "\ud800"}, 400, "invalid_text"),
        ("/v1/embeddings", {"input": ["\udfff"]}, 400, "invalid_text"),
        ("/embed", {"inputs": ["x"] * 9}, 413, "too_large"),
        ("/embed", {"inputs": english_sentences()[-1] * 3, "truncate": False}, 413, "too_large"),
        ("/embed", {"inputs": "word " * 12_000}, 413, "too_large"),
        ("/v1/embeddings", {"input": []}, 400, "empty"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 422, "validation"),
        ("/v1/embeddings", {"input": "x", "dimensions": 385}, 400, "invalid_parameter"),
        ("/nowhere", {}, 404, "not_found"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_service_stays_up(client, path, body, status, error_type):
    # json.dumps escapes lone surrogates (\ud800) the way a hostile client sends them; httpx's json= cannot.
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error_type"] == error_type and payload["error"]
    assert client.post("/embed", json={"inputs": "still alive"}).status_code == 200


def test_long_input_is_truncated_by_default(client):
    response = client.post("/embed", json={"inputs": english_sentences()[-1] * 3})
    assert response.status_code == 200 and len(response.json()) == 1


def test_info_and_metrics(client):
    info = client.get("/info").json()
    assert info["dimension"] == 384 and info["max_tokens"] == 256 and info["ready"]
    # auto: the most faithful of the fastest variants that pass the gate on this CPU. Which depends on the CPU (int8
    # kernels differ with and without VNNI, bf16 needs AVX512-BF16 or AMX): read it from the manifest's figures.
    manifest = json.loads((client.app.state.embedder.artifacts_dir / "manifest.json").read_text())
    selection = info["selection"]
    assert selection["variant"] == info["variant"] and "fastest" in selection["reason"]
    chosen = next(c for c in selection["candidates"] if c["verdict"] == "chosen")
    passing = [c for c in selection["candidates"] if c["verdict"] == "chosen" or c["verdict"].startswith("passes")]
    for c in passing:  # one faster at the batch is passed over only where it is no faster for one text
        if c["speed"]["texts_per_s"] > chosen["speed"]["texts_per_s"]:
            assert "not at one text" in c["verdict"], c
            assert c["speed"]["one_text_ms"] * SPEEDUP_FOR_FIDELITY > chosen["speed"]["one_text_ms"], c
    assert all(manifest["artifacts"][c["variant"]]["parity"]["passes_parity"] for c in passing)
    assert info["parity"]["passes_parity"]
    assert info["batching"]["max_client_batch_size"] == 8 and "versions" not in info  # only with show_versions
    # One request first, so the per-route histograms have samples even when this test runs alone.
    assert client.post("/embed", json={"inputs": "one request"}).status_code == 200
    text = client.get("/metrics").text
    for name in (
        "embed_requests_total",
        "embed_request_duration_seconds_bucket",
        "embed_queue_time_seconds",
        "embed_inference_time_seconds",
        "embed_batch_size_bucket",
        "embed_queue_depth",
    ):
        assert name in text


def test_torch_and_onnx_services_agree(minilm_artifacts):
    texts = list(english_sentences()[:8])
    results = {}
    for name, (settings_cls, embedder_cls, extra) in SERVICES.items():
        settings = settings_cls(artifacts_dir=minilm_artifacts, threads=1, **extra)
        with TestClient(create_app(settings, embedder_cls(settings))) as test_client:
            wait_ready(test_client)
            results[name] = np.asarray(test_client.post("/embed", json={"inputs": texts}).json())
    cosines = np.sum(results["torch"] * results["onnx"], axis=1)
    # Both defaults are int8 variants, each within 0.99 of fp32 on the parity texts: against each other, 0.98.
    assert cosines.min() >= 0.98


class GatedOnnxEmbedder(OnnxEmbedder):
    """The real ONNX embedder whose warm-up waits for a signal, to observe the not-ready state."""

    gate = threading.Event()

    def warmup(self) -> None:
        assert self.gate.wait(timeout=60)
        super().warmup()


def test_503_until_warmed_up(minilm_artifacts):
    settings = OnnxSettings(artifacts_dir=minilm_artifacts, threads=1)
    GatedOnnxEmbedder.gate.clear()
    with TestClient(create_app(settings, GatedOnnxEmbedder(settings))) as test_client:
        health = test_client.get("/health")
        assert health.status_code == 503 and health.json()["error_type"] == "unhealthy"
        assert test_client.post("/embed", json={"inputs": "too early"}).status_code == 503
        assert test_client.get("/info").json()["ready"] is False
        GatedOnnxEmbedder.gate.set()
        wait_ready(test_client)
        assert test_client.post("/embed", json={"inputs": "now"}).status_code == 200


def test_real_processes_serve_batch_and_reject_overload(minilm_artifacts):
    env = {"ONNX_API_MAX_WAIT_MS": "30", "ONNX_API_MAX_QUEUE_WAIT_MS": "150", "ONNX_API_MAX_BATCH_SIZE": "16"}
    with running_service("services.onnx_api", minilm_artifacts, env=env) as base:
        info = httpx.get(f"{base}/info").json()
        assert info["batching"] == {
            **info["batching"],
            "max_wait_ms": 30.0,
            "max_queue_wait_ms": 150.0,
            "max_batch_size": 16,
        }
        assert info["admission"]["measured_padded_tokens_per_s"] > 0

        async def burst(n_requests: int, texts_per_request: int):
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                body = {"inputs": ["I love hiking in the mountains."] * texts_per_request}
                return await asyncio.gather(*(http.post("/embed", json=body) for _ in range(n_requests)))

        # Batching: 12 concurrent one-text requests are merged into fewer model calls.
        responses = asyncio.run(burst(12, 1))
        assert all(r.status_code == 200 for r in responses)
        metrics = httpx.get(f"{base}/metrics").text
        calls = _metric(metrics, "embed_batch_requests_count")
        merged = calls - _metric(metrics, 'embed_batch_requests_bucket{le="1.0"}')
        assert merged >= 1, metrics
        # Overload: 60 requests x 8 texts against a 150 ms wait budget: 429s, never a 5xx.
        responses = asyncio.run(burst(60, 8))
        statuses = [r.status_code for r in responses]
        assert statuses.count(429) > 0 and statuses.count(200) > 0
        assert set(statuses) <= {200, 429}
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.json()["error_type"] == "overloaded" and int(rejected.headers["retry-after"]) >= 1
        # And it answers normally right after.
        assert httpx.post(f"{base}/embed", json={"inputs": "calm again"}).status_code == 200


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def test_real_torch_process_with_env_settings_and_openai_client(minilm_artifacts):
    from openai import OpenAI

    # fp32: dynamic int8 scales activations per batch, so a text's vector depends (slightly) on its batch mates.
    env = {"TORCH_API_COMPILE": "false", "TORCH_API_VARIANT": "torch_fp32"}
    with running_service("services.torch_api", minilm_artifacts, env=env) as base:
        info = httpx.get(f"{base}/info").json()
        assert info["runtime"] == "torch" and info["torch_compile"] is False and info["variant"] == "torch_fp32"
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        result = client.embeddings.create(model="minilm", input=["Dinner is ready.", "Please turn off the lights."])
        assert len(result.data) == 2 and len(result.data[0].embedding) == 384
        assert result.usage.prompt_tokens > 0
        direct = httpx.post(f"{base}/embed", json={"inputs": ["Dinner is ready."]}).json()[0]
        np.testing.assert_allclose(result.data[0].embedding, direct, atol=1e-5)


def test_torch_compile_serves_the_same_vectors(minilm_artifacts):
    results = {}
    for compile_flag in (False, True):
        settings = TorchSettings(artifacts_dir=minilm_artifacts, threads=2, compile=compile_flag, variant="torch_fp32")
        with TestClient(create_app(settings, TorchEmbedder(settings))) as test_client:
            wait_ready(test_client, timeout_s=600)
            assert test_client.get("/info").json()["torch_compile"] is compile_flag
            results[compile_flag] = np.asarray(
                test_client.post("/embed", json={"inputs": list(english_sentences()[:5])}).json()
            )
    assert np.sum(results[False] * results[True], axis=1).min() > 0.9999


@pytest.mark.parametrize("damage", ["corrupt", "missing", "no_manifest", "failing_variant"])
def test_refuses_to_start_on_a_bad_artifact(minilm_artifacts, tmp_path, damage):
    copy = tmp_path / "artifacts"
    shutil.copytree(minilm_artifacts, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    served = OnnxEmbedder(OnnxSettings(artifacts_dir=copy)).variant  # what auto would serve here
    target = copy / manifest["artifacts"][served]["path"]
    if target.is_dir():  # a variant stored as a folder (OpenVINO's .xml + .bin): damage its largest file
        target = max((f for f in target.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    args = []
    if damage == "corrupt":
        target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    elif damage == "missing":
        target.unlink()
    elif damage == "no_manifest":
        (copy / "manifest.json").unlink()
    else:
        # Whether the plain int8 recipe passes depends on the CPU (VNNI or not): make it fail in the manifest.
        manifest["artifacts"]["onnx_int8"]["parity"].update(min_cosine=0.5, passes_parity=False)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        args = ["--variant", "onnx_int8"]
    result = subprocess.run(
        [sys.executable, "-m", "services.onnx_api", "--artifacts", str(copy), "--port", str(free_port()), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    expected = {
        "corrupt": "corrupt",
        "missing": "missing",
        "no_manifest": "No manifest.json",
        "failing_variant": "fails the gate",
    }[damage]
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_onnx_service_never_imports_torch_or_transformers(minilm_artifacts):
    code = f"""
import sys
from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings
from services.common.app import create_app
settings = OnnxSettings(artifacts_dir={str(minilm_artifacts)!r}, threads=1)
embedder = OnnxEmbedder(settings)
embedder.verify(); embedder.load(); create_app(settings, embedder)
assert embedder.embed(["hello"]).shape == (1, 384)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_route_code_never_imports_torch_or_onnxruntime():
    for path in (REPO / "services" / "common").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"torch", "onnxruntime", "transformers"}, path


def test_torch_and_onnx_fp32_services_agree_to_rounding(minilm_artifacts):
    texts = list(english_sentences()[:8])
    vectors = []
    for settings in (
        TorchSettings(artifacts_dir=minilm_artifacts, threads=1, compile=False, variant="torch_fp32"),
        OnnxSettings(artifacts_dir=minilm_artifacts, threads=1, variant="onnx_optimized"),
        OnnxSettings(artifacts_dir=minilm_artifacts, threads=1, variant="onnx_fused"),
    ):
        embedder_cls = TorchEmbedder if isinstance(settings, TorchSettings) else OnnxEmbedder
        with TestClient(create_app(settings, embedder_cls(settings))) as test_client:
            wait_ready(test_client)
            assert test_client.get("/info").json()["variant"] == settings.variant
            vectors.append(np.asarray(test_client.post("/embed", json={"inputs": texts}).json()))
    assert np.sum(vectors[0] * vectors[1], axis=1).min() > 0.9999
    assert np.sum(vectors[0] * vectors[2], axis=1).min() > 0.9999  # the fused-attention graph, served


def test_parity_gate_picks_the_fastest_passing_variant(minilm_artifacts, tmp_path):
    """auto serves the fastest passing variant in the manifest (measured on this CPU at build): the speed
    figures (batch and one text alike) are rewritten so that each int8 recipe in turn is the fastest at both, then
    both fail the gate."""
    copy = tmp_path / "artifacts"
    shutil.copytree(minilm_artifacts, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    records = manifest["artifacts"]
    fastest_fp32 = max(
        (
            n
            for n in records
            if records[n]["precision"] == "fp32" and n in ONNX_SERVED and records[n]["parity"]["passes_parity"]
        ),
        key=lambda n: records[n]["speed"]["texts_per_s"],
    )

    def serve_default(passing: dict[str, bool], speeds: dict[str, float]) -> str:
        for name, passes in passing.items():
            records[name]["parity"]["passes_parity"] = passes
        for name, texts_per_s in speeds.items():
            records[name]["speed"]["texts_per_s"] = texts_per_s
            records[name]["speed"]["one_text_ms"] = 100.0 / texts_per_s  # faster at the batch: at one text too
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return OnnxEmbedder(OnnxSettings(artifacts_dir=copy)).variant

    top = max(r["speed"]["texts_per_s"] for r in records.values())
    # Only where this CPU has VNNI or AMX are 8-bit weights served at all (runtime.variants.INT8_FEATURES).
    if probe_cpu().has_any(INT8_FEATURES):
        assert (
            serve_default(
                {"onnx_int8": True, "onnx_int8_smooth": True}, {"onnx_int8": top * 3, "onnx_int8_smooth": top * 2}
            )
            == "onnx_int8"
        )
        assert (
            serve_default(
                {"onnx_int8": True, "onnx_int8_smooth": True}, {"onnx_int8": top * 2, "onnx_int8_smooth": top * 3}
            )
            == "onnx_int8_smooth"
        )
        assert serve_default({"onnx_int8": False, "onnx_int8_smooth": True}, {}) == "onnx_int8_smooth"
    assert (
        serve_default(
            {"onnx_int8": False, "onnx_int8_smooth": False},
            {"onnx_int8": top * 3, "onnx_int8_smooth": top * 3, fastest_fp32: top * 2},
        )
        == fastest_fp32
    )
    with pytest.raises(Exception, match="cannot be served here"):
        OnnxEmbedder(OnnxSettings(artifacts_dir=copy, variant="onnx_int8_smooth"))
