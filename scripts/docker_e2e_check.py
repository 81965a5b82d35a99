"""Checks for make docker-e2e once the stack is up: readiness, parity of both /embed, image sizes,
response time over sequential requests (lab Ex6.4). Writes results/docker-e2e.json and prints a table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.http_overhead import sequential_latency
from build_artifacts.corpus import parity_sentences
from runtime.similarity import PARITY_MIN_COSINE, gate_failures
from services.catalog import ONNX_API, SERVICES, TORCH_API
from services.common.probe import wait_until_healthy


def post_embed(url: str, texts: list[str]):
    import numpy as np

    request = urllib.request.Request(
        f"{url}/embed", data=json.dumps({"inputs": texts}).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return np.asarray(json.loads(response.read()), dtype=np.float32)


def reference_embeddings(model_dir: Path, texts: list[str]):
    """fp32 PyTorch eager on the host, pooled and normalized: what both services must match."""
    from build_artifacts.build import embed_in_service_batches
    from build_artifacts.model_loading import read_pooling_spec
    from runtime import torch_encoder
    from runtime.pooling import l2_normalize
    from runtime.tokenization import TextTokenizer

    torch_encoder.quiet_libraries()
    pooling = read_pooling_spec(model_dir)
    encoder = torch_encoder.load_fp32(model_dir, pooling)
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", pooling.max_seq_length)
    return l2_normalize(embed_in_service_batches(lambda i, m: torch_encoder.embed(encoder, i, m), tokenizer, texts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for row in SERVICES.values():
        parser.add_argument(f"--{row.short}-url", required=True)
    parser.add_argument("--locust-url", default=None)
    parser.add_argument("--model", type=Path, required=True, help="local model folder for the fp32 reference")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--images", nargs="+", default=[], help="service=image pairs")
    parser.add_argument("--timeout-s", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=Path("results/docker-e2e.json"))
    args = parser.parse_args()
    urls = {name: getattr(args, f"{row.short}_url") for name, row in SERVICES.items()}
    try:
        wait_until_healthy(
            urls, args.timeout_s, interval_s=2, on_ready=lambda name, url: print(f"{name} healthy at {url}", flush=True)
        )
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None
    if args.locust_url:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(args.locust_url, timeout=5) as response:
                    print(f"locust web UI answers {response.status} at {args.locust_url}")
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("locust web UI did not answer") from None
                time.sleep(2)

    texts = parity_sentences()
    reference = reference_embeddings(args.model, texts)
    parity, infos = {}, {}
    vectors = {}
    for name, url in urls.items():
        with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
            infos[name] = json.loads(response.read())
        vectors[name] = post_embed(url, texts)
        cosines = (vectors[name] * reference).sum(axis=1)
        parity[name] = {
            "variant": infos[name]["variant"],
            "min_cosine": round(float(cosines.min()), 6),
            "mean_cosine": round(float(cosines.mean()), 6),
        }
    between = (vectors[TORCH_API.name] * vectors[ONNX_API.name]).sum(axis=1)
    parity["torch_vs_onnx_min_cosine"] = round(float(between.min()), 6)

    images = {}
    for pair in args.images:
        service, image = pair.split("=", 1)
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True, check=True
        ).stdout.strip()
        images[service] = int(size)
    response_ms = {}
    for name, url in urls.items():
        stats = sequential_latency(url, args.requests)
        response_ms[name] = {"mean": stats["mean"], "median": stats["median"], "p95": stats["p95"]}

    result = {
        "images": images,
        "response_ms": response_ms,
        "parity": parity,
        "requests": args.requests,
        "model": str(args.model),
        "variants": {n: i["variant"] for n, i in infos.items()},
        "threads": {n: i.get("threads") for n, i in infos.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'service':<10} {'variant':<15} {'image MB':>9} {'mean ms':>8} {'median':>8} {'p95':>8} {'min cos':>8}")
    for name in urls:
        r = response_ms[name]
        print(
            f"{name:<10} {infos[name]['variant']:<15} {images.get(name, 0) / 1e6:9.1f} {r['mean']:8.2f} "
            f"{r['median']:8.2f} {r['p95']:8.2f} {parity[name]['min_cosine']:8.4f}"
        )
    if images.get("torch_api") and images.get("onnx_api"):
        print(f"image size ratio torch_api / onnx_api: {images['torch_api'] / images['onnx_api']:.2f}x")
    print(f"torch vs onnx min cosine: {parity['torch_vs_onnx_min_cosine']:.4f}; wrote {args.out}")
    failing = [n for n in urls if gate_failures(parity[n]["min_cosine"])]
    if failing:
        print(f"FAIL: parity below {PARITY_MIN_COSINE} for {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
