import json
import subprocess
import sys

import pytest

from benchmarks.report import summary_table
from benchmarks.run import DEFAULT_TIME_BUDGET_S

from .conftest import REPO

pytestmark = pytest.mark.slow  # real weights, every exercise, subprocesses

FIELDS = {
    "exercise",
    "variant",
    "device",
    "batch_size",
    "seq_len",
    "runs",
    "mean_ms",
    "median_ms",
    "p95_ms",
    "speedup",
    "min_cosine",
    "skipped",
}


def test_benchmark_runs_every_exercise_end_to_end(minilm_dir, minilm_artifacts, tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--model",
            str(minilm_dir),
            "--artifacts",
            str(minilm_artifacts),
            "--runs",
            "2",
            "--warmup",
            "1",
            "--threads",
            "2",
            "--device",
            "cuda",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["header"]["time_budget_s"] == DEFAULT_TIME_BUDGET_S  # the default budget per measurement
    header, records = results["header"], results["records"]
    assert header["threads"] == 2 and header["runs"] == 2 and header["versions"]["torch"]
    assert [i["name"] for i in header["inputs"]] == ["b1_short", "b32_mixed", "b1_long"]
    assert header["inputs"][1]["batch_size"] == 32 and header["inputs"][2]["seq_len"] == 256
    for record in records:
        assert FIELDS <= set(record)
    measured = {(r["variant"], r["input"]): r for r in records if not r["skipped"]}
    # Rows that time a built artifact carry the manifest's variant names.
    for variant in (
        "no_optimizations",
        "eval",
        "eval_no_grad",
        "eval_inference_mode",
        "compile_default",
        "torch_int8",
        "torch_int8_smooth",
        "onnx_fp32",
        "onnx_optimized",
        "onnx_fused",
        "onnx_int8",
        "onnx_int8_smooth",
    ):
        for size in ("b1_short", "b32_mixed", "b1_long"):
            r = measured[(variant, size)]
            assert r["runs"] == 2 and 0 < r["median_ms"] <= r["p95_ms"] * 1.0001
            assert r["speedup"] > 0 and r["min_cosine"] is not None
    assert measured[("no_optimizations", "b1_short")]["speedup"] == 1.0
    assert measured[("eval_inference_mode", "b32_mixed")]["min_cosine"] > 0.9999
    assert measured[("onnx_optimized", "b32_mixed")]["min_cosine"] > 0.9999
    assert measured[("compile_default_first_call", "b1_short")]["speedup"] is None
    assert "onnx_optimized_cold_start" in {v for v, _ in measured}
    assert "DynamicQuantizedLinear" in results["extras"]["int8_module_example"]["printed"]
    assert results["extras"]["state_dict_bytes"]["ratio"] > 1.5
    # No CUDA here: GPU rows are recorded as skipped with the reason, never as zeros.
    gpu = [r for r in records if r["device"] == "cuda"]
    assert gpu and all(r["skipped"] and "CUDA not available" in r["skipped"] and r["median_ms"] is None for r in gpu)
    md = (out / "results.md").read_text()
    assert "Ex6" in md and "speedup" in md
    for chart in ("median_ms.png", "speedup.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The run ends with the summary table of what results.json holds, one row per measured variant.
    table = summary_table(results).rstrip()
    assert result.stdout.rstrip().endswith(table)
    assert {line.split()[1] for line in table.splitlines()[1:] if line.startswith("ex6 ")} >= {
        "onnx_optimized",
        "onnx_int8_smooth",
    }
    # Progress lines carry an estimate of the time left.
    assert "left]" in result.stdout


def test_gpu_lab_script_runs_its_code_paths_on_cpu(tmp_path):
    """The GPU lab script, tried here on a tiny random MPNet before it spends a lent GPU's minutes."""
    out = tmp_path / "gpu"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_lab",
            "--device",
            "cpu",
            "--tiny",
            "--runs",
            "2",
            "--max-tokens",
            "32",
            "--sections",
            "placement,copy,precision",
            "--tokenizer",
            str(REPO / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["environment"]["weights"].startswith("random (seed 0)")
    assert [r["batch"] for r in results["sections"]["placement"]["rows"]] == [1, 32, 128]
    assert results["sections"]["copy"] == {"skipped": "pinned memory needs CUDA"}
    rows = {r["variant"]: r for r in results["sections"]["precision"]["rows"]}
    assert rows["fp32"]["b128_fidelity"]["min_cosine"] > 0.9999
    assert 0.99 < rows["bf16"]["b128_fidelity"]["min_cosine"] < 1.0 + 1e-6
    assert "| fp32 |" in (out / "results.md").read_text()


def test_gpu_lab_refuses_cuda_without_a_gpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_lab", "--tokenizer", "x", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "CUDA is not available" in result.stderr


def test_gpu_lab_runs_on_given_trained_weights(tiny_mpnet_dir, minilm_dir, tmp_path):
    """`python -m benchmarks --device cuda` hands Ex4/Ex5 to the GPU lab with the artifact's weights (one GPU
    implementation); here its code paths on CPU with a tiny MPNet standing in for the trained model."""
    from transformers import AutoModel

    from benchmarks import gpu_lab

    transformer = AutoModel.from_pretrained(str(tiny_mpnet_dir), attn_implementation="eager")
    args = gpu_lab.parse_args(
        [
            "--device",
            "cpu",
            "--runs",
            "2",
            "--max-tokens",
            "32",
            "--out",
            str(tmp_path),
            "--tokenizer",
            str(minilm_dir / "tokenizer.json"),
        ]
    )
    lab = gpu_lab.Lab(args, transformer=transformer)
    lab.run_section("precision", lab.precision)
    assert lab.results["environment"]["weights"].startswith("trained")
    assert lab.results["environment"]["config"]["hidden_size"] == 64
    rows = {r["variant"]: r for r in lab.results["sections"]["precision"]["rows"]}
    assert rows["fp32"]["b128_fidelity"]["min_cosine"] > 0.9999
