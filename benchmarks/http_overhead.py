"""HTTP + batching overhead: single-request latency through each service vs the same variant in-process.

    python -m benchmarks.http_overhead --artifacts DIR [--requests 100] [--threads 2] [--out FILE]

For each service: start it (real uvicorn process on 127.0.0.1), send --requests sequential POST /embed
with one short sentence over a keep-alive connection, then stop it and time the same embedder class
in-process on the same text. The ratio of the medians is what HTTP, JSON and the batcher add.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .inputs import SHORT_TEXT
from .timing import percentile


def sequential_latency(base_url: str, requests: int, warmup: int = 5, text: str = SHORT_TEXT) -> dict:
    """Client-side ms for `requests` sequential single-text POST /embed calls."""
    import httpx

    samples, server_inference = [], []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for _ in range(warmup):
            client.post("/embed", json={"inputs": text}).raise_for_status()
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post("/embed", json={"inputs": text})
            samples.append((time.perf_counter() - started) * 1000.0)
            response.raise_for_status()
            server_inference.append(float(response.headers["x-inference-time"]))
    return {**_stats(samples, requests), "server_inference_median": round(statistics.median(server_inference), 2)}


def in_process_latency(embedder, requests: int, warmup: int = 5, text: str = SHORT_TEXT) -> dict:
    for _ in range(warmup):
        embedder.embed([text])
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        embedder.embed([text])
        samples.append((time.perf_counter() - started) * 1000.0)
    return _stats(samples, requests)


def _stats(samples: list[float], requests: int) -> dict:
    return {
        "requests": requests,
        "mean": round(statistics.fmean(samples), 2),
        "median": round(statistics.median(samples), 2),
        "p95": round(percentile(samples, 0.95), 2),
    }


def main(argv=None) -> int:
    from loadtest.processes import running_service
    from services.catalog import SERVICES

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/http_overhead.json"))
    args = parser.parse_args(argv)
    results = {"artifacts": str(args.artifacts), "threads": args.threads, "text": SHORT_TEXT, "services": {}}
    for name, row in SERVICES.items():
        settings_cls, embedder_cls = row.classes()
        with running_service(row.module, args.artifacts, threads=args.threads) as base:
            import httpx

            info = httpx.get(f"{base}/info").json()
            http = sequential_latency(base, args.requests)
        settings = settings_cls(artifacts_dir=args.artifacts, threads=args.threads)
        embedder = embedder_cls(settings)
        embedder.load()
        embedder.warmup()
        local = in_process_latency(embedder, args.requests)
        del embedder
        ratio = round(http["median"] / local["median"], 3)
        results["services"][name] = {
            "variant": info["variant"],
            "torch_compile": info.get("torch_compile"),
            "http_ms": http,
            "in_process_ms": local,
            "http_over_in_process": ratio,
        }
        print(
            f"{name:<9} {info['variant']:<15} HTTP p50 {http['median']:7.2f} ms (p95 {http['p95']:.2f}; "
            f"server inference p50 {http['server_inference_median']:.2f})  in-process p50 {local['median']:7.2f} ms  "
            f"ratio {ratio:.2f}x",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
