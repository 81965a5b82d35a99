"""make soak: one service under many-shape traffic for a long time; its memory over time, throughput and statuses.

    python -m loadtest.soak --service onnx_api [--variant auto] [--artifacts DIR | --url URL]
                            [--clients 16] [--duration-s 1800] [--sample-s 10] [--out results/soak]

Each of `clients` closed-loop clients sends 1-16 texts of 30-1,200 characters cut at random places from a corpus
the model was never calibrated on (`truncate: true`), so the batcher forms model calls of many (batch, length)
shapes, as ordinary traffic does; a 429 is honoured (Retry-After). Every `sample_s` the service's own resident
memory is read from its /metrics (`process_resident_memory_bytes`: the same figure in a container), with the
answers so far. The report gives RSS right after warm-up (the service is healthy only once warmed up), at each
minute mark, its steady state (median of the last 5 minutes), the slope over the second half (least squares),
texts/s, latency percentiles, the status counts and the load generator's own CPU share (it runs on the same cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import statistics
import sys
import time
import urllib.error
from pathlib import Path

from runtime.markdown import table
from services.catalog import SERVICES
from services.common.probe import metric_value

from .closed_loop import Answer, closed_loop, summarize
from .processes import REPO, running_service

CORPUS = REPO / "bulk_embed" / "data" / "python_docstrings.jsonl"
RSS_METRIC = "process_resident_memory_bytes"
SHORTEST_CHARS, LONGEST_CHARS, MOST_TEXTS = 30, 1200, 16
STEADY_WINDOW_S = 300


def load_corpus(path: Path = CORPUS) -> str:
    """The corpus as one running text, to cut texts of any length from."""
    lines = (json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return " ".join(lines)


def text_drawer(corpus: str):
    """rng -> 1-16 texts of 30-1,200 characters, each starting at a word at a random place in the corpus."""

    def draw(rng: random.Random) -> list[str]:
        texts = []
        for _ in range(rng.randint(1, MOST_TEXTS)):
            start = corpus.find(" ", rng.randrange(len(corpus) - LONGEST_CHARS - 1)) + 1
            texts.append(corpus[start : start + rng.randint(SHORTEST_CHARS, LONGEST_CHARS)].strip())
        return texts

    return draw


def slope_mb_per_min(samples: list[dict]) -> float | None:
    """Least-squares slope of RSS (MB) against time (min)."""
    if len(samples) < 3:
        return None
    xs = [s["t_s"] / 60 for s in samples]
    ys = [s["rss_mb"] for s in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return round(sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread, 2) if spread else None


def memory_summary(samples: list[dict], duration_s: float) -> dict:
    """Start, minute marks, steady state (median of the last STEADY_WINDOW_S), slope over the second half."""
    rss_at = {}
    for minute in (1, 2, 4, 8, 15, 30, 60):
        if minute * 60 <= duration_s:
            near = min(samples, key=lambda s, m=minute: abs(s["t_s"] - m * 60))
            rss_at[f"{minute} min"] = near["rss_mb"]
    last = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] - STEADY_WINDOW_S]
    second_half = [s for s in samples if s["t_s"] >= duration_s / 2]
    start = samples[0]["rss_mb"]
    steady = round(statistics.median(s["rss_mb"] for s in last), 1)
    return {
        "rss_after_warmup_mb": start,
        "rss_at_mb": rss_at,
        "rss_end_mb": samples[-1]["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_steady_mb": steady,
        "steady_above_warmup_mb": round(steady - start, 1),
        "slope_second_half_mb_per_min": slope_mb_per_min(second_half),
    }


async def sample_rss(base_url: str, duration_s: float, every_s: float, answers: list[Answer]) -> list[dict]:
    """RSS from the service's /metrics every `every_s` until `duration_s` has passed; with the answers so far."""
    samples: list[dict] = []
    started = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        try:
            rss = await asyncio.to_thread(metric_value, base_url, RSS_METRIC)
        except (urllib.error.URLError, OSError):
            rss = float("nan")
        samples.append(
            {
                "t_s": round(elapsed, 1),
                "rss_mb": round(rss / 2**20, 1),
                "ok_texts": sum(a.texts for a in answers if a.status == 200),
                "answers": len(answers),
            }
        )
        if elapsed >= duration_s:
            return samples
        await asyncio.sleep(min(every_s, duration_s - elapsed + 0.01))


async def soak(base_url: str, clients: int, duration_s: float, sample_s: float, dimension: int, seed: int) -> dict:
    draw = text_drawer(load_corpus())
    answers: list[Answer] = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    service_cpu_before = metric_value(base_url, "process_cpu_seconds_total")
    load, samples = await asyncio.gather(
        closed_loop(
            base_url, clients, duration_s, 0, draw, dimension, seed=seed, body={"truncate": True}, sink=answers
        ),
        sample_rss(base_url, duration_s, sample_s, answers),
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    service_cpu = metric_value(base_url, "process_cpu_seconds_total") - service_cpu_before
    client_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    statuses: dict[str, int] = {}
    for answer in load:
        statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
    summary = summarize(load, clients, duration_s)
    return {
        "load": {**summary, "statuses": statuses},
        "memory": memory_summary(samples, duration_s),
        "cpu": {
            "load_generator_cpu_s": round(client_cpu, 1),
            "service_cpu_s": round(service_cpu, 1),
            "load_generator_share": round(client_cpu / max(client_cpu + service_cpu, 1e-9), 3),
        },
        "samples": samples,
    }


def service_info(base_url: str) -> dict:
    import httpx

    return httpx.get(f"{base_url}/info", timeout=30).json()


def write_report(result: dict, out: Path) -> None:
    """soak.json, soak.md (the figures and the RSS curve as a table) and rss.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    memory, load, cpu, run = result["memory"], result["load"], result["cpu"], result["run"]
    marks = " / ".join(f"{v:,.0f}" for v in [memory["rss_after_warmup_mb"], *memory["rss_at_mb"].values()])
    lines = [
        f"# Soak: {run['service']} serving `{run['variant']}`",
        "",
        f"{run['cpu_model']} ({run['cpu_flags']}), {run['threads']} threads, model `{run['model']}`; "
        f"{run['clients']} closed-loop clients, 1-{MOST_TEXTS} texts of {SHORTEST_CHARS}-{LONGEST_CHARS:,} "
        f"characters each, {run['duration_s'] / 60:g} minutes, RSS every {run['sample_s']:g} s from /metrics.",
        f"Command: `{run['command']}`",
        "",
        table(
            ["texts/s", "p50 / p95 / p99 ms", "429 share", "other failures", "statuses"],
            [
                [
                    load["goodput_texts_per_s"],
                    f"{load['p50_ms']} / {load['p95_ms']} / {load['p99_ms']}",
                    load["share_429"],
                    load["other_failures"],
                    ", ".join(f"{k}: {v}" for k, v in sorted(load["statuses"].items())),
                ]
            ],
        ),
        "",
        table(
            [
                "RSS after warm-up / " + " / ".join(memory["rss_at_mb"]) + " (MB)",
                "steady (last 5 min)",
                "steady - warm-up",
                "slope, second half",
                "peak",
            ],
            [
                [
                    marks,
                    f"{memory['rss_steady_mb']:,.0f} MB",
                    f"{memory['steady_above_warmup_mb']:+,.0f} MB",
                    f"{memory['slope_second_half_mb_per_min']:+.2f} MB/min",
                    f"{memory['rss_peak_mb']:,.0f} MB",
                ]
            ],
        ),
        "",
        f"Load generator CPU {cpu['load_generator_cpu_s']} s against the service's {cpu['service_cpu_s']} s "
        f"({cpu['load_generator_share']:.1%} of the two).",
        "",
    ]
    bounds = result.get("service_memory") or {}
    if "engine_cache_capacity" in bounds:
        lines[-1:-1] = [
            f"The service's bounds: engine caches {bounds['engine_cache_capacity']} entries, malloc_trim every "
            f"{bounds['malloc_trim_interval_s']:g} s ({bounds.get('heap_trims')} trims over the run).",
            "",
        ]
    (out / "soak.md").write_text("\n".join(lines))
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([s["t_s"] / 60 for s in result["samples"]], [s["rss_mb"] for s in result["samples"]])
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS, MB")
        ax.set_title(f"{run['service']} {run['variant']}: RSS under many-shape load")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "rss.png", dpi=90)
        plt.close(fig)


def cpu_description() -> tuple[str, str]:
    from runtime.host import probe_cpu

    cpu = probe_cpu()
    return cpu.model, ", ".join(sorted(cpu.features)) or "no AVX2"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", choices=sorted(SERVICES), default="onnx_api")
    parser.add_argument("--variant", default="auto", help="the service's --variant (a started service only)")
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "all-mpnet-base-v2")
    parser.add_argument("--url", default=None, help="a running service instead of starting one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=1800)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--service-arg", action="append", default=[], help="one more flag for the service")
    parser.add_argument("--out", type=Path, default=None, help="default: results/soak/<service>-<variant>")
    parser.add_argument(
        "--fail-on-errors", action="store_true", help="exit 1 when any answer is neither 200 nor 429 (5xx, invalid)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    service = SERVICES[args.service]
    with contextlib.ExitStack() as stack:
        if args.url:
            base_url = args.url
        else:
            log = stack.enter_context(open(Path("/tmp") / f"soak-{args.service}.log", "w"))  # noqa: SIM115
            extra = ("--variant", args.variant, *args.service_arg)
            base_url = stack.enter_context(
                running_service(service.module, args.artifacts, threads=args.threads, args=extra, log_file=log)
            )
        info = service_info(base_url)
        model, flags = cpu_description()
        run = {
            "service": args.service,
            "variant": info.get("variant", args.variant),
            "model": info.get("model", ""),
            "threads": info.get("threads") or args.threads,
            "clients": args.clients,
            "duration_s": args.duration_s,
            "sample_s": args.sample_s,
            "cpu_model": model,
            "cpu_flags": flags,
            "command": "python -m loadtest.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        print(f"soak: {args.service} {run['variant']}, {args.clients} clients, {args.duration_s:g} s", flush=True)
        result = asyncio.run(
            soak(base_url, args.clients, args.duration_s, args.sample_s, int(info["dimension"]), args.seed)
        )
        result["service_memory"] = service_info(base_url).get("memory", {})  # its bounds, trims, RSS after warm-up
    result["run"] = run
    out = args.out or REPO / "results" / "soak" / f"{args.service}-{run['variant']}"
    write_report(result, out)
    print((out / "soak.md").read_text())
    errors = {status: n for status, n in result["load"]["statuses"].items() if status not in ("200", "429")}
    if args.fail_on_errors and errors:
        print(f"soak: answers other than 200 and 429: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
