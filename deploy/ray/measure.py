"""Plain service vs Ray Serve replicas, same load client, same texts: goodput, p50/p95, 429 share, overhead.

    python -m deploy.ray.measure --artifacts artifacts/all-mpnet-base-v2            # the full comparison
    python -m deploy.ray.measure --artifacts DIR --clients 8 --duration 3 --warmup 1   # a quick try

Configurations (`--configs`), each with the same service settings and as many model threads in all:
- `plain`:   `python -m services.<service>` with `--threads 2` (uvicorn, one process);
- `ray-1x2`: Ray Serve, 1 replica x 2 threads (num_cpus 2);
- `ray-2x1`: Ray Serve, 2 replicas x 1 thread each (num_cpus 1 each).
Ray runs a local cluster with `--cpus` CPUs on 127.0.0.1; Serve's proxy listens on 127.0.0.1.

Load: closed loop, `--clients` concurrent clients in one asyncio process (no think time). Each request holds
1-16 texts drawn from the corpus the Locust users draw from (build_artifacts/data/sentences.txt), with a fixed
seed per client, so every configuration gets the same request sequence. A 429 is counted apart and the client
waits its Retry-After, as the Locust users do. Every 200 is validated (count, dimension, unit norm).
Per cell, over `--duration` seconds after `--warmup` seconds of the same load:
- goodput: texts in valid 200 answers per second; requests/s;
- p50 / p95 of the 200 answers' latency (client side), and the share of answers that were 429;
- overhead: the median of (client latency - the service's own x-total-time) at 1 client: HTTP + proxy +
  routing time outside the app. Ray's overhead per request is its value minus the plain service's.
The client, the services and Ray share the machine's cores: compare configurations, not absolute numbers.
Writes results.json and report.md to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from runtime.markdown import table
from services.catalog import SERVICES
from services.catalog import service as catalog_service

REPO = Path(__file__).resolve().parents[2]
CORPUS_FILE = REPO / "build_artifacts" / "data" / "sentences.txt"
CONFIGS = {"plain": None, "ray-1x2": (1, 2), "ray-2x1": (2, 1)}  # name -> (replicas, threads)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.ray.measure", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/all-mpnet-base-v2"))
    parser.add_argument("--service", choices=sorted(s.short for s in SERVICES.values()), default="onnx")
    parser.add_argument("--configs", default="plain,ray-1x2,ray-2x1")
    parser.add_argument("--clients", default="1,8,32", help="comma list of concurrent closed-loop clients")
    parser.add_argument("--duration", type=float, default=30, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring, per cell")
    parser.add_argument("--max-texts", type=int, default=16, help="texts per request: 1..N at random")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (= model threads in all)")
    parser.add_argument("--out", type=Path, default=Path("results/ray-measure"))
    return parser.parse_args(argv)


def corpus() -> list[str]:
    return [line.strip() for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_cell(
    base_url: str, clients: int, duration: float, warmup: float, max_texts: int, seed: int, dimension: int
) -> dict:
    from loadtest.closed_loop import closed_loop, summarize

    texts = corpus()

    def draw(rng) -> list[str]:
        return [rng.choice(texts) for _ in range(rng.randint(1, max_texts))]

    answers = asyncio.run(closed_loop(base_url, clients, duration, warmup, draw, dimension, seed=seed))
    return summarize(answers, clients, duration)


@contextlib.contextmanager
def ray_cluster(cpus: int):
    # One node on 127.0.0.1 (Ray would otherwise bind its node address); read when ray is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    import ray
    from ray import serve
    from ray._private import ray_constants

    from loadtest.processes import free_port

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@contextlib.contextmanager
def ray_deployment(base_url: str, artifacts: Path, service: str, replicas: int, threads: int):
    from ray import serve

    from deploy.ray.serve_app import make_app

    serve.run(
        make_app(
            {
                "service": service,
                "artifacts_dir": str(artifacts.resolve()),
                "threads": threads,
                "num_replicas": replicas,
            }
        ),
        name="embeddings",
        route_prefix="/",
    )
    try:
        yield base_url
    finally:
        serve.delete("embeddings")


def info(base_url: str) -> dict:
    import httpx

    return httpx.get(f"{base_url}/info", timeout=30).json()


def run_config(name: str, args, clients: list[int], stack: contextlib.ExitStack, ray_base: list[str]) -> dict:
    from loadtest.processes import running_service

    if CONFIGS[name] is None:
        log = stack.enter_context(open(args.out / f"{name}.log", "w"))
        base = stack.enter_context(
            running_service(
                catalog_service(args.service).module, args.artifacts.resolve(), threads=args.cpus, log_file=log
            )
        )
    else:
        replicas, threads = CONFIGS[name]
        base = stack.enter_context(ray_deployment(ray_base[0], args.artifacts, args.service, replicas, threads))
    details = info(base)
    cells = []
    for count in clients:
        cell = load_cell(base, count, args.duration, args.warmup, args.max_texts, args.seed, details["dimension"])
        print(
            f"  {name:<8} {count:>3} clients: {cell['goodput_texts_per_s']:8.1f} texts/s  "
            f"p50 {cell['p50_ms']} ms  p95 {cell['p95_ms']} ms  429 {cell['share_429']:.1%}  "
            f"other failures {cell['other_failures']}  overhead {cell['overhead_ms_median']} ms",
            flush=True,
        )
        cells.append(cell)
    return {"variant": details.get("variant"), "threads_per_replica": details.get("threads"), "cells": cells}


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.artifacts / "manifest.json").is_file():
        print(f"error: no artifacts in {args.artifacts}: build them first (make artifacts)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    clients = [int(c) for c in args.clients.split(",")]
    names = args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        print(f"error: unknown configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "configs": {}}
    # plain first, with no Ray processes on the machine; then the Ray configurations on one cluster.
    ordered = [n for n in names if CONFIGS[n] is None] + [n for n in names if CONFIGS[n] is not None]
    with contextlib.ExitStack() as ray_stack:
        ray_base: list[str] = []  # the Serve proxy's URL, once the cluster is up
        for name in ordered:
            print(f"{name}: starting ...", flush=True)
            if CONFIGS[name] is not None and not ray_base:
                ray_base.append(ray_stack.enter_context(ray_cluster(args.cpus)))
            with contextlib.ExitStack() as stack:
                results["configs"][name] = run_config(name, args, clients, stack, ray_base)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render_report(results)
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


def render_report(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"# Plain service vs Ray Serve ({s['service']}, {s['artifacts']})",
        "",
        f"{s['duration']} s per cell after {s['warmup']} s warm-up, closed loop, 1-{s['max_texts']} texts per "
        f"request; {s['cpus']} model threads in all per configuration.",
        "",
        table(
            [
                "config",
                "variant",
                "clients",
                "goodput texts/s",
                "req/s",
                "p50 ms",
                "p95 ms",
                "429 share",
                "other failures",
                "overhead ms (median)",
            ],
            [
                [
                    name,
                    config["variant"],
                    c["clients"],
                    c["goodput_texts_per_s"],
                    c["requests_per_s"],
                    c["p50_ms"],
                    c["p95_ms"],
                    f"{c['share_429']:.1%}",
                    c["other_failures"],
                    c["overhead_ms_median"],
                ]
                for name, config in results["configs"].items()
                for c in config["cells"]
            ],
        ),
    ]
    plain = {c["clients"]: c for c in results["configs"].get("plain", {}).get("cells", [])}
    extra = []
    for name, config in results["configs"].items():
        for c in config["cells"]:
            base = plain.get(c["clients"])
            if name == "plain" or not base or None in (c["overhead_ms_median"], base["overhead_ms_median"]):
                continue
            extra.append(
                f"- {name} at {c['clients']} client(s): "
                f"{c['overhead_ms_median'] - base['overhead_ms_median']:+.2f} ms per request outside the "
                "app, against the plain service"
            )
    if extra:
        lines += ["", "Ray's overhead (client latency minus the app's x-total-time, medians):", *extra]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
