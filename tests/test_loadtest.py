"""Locust against a real service (small model): zero failures in a normal run; 429s, no 5xx, under overload."""

import json

from loadtest.processes import running_service
from loadtest.report import classify_failures, main, run_locust
from loadtest.validation import validate_embeddings


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


def test_64_default_users_see_no_failures_and_429s_are_their_own_outcome(minilm_artifacts, tmp_path):
    # The web UI's situation (64 users, 1-16 texts per request, default service settings), headless.
    with running_service("services.onnx_api", minilm_artifacts, threads=1) as base:
        step = run_locust("OnnxApiUser", base, users=64, duration_s=8, csv_prefix=tmp_path / "ui64")
    assert step["ok"] > 0
    assert step["failures"] == 0, step["failure_reasons"]  # no request is a failure, 429 or other


def test_report_users_back_off_on_429_and_nothing_fails(minilm_artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNX_API_MAX_QUEUE_WAIT_MS", "200")  # a tiny budget, so 64 users overload it
    out = tmp_path / "report"
    assert (
        main(
            [
                "--artifacts",
                str(minilm_artifacts),
                "--services",
                "onnx_api",
                "--users",
                "1,2,64",
                "--duration",
                "6",
                "--texts",
                "4",
                "--in-process-s",
                "0.5",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    onnx = results["services"]["onnx_api"]
    assert [s["users"] for s in onnx["steps"]] == [1, 2, 64]
    assert all(s["failures"] == 0 and s["ok"] > 0 and s["goodput"] > 0 for s in onnx["steps"])
    overloaded = onnx["steps"][-1]
    assert overloaded["rejected_429"] > 0 and overloaded["failure_classes"]["5xx"] == 0
    # Users wait the Retry-After (>= 1 s): at most about one 429 per user per second, not a storm.
    assert overloaded["rejected_429"] <= 64 * 7, overloaded
    assert overloaded["locust_cpu_cores"] > 0 and overloaded["service_cpu_cores"] > 0
    assert onnx["in_process"]["best_texts_per_s"] > 0 and onnx["serving_efficiency"] > 0
    assert onnx["after_last_step"]["status"] == 200
    report = (out / "report.md").read_text()
    assert "429 share" in report and "| onnx_api |" in report and "serving efficiency" in report
    for chart in ("throughput.png", "latency.png"):
        assert (out / chart).stat().st_size > 1000


def test_a_short_soak_reports_memory_over_time_and_every_answer(minilm_artifacts, tmp_path):
    from loadtest import soak

    out = tmp_path / "soak"
    assert (
        soak.main(
            [
                "--artifacts",
                str(minilm_artifacts),
                "--threads",
                "1",
                "--clients",
                "4",
                "--duration-s",
                "12",
                "--sample-s",
                "2",
                "--service-arg=--malloc-trim-interval-s=0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "soak.json").read_text())
    assert len(result["samples"]) >= 6 and all(s["rss_mb"] > 50 for s in result["samples"])
    load = result["load"]
    assert load["goodput_texts_per_s"] > 0 and set(load["statuses"]) <= {"200", "429"}, load["statuses"]
    settings = result["service_memory"]
    assert settings["malloc_trim_interval_s"] == 0.5 and settings["engine_cache_capacity"] == 256
    assert settings["rss_after_warmup_mb"] > 50 and settings["heap_trims"] > 0
    assert "slope, second half" in (out / "soak.md").read_text() and (out / "rss.png").stat().st_size > 1000
