import json
import subprocess
import sys

from .conftest import REPO

FIELDS = {"exercise", "variant", "device", "batch_size", "seq_len", "runs", "mean_ms", "median_ms", "p95_ms",
          "speedup", "min_cosine", "skipped"}


def test_benchmark_runs_every_exercise_end_to_end(minilm_dir, minilm_artifacts, tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--model", str(minilm_dir), "--artifacts", str(minilm_artifacts),
         "--runs", "2", "--warmup", "1", "--threads", "2", "--device", "cuda", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    header, records = results["header"], results["records"]
    assert header["threads"] == 2 and header["runs"] == 2 and header["versions"]["torch"]
    assert [i["name"] for i in header["inputs"]] == ["b1_short", "b32_mixed", "b1_long"]
    assert header["inputs"][1]["batch_size"] == 32 and header["inputs"][2]["seq_len"] == 256
    for record in records:
        assert FIELDS <= set(record)
    measured = {(r["variant"], r["input"]): r for r in records if not r["skipped"]}
    for variant in ("no_optimizations", "eval", "eval_no_grad", "eval_inference_mode", "compile_default",
                    "int8_dynamic", "int8_smoothquant", "onnx_online", "onnx_offline", "onnx_fused_attention", "onnx_int8",
                    "onnx_int8_smooth"):
        for size in ("b1_short", "b32_mixed", "b1_long"):
            r = measured[(variant, size)]
            assert r["runs"] == 2 and 0 < r["median_ms"] <= r["p95_ms"] * 1.0001
            assert r["speedup"] > 0 and r["min_cosine"] is not None
    assert measured[("no_optimizations", "b1_short")]["speedup"] == 1.0
    assert measured[("eval_inference_mode", "b32_mixed")]["min_cosine"] > 0.9999
    assert measured[("onnx_offline", "b32_mixed")]["min_cosine"] > 0.9999
    assert measured[("compile_default_first_call", "b1_short")]["speedup"] is None
    assert "onnx_offline_cold_start" in {v for v, _ in measured}
    assert "DynamicQuantizedLinear" in results["extras"]["int8_module_example"]["printed"]
    assert results["extras"]["state_dict_bytes"]["ratio"] > 1.5
    # No CUDA here: GPU rows are recorded as skipped with the reason, never as zeros.
    gpu = [r for r in records if r["device"] == "cuda"]
    assert gpu and all(r["skipped"] and "CUDA not available" in r["skipped"] and r["median_ms"] is None for r in gpu)
    md = (out / "results.md").read_text()
    assert "Ex6" in md and "speedup" in md
    for chart in ("median_ms.png", "speedup.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "onnx_offline" in result.stdout.splitlines()[-4] or "onnx_offline" in result.stdout


def test_gpu_lab_script_runs_its_code_paths_on_cpu(tmp_path):
    """The GPU lab script, tried here on a tiny random MPNet before it spends a lent GPU's minutes."""
    out = tmp_path / "gpu"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_lab", "--device", "cpu", "--tiny", "--runs", "2", "--max-tokens", "32",
         "--sections", "placement,copy,precision", "--tokenizer", str(REPO / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
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
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_lab", "--tokenizer", "x", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "CUDA is not available" in result.stderr
