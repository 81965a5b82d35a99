"""Locust against a real service (small model): zero failures in a normal run; 429s, no 5xx, under overload."""

import json

from loadtest.validation import validate_embeddings
from loadtest.processes import running_service
from loadtest.report import classify_failures, main, run_locust


def test_validation_catches_wrong_responses():
    unit = [1.0] + [0.0] * 3
    assert validate_embeddings([unit, unit], 2, 4) is None
    assert "expected 2 vectors" in validate_embeddings([unit], 2, 4)
    assert "dimension" in validate_embeddings([unit[:3]], 1, 4)
    assert "unit-norm" in validate_embeddings([[2.0, 0.0, 0.0, 0.0]], 1, 4)
    assert "expected 1 vectors" in validate_embeddings({"error": "x"}, 1, 4)


def test_failure_classes():
    reasons = {"429 overloaded": 5, "HTTP 503: x": 1, "ConnectionRefusedError(111)": 2, "expected 3 vectors, got 2": 1}
    assert classify_failures(reasons) == {"429": 5, "5xx": 1, "connection": 2, "other": 1}


def test_short_headless_locust_run_has_zero_failures(minilm_artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("LOADTEST_MAX_BATCH", "4")  # light requests: many of them in a few seconds
    with running_service("services.onnx_api", minilm_artifacts, threads=1) as base:
        step = run_locust("OnnxApiUser", base, users=4, duration_s=5, csv_prefix=tmp_path / "short")
    assert step["requests"] > 5
    assert step["failures"] == 0, step["failure_reasons"]
    assert step["sentences_per_s"] > step["requests_per_s"] > 0
    assert 0 < step["p50_ms"] <= step["p95_ms"]


def test_report_with_overload_step(minilm_artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("LOADTEST_MAX_BATCH", "4")
    monkeypatch.setenv("ONNX_API_QUEUE_LIMIT", "12")  # 2 users x 4 texts fit; 64 users do not
    out = tmp_path / "report"
    assert main(["--artifacts", str(minilm_artifacts), "--services", "onnx_api", "--users", "1,2", "--duration", "6",
                 "--overload-users", "64", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    onnx = results["services"]["onnx_api"]
    assert [s["users"] for s in onnx["steps"]] == [1, 2]
    assert all(s["failures"] == 0 and s["requests"] > 0 for s in onnx["steps"])
    classes = onnx["overload"]["failure_classes"]
    assert classes["429"] > 0 and classes["5xx"] == 0 and classes["connection"] == 0 and classes["other"] == 0
    assert onnx["overload"]["after"]["status"] == 200
    report = (out / "report.md").read_text()
    assert "429 share" in report and "| onnx_api |" in report
    for chart in ("throughput.png", "latency.png"):
        assert (out / chart).stat().st_size > 1000
