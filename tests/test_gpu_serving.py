"""Serving on a GPU, the parts that run on a CPU: shape buckets, device and dtype settings, clean refusals,
the start-up precision check; GPU-only tests skip with the reason where CUDA is absent.

Fast: bucket functions and settings (no weights). Slow (MiniLM): vectors with and without buckets, the
precision check on CPU (bf16), graphs compiled at warm-up and none after.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from services.common.settings import GPU_MAX_BATCH_TOKENS, SettingsError
from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings
from services.torch_api.buckets import (
    DEFAULT_SEQ_BUCKETS,
    batch_buckets,
    bucket_for,
    pad_to_bucket,
    parse_buckets,
    warmup_shapes,
)
from services.torch_api.embedder import TorchEmbedder, TorchSettings

from .conftest import REPO

TEXTS = [
    "Hi.",
    "Dinner is ready.",
    "Paris is the capital and most populous city of France, on the Seine.",
    "How do I reset my password if I no longer have access to the email address on my account? " * 4,
]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _onnx_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is false here); run on a GPU machine"
NO_ORT_CUDA = "needs onnxruntime-gpu with a working CUDAExecutionProvider (this onnxruntime has none)"


# --- buckets (numpy only) -------------------------------------------------------------------------------
def test_parse_buckets_caps_at_the_model_limit():
    assert parse_buckets("default", 512) == DEFAULT_SEQ_BUCKETS
    assert parse_buckets("default", 384) == (16, 32, 64, 128, 256, 384)
    assert parse_buckets("default", 256) == (16, 32, 64, 128, 256)
    assert parse_buckets("64, 16,32", 128) == (16, 32, 64, 128)
    assert parse_buckets("none", 512) == () == parse_buckets("", 512)
    with pytest.raises(ValueError):
        parse_buckets("0,16", 512)


def test_bucket_for_rounds_up_and_never_truncates():
    buckets = (16, 32, 64)
    assert [bucket_for(n, buckets) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]
    assert bucket_for(70, buckets) == 70
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(24) == (1, 2, 4, 8, 16, 24)
    assert batch_buckets(1) == (1,)


def test_pad_to_bucket_pads_length_with_masked_pad_and_rows_with_real_copies():
    ids = np.array([[5, 6, 7], [5, 8, 0], [5, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=np.int64)
    padded_ids, padded_mask = pad_to_bucket(ids, mask, 0, (4, 8), (1, 2, 4))
    assert padded_ids.shape == padded_mask.shape == (4, 4)
    np.testing.assert_array_equal(padded_ids[:3, :3], ids)
    assert padded_mask[:, 3].sum() == 0  # the length padding is masked out
    np.testing.assert_array_equal(padded_ids[3, :3], ids[0])  # an extra row: a real row, never all padding
    assert padded_mask[3].sum() == 3
    same_ids, _ = pad_to_bucket(ids[:1, :1].repeat(1, 0), mask[:1, :1], 0, (), ())
    assert same_ids.shape == (1, 1)  # buckets off: unchanged


def test_warmup_shapes_cover_what_the_batcher_can_send_and_no_more():
    seq, rows = (16, 32, 64, 128), (1, 2, 4, 8)
    shapes = warmup_shapes(seq, rows, max_batch_tokens=256)
    # Every combination of a real batch (<= 8 rows) and width (<= 128) within 256 padded tokens lands on a
    # warmed-up shape (one row of any width always fits the budget).
    for n in range(1, 9):
        for width in range(1, 129):
            if n == 1 or n * width <= 256:
                assert (bucket_for(n, rows), bucket_for(width, seq)) in shapes, (n, width)
    assert (8, 128) not in shapes and len(shapes) == len(set(shapes)) < len(seq) * len(rows)


# --- settings and refusals -------------------------------------------------------------------------------
def test_torch_device_defaults(monkeypatch):
    cpu = TorchSettings()
    assert (cpu.resolved_dtype, cpu.resolved_compile_mode, cpu.resolved_seq_buckets) == ("fp32", "default", "none")
    assert cpu.max_batch_tokens == 16384
    gpu = TorchSettings(device="cuda")
    assert (gpu.resolved_dtype, gpu.resolved_compile_mode, gpu.resolved_seq_buckets) == (
        "fp16",
        "reduce-overhead",
        "default",
    )
    assert gpu.max_batch_tokens == GPU_MAX_BATCH_TOKENS and gpu.max_batch_size == 128
    monkeypatch.setenv("TORCH_API_DEVICE", "cuda")
    monkeypatch.setenv("TORCH_API_MAX_BATCH_TOKENS", "4096")
    from_env = TorchSettings()
    assert from_env.device == "cuda" and from_env.max_batch_tokens == 4096  # a given budget wins
    assert OnnxSettings(device="cuda").max_batch_tokens == GPU_MAX_BATCH_TOKENS


@pytest.mark.parametrize(
    "settings",
    [
        dict(device="cuda", variant="torch_int8"),
        dict(dtype="fp16", variant="torch_int8_smooth"),
        dict(seq_buckets="16,x"),
        dict(dtype="fp64"),
        dict(compile_mode="fast"),
    ],
)
def test_torch_settings_refuse_contradictions(settings):
    with pytest.raises(ValueError):
        TorchSettings(**settings)
    with pytest.raises(ValueError):
        OnnxSettings(device="cuda", variant="onnx_int8_smooth")


def _refuses_cuda_with_one_line(embedder_cls, settings_cls, module: str, reason: str, folder) -> None:
    """Refused in-process with SettingsError, and as a process: exit 2, one line on stderr."""
    with pytest.raises(SettingsError, match=reason):
        embedder_cls(settings_cls(device="cuda", artifacts_dir=folder))
    result = subprocess.run(
        [sys.executable, "-m", module, "--device", "cuda", "--artifacts", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and reason in result.stderr, result.stderr


@pytest.mark.skipif("_cuda_available()", reason="this machine has CUDA: the refusal cannot happen")
def test_torch_cuda_without_a_gpu_exits_2_with_one_line(tmp_path):
    _refuses_cuda_with_one_line(TorchEmbedder, TorchSettings, "services.torch_api", "no CUDA device", tmp_path)


@pytest.mark.skipif("_onnx_cuda_provider()", reason="this onnxruntime has the CUDA provider")
def test_onnx_cuda_without_the_provider_exits_2_with_one_line(tmp_path):
    _refuses_cuda_with_one_line(OnnxEmbedder, OnnxSettings, "services.onnx_api", "no CUDAExecutionProvider", tmp_path)


# --- real weights (MiniLM) on CPU ------------------------------------------------------------------------
def _loaded(artifacts, **settings) -> TorchEmbedder:
    embedder = TorchEmbedder(TorchSettings(artifacts_dir=artifacts, threads=2, variant="torch_fp32", **settings))
    embedder.verify()
    embedder.load()
    return embedder


def test_buckets_serve_the_same_vectors(minilm_artifacts):
    plain = _loaded(minilm_artifacts, compile=False)
    bucketed = _loaded(minilm_artifacts, compile=False, seq_buckets="default", max_batch_size=4)
    assert bucketed.seq_buckets == (16, 32, 64, 128, 256)  # MiniLM: 256 tokens
    vectors = bucketed.embed(TEXTS)
    assert bucketed.shapes_run <= {(b, s) for b in bucketed.batch_buckets for s in bucketed.seq_buckets}
    assert bucketed.shapes_run  # every call was padded to a bucket shape
    reference = plain.embed(TEXTS)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    assert (np.sum(vectors * reference, axis=1) / norms).min() > 0.99999
    np.testing.assert_allclose(vectors, reference, atol=1e-4)


def test_precision_check_on_cpu_passes_bf16_and_refuses_below_threshold(minilm_artifacts):
    embedder = _loaded(minilm_artifacts, compile=False, dtype="bf16")
    assert embedder.precision_parity["passes_parity"] and embedder.precision_parity["min_cosine"] > 0.99
    embedder.warmup()
    assert embedder.served_parity["passes_parity"] and embedder.info()["dtype"] == "bf16"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.torch_api",
            "--artifacts",
            str(minilm_artifacts),
            "--dtype",
            "bf16",
            "--precision-min-cosine",
            "1.0",
            "--no-compile",
            "--threads",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "fails parity against fp32" in lines[0] and "refusing" in lines[0], result.stderr


def test_compile_with_buckets_compiles_at_warmup_only(minilm_artifacts):
    """A bounded number of graphs, all at warm-up: requests of new lengths and sizes compile nothing."""
    import torch._dynamo

    torch._dynamo.reset()
    embedder = _loaded(minilm_artifacts, compile=True, seq_buckets="16,32", max_batch_size=2)
    assert embedder.warmup_shapes == [(1, 16), (2, 16), (1, 32), (2, 32), (1, 256), (2, 256)]
    embedder.warmup()
    graphs = embedder.info()["graphs_compiled"]
    assert 1 <= graphs <= len(embedder.warmup_shapes)
    from services.torch_api.embedder import dynamo_graphs_compiled

    for texts in (TEXTS[:1], TEXTS[1:3], TEXTS[3:], ["a " * 20, "b " * 25]):
        for group in (texts[:2], texts[2:]):
            if group:
                embedder.run_batch(embedder.tokenizer.token_ids(group))
    assert dynamo_graphs_compiled() == graphs


# --- on a GPU only ---------------------------------------------------------------------------------------
@pytest.mark.skipif("not _cuda_available()", reason=NO_CUDA)
def test_torch_fp16_on_cuda_agrees_with_fp32(minilm_artifacts):
    cpu = _loaded(minilm_artifacts, compile=False)
    gpu = _loaded(minilm_artifacts, device="cuda", compile=False)
    gpu.warmup()
    info = gpu.info()
    assert info["dtype"] == "fp16" and info["pinned_host_memory"] and info["served_parity"]["passes_parity"]
    a, b = gpu.embed(TEXTS), cpu.embed(TEXTS)
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosines.min() > 0.99


@pytest.mark.skipif("not _onnx_cuda_provider()", reason=NO_ORT_CUDA)
def test_onnx_on_the_cuda_provider_agrees_with_cpu(minilm_artifacts):
    gpu = OnnxEmbedder(OnnxSettings(artifacts_dir=minilm_artifacts, device="cuda"))
    gpu.verify()
    cpu = OnnxEmbedder(OnnxSettings(artifacts_dir=minilm_artifacts, variant="onnx_fp32"))
    cpu.load()
    assert gpu.info()["providers"][0] == "CUDAExecutionProvider"
    a, b = gpu.embed(TEXTS), cpu.embed(TEXTS)
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosines.min() > 0.999


# --- the prepared GPU measurement script (benchmarks/gpu_serving.py), its CPU path --------------------------
@pytest.mark.skipif("_cuda_available()", reason="this machine has CUDA: the script would measure for real")
def test_gpu_serving_script_without_cuda_says_so(tmp_path):
    from benchmarks import gpu_serving

    assert gpu_serving.main(["--out", str(tmp_path), "--artifacts", str(tmp_path)]) == 2
    assert "CUDA is not available" in (tmp_path / "results.md").read_text()


def test_gpu_serving_script_cpu_path(minilm_artifacts, minilm_dir, tmp_path, monkeypatch):
    """Every section but the build, on CPU, with MiniLM and tiny cells: the script the GPU session runs as is."""
    from benchmarks import gpu_serving

    monkeypatch.setenv("TORCH_API_COMPILE", "false")  # compiling on 2 cores is covered above
    out = tmp_path / "out"
    code = gpu_serving.main(
        [
            "--device",
            "cpu",
            "--out",
            str(out),
            "--artifacts",
            str(minilm_artifacts),
            "--model-dir",
            str(minilm_dir),
            "--sections",
            "build,torch_api,onnx_api,host_cpu",
            "--clients",
            "1,2",
            "--texts",
            "1,3",
            "--duration-s",
            "1",
            "--cell-warmup-s",
            "0.2",
            "--threads",
            "1",
            "--host-cpu-threads",
            "2",
            "--host-cpu-budget-s",
            "0.3",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    sections = results["sections"]
    assert "skipped" in sections["build"]
    for name in ("torch_api", "onnx_api"):
        assert "error" not in sections[name], sections[name]
        cells = sections[name]["cells"]
        assert [(c["clients"], c["texts"]) for c in cells] == [(1, 1), (2, 1), (1, 3), (2, 3)]
        assert all(c["goodput_texts_per_s"] > 0 and not c["other_failures"] and c["p95_ms"] for c in cells), cells
    torch_info = sections["torch_api"]["info"]
    assert torch_info["device"] == "cpu" and torch_info["seq_buckets"] == [16, 32, 64, 128, 256]
    rows = sections["host_cpu"]["threads"]["2"]
    variants = {r["variant"] for r in rows}
    assert {"torch_int8_smooth", "onnx_int8_smooth"} <= variants, variants
    assert all(r["x_vs_fp32"] for r in rows), rows
    report = (out / "results.md").read_text()
    assert "## torch_api" in report and "## onnx_api" in report and "x vs fp32" in report


def test_random_model_folder_loads(minilm_dir, tmp_path):
    from transformers import AutoModel

    from benchmarks.gpu_serving import random_model

    folder = random_model(minilm_dir, tmp_path / "model", tiny=True)
    assert (folder / "tokenizer.json").is_file()
    assert AutoModel.from_pretrained(str(folder)).config.num_hidden_layers == 2
