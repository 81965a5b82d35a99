"""make loadtest: both services under Locust at several user counts; goodput, tails, 429s, capacity, CPU.

    python -m loadtest.report [--artifacts DIR | --torch-url URL --onnx-url URL] [--users 1,8,32,128,512]
                              [--texts 8] [--duration 60] [--slo-ms 2000] [--in-process-s 6] [--out results/loadtest]

First the in-process ceiling: the service's own variant, called in this process on the same texts at batch
8/16/32. Then each step runs Locust headless (closed loop: every user sends its next request as soon as the
last one is answered, or after the Retry-After of a 429) and reads its CSV stats. Locust runs on the same
machine as the services, so it competes with them for the CPU: its CPU use is measured and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from runtime.markdown import table
from services.catalog import SERVICES
from services.common.probe import metric_value

from .processes import REPO, running_service

REJECTED_NAME = "/embed 429 (backed off)"  # the name locustfile.py gives 429 answers


def run_locust(
    user_class: str,
    base_url: str,
    users: int,
    duration_s: int,
    csv_prefix: Path,
    texts_per_request: int | None = None,
    env: dict | None = None,
) -> dict:
    """One headless Locust step (closed loop, Retry-After honoured); returns what users got, and the CPU both
    sides used (Locust runs on the same cores as the service)."""
    texts_before = metric_value(base_url, "embed_texts_total")
    model_s_before = metric_value(base_url, "embed_model_seconds_total")
    service_cpu_before = metric_value(base_url, "process_cpu_seconds_total")
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtest" / "locustfile.py"),
        user_class,
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{duration_s}s",
        "--host",
        base_url,
        "--csv",
        str(csv_prefix),
        "--csv-full-history",
        "--only-summary",
        "--stop-timeout",
        "0",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    step_env = {**os.environ, **(env or {})}
    if texts_per_request:
        step_env["LOADTEST_TEXTS"] = str(texts_per_request)
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=duration_s + 120, env=step_env
    )
    elapsed = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"locust failed ({completed.returncode}): {completed.stderr[-2000:]}")
    sentences = metric_value(base_url, "embed_texts_total") - texts_before
    model_s = metric_value(base_url, "embed_model_seconds_total") - model_s_before
    service_cpu = metric_value(base_url, "process_cpu_seconds_total") - service_cpu_before
    locust_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    with open(f"{csv_prefix}_stats.csv", newline="") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    empty = {"Request Count": 0, "Failure Count": 0, "Requests/s": 0, "50%": 0, "95%": 0, "Average Response Time": 0}
    row = rows.get("/embed", empty)  # answered requests (200, and any failure other than 429)
    rejected = int(rows.get(REJECTED_NAME, empty)["Request Count"])
    with open(f"{csv_prefix}_failures.csv", newline="") as fh:
        failures = {r["Error"]: int(r["Occurrences"]) for r in csv.DictReader(fh) if r["Name"] == "/embed"}
    answered = int(row["Request Count"])
    ok = answered - int(row["Failure Count"])
    classes = classify_failures(failures)
    classes["429"] = rejected
    load_seconds = max(elapsed - 1.0, 1.0)  # ~1 s of start-up is not load
    steady = steady_state_rate(Path(f"{csv_prefix}_stats_history.csv"), warmup_fraction=1 / 3)
    return {
        "users": users,
        "texts_per_request": texts_per_request,
        "requests": answered + rejected,
        "ok": ok,
        "rejected_429": rejected,
        "failures": int(row["Failure Count"]),
        "failure_reasons": failures,
        "failure_classes": classes,
        "share_429": round(rejected / (answered + rejected), 4) if answered + rejected else 0.0,
        "requests_per_s": round(float(row["Requests/s"]), 2),
        # Goodput: sentences answered 200 per second (every request carries the same number of texts), over the
        # last two thirds of the step: at high load the first answers come only after a full queue wait.
        "goodput": round((steady if steady is not None else ok / load_seconds) * texts_per_request, 1)
        if texts_per_request
        else None,
        "sentences_per_s": round(sentences / load_seconds, 1),  # what the model embedded (the service's counter)
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "mean_ms": round(float(row["Average Response Time"]), 1),
        # The model's own speed in this step (texts per second of model time) and the share of the step it
        # ran: on a shared machine the model's speed drifts between steps, and these tell that drift apart
        # from what the serving layer loses (idle model, wasted calls).
        "model_busy_share": round(model_s / elapsed, 3),
        "model_texts_per_model_s": round(sentences / model_s, 1) if model_s > 0 else None,
        "locust_cpu_cores": round(locust_cpu / elapsed, 2),
        "service_cpu_cores": round(service_cpu / elapsed, 2),
    }


def steady_state_rate(history_csv: Path, warmup_fraction: float) -> float | None:
    """Successful /embed answers per second after the first `warmup_fraction` of the step (Locust's history)."""
    if not history_csv.is_file():
        return None
    points = []
    with open(history_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "/embed":
                points.append(
                    (int(row["Timestamp"]), int(row["Total Request Count"]) - int(row["Total Failure Count"]))
                )
    if len(points) < 3:
        return None
    first = points[0][0] - 1  # the first /embed row is a second after load began at the latest
    last_t, last_ok = points[-1]
    start_t = first + warmup_fraction * (last_t - first)
    before = [p for p in points if p[0] <= start_t]
    t0, ok0 = before[-1] if before else (first, 0)
    return (last_ok - ok0) / (last_t - t0) if last_t > t0 else None


def classify_failures(reasons: dict[str, int]) -> dict[str, int]:
    out = {"429": 0, "5xx": 0, "connection": 0, "other": 0}
    for reason, count in reasons.items():
        if reason.startswith("429") or "HTTP 429" in reason:
            out["429"] += count
        elif "HTTP 5" in reason:
            out["5xx"] += count
        elif any(word in reason for word in ("Connection", "connection", "HTTP 0", "Timeout", "timed out")):
            out["connection"] += count
        else:
            out["other"] += count
    return out


def probe_after_overload(base_url: str, drain_timeout_s: float = 300) -> dict:
    """Once the backlog of the overload step has drained, one normal request must get a normal answer."""
    started = time.monotonic()
    while metric_value(base_url, "embed_queue_depth") > 0 and time.monotonic() - started < drain_timeout_s:
        time.sleep(0.5)
    drained_s = round(time.monotonic() - started, 1)
    body = json.dumps({"inputs": ["Is the service still answering normally?"]}).encode()
    request = urllib.request.Request(f"{base_url}/embed", data=body, headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, vectors = response.status, len(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        status, vectors = exc.code, 0
    return {
        "status": status,
        "ms": round((time.perf_counter() - t0) * 1000, 1),
        "vectors": vectors,
        "queue_drained_after_s": drained_s,
    }


def in_process_throughput(
    service: str,
    artifacts: Path,
    threads: int,
    texts: list[str],
    batch_sizes=(8, 16, 32),
    seconds_per_size: float = 6.0,
) -> dict:
    """Texts/s of the service's own variant called in this process (no HTTP, no queue) at each batch size.

    The ceiling a service can reach on these texts; the report divides saturation goodput by its best.
    """
    row = SERVICES[service]
    settings_cls, embedder_cls = row.classes()
    embedder = embedder_cls(settings_cls(artifacts_dir=artifacts, threads=threads, **row.in_process_settings))
    embedder.load()
    embedder.warmup()
    rates = {}
    for size in batch_sizes:
        done, offset, started = 0, 0, time.perf_counter()
        while time.perf_counter() - started < seconds_per_size:
            batch = [texts[(offset + k) % len(texts)] for k in range(size)]
            offset += size
            embedder.embed(batch)
            done += size
        rates[size] = round(done / (time.perf_counter() - started), 1)
    best = max(rates, key=rates.get)
    return {
        "variant": embedder.variant,
        "texts_per_s_by_batch": rates,
        "best_batch": best,
        "best_texts_per_s": rates[best],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/all-mpnet-base-v2"))
    for row in SERVICES.values():
        parser.add_argument(
            f"--{row.short}-url", default=None, help=f"target a running {row.name} instead of starting one"
        )
    parser.add_argument("--services", default=",".join(SERVICES))
    parser.add_argument("--users", default="1,8,32,128,512", help="comma list of concurrent closed-loop users")
    parser.add_argument("--texts", type=int, default=8, help="texts per request (the same for every request)")
    parser.add_argument(
        "--duration", type=int, default=60, help="seconds per step (goodput is read over its last two thirds)"
    )
    parser.add_argument("--slo-ms", type=float, default=2000.0, help="p95 SLO that defines the knee (capacity)")
    parser.add_argument(
        "--in-process-s", type=float, default=6.0, help="seconds per batch size for the in-process ceiling (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=2, help="model threads per started service")
    parser.add_argument("--out", type=Path, default=Path("results/loadtest"))
    return parser.parse_args(argv)


def knee(steps: list[dict], slo_ms: float) -> dict | None:
    """The last step before the first whose p95 passes the SLO (None when even the first one does)."""
    last_within = None
    for step in steps:
        if step["p95_ms"] > slo_ms or step["ok"] == 0:
            break
        last_within = step
    return last_within


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    users = [int(u) for u in args.users.split(",")]
    urls = {name: getattr(args, f"{row.short}_url") for name, row in SERVICES.items()}
    corpus = [
        line.strip()
        for line in (REPO / "build_artifacts" / "data" / "sentences.txt").read_text().splitlines()
        if line.strip()
    ]
    results = {
        "settings": {
            "users": users,
            "texts_per_request": args.texts,
            "duration_s": args.duration,
            "slo_ms": args.slo_ms,
            "threads": args.threads,
            "artifacts": str(args.artifacts),
            "cores": os.cpu_count(),
        },
        "services": {},
    }
    for service in args.services.split(","):
        row = SERVICES[service]
        ceiling = None
        if args.in_process_s and urls[service] is None:
            print(f"{service}: in-process throughput of its variant (the ceiling) ...", flush=True)
            ceiling = in_process_throughput(
                service, args.artifacts, args.threads, corpus, seconds_per_size=args.in_process_s
            )
            print(f"  {ceiling}", flush=True)
        with contextlib.ExitStack() as stack:
            base = urls[service]
            if base is None:
                print(f"starting {service} from {args.artifacts} (warm-up may take a minute) ...", flush=True)
                log = stack.enter_context(open(args.out / f"{service}.log", "w"))
                base = stack.enter_context(
                    running_service(row.module, args.artifacts, threads=args.threads, log_file=log)
                )
            with urllib.request.urlopen(f"{base}/info", timeout=10) as response:
                info = json.loads(response.read())
            steps = []
            for count in users:
                step = run_locust(
                    row.locust_user,
                    base,
                    count,
                    args.duration,
                    args.out / f"{service}_u{count}",
                    texts_per_request=args.texts,
                )
                print(
                    f"  {service:<9} users {count:>4}: goodput {step['goodput']:7.1f} sentences/s  "
                    f"p50 {step['p50_ms']:7.0f} ms  p95 {step['p95_ms']:7.0f} ms  429 share {step['share_429']:.1%}  "
                    f"5xx {step['failure_classes']['5xx']}  other {step['failures'] - step['failure_classes']['5xx']}  "
                    f"locust {step['locust_cpu_cores']:.2f} cores, service {step['service_cpu_cores']:.2f}",
                    flush=True,
                )
                steps.append(step)
            after = probe_after_overload(base)
            print(f"  {service:<9} request right after the last step: {after}", flush=True)
            at_knee = knee(steps, args.slo_ms)
            saturation = max((s["goodput"] for s in steps), default=0.0)
            results["services"][service] = {
                "info": {k: info.get(k) for k in ("variant", "runtime", "threads", "model")},
                "batching": info.get("batching"),
                "steps": steps,
                "after_last_step": after,
                "in_process": ceiling,
                "knee": {"users": at_knee["users"], "capacity_sentences_per_s": at_knee["goodput"]}
                if at_knee
                else None,
                "saturation_goodput": saturation,
                "serving_efficiency": round(saturation / ceiling["best_texts_per_s"], 3) if ceiling else None,
            }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print((args.out / "report.md").read_text())
    return 0


def p95_bar_ms(data: dict) -> float | None:
    """The latency an admitted request is promised: the wait budget plus one full batch (max_batch_size texts
    at the in-process speed measured for that batch size in the same run)."""
    batching, ceiling = data.get("batching") or {}, data.get("in_process") or {}
    size = batching.get("max_batch_size")
    rates = ceiling.get("texts_per_s_by_batch") or {}
    rate = rates.get(str(size)) or rates.get(size)  # str keys once read back from results.json
    if not size or not rate or "max_queue_wait_ms" not in batching:
        return None
    return batching["max_queue_wait_ms"] + 1000.0 * size / rate


def write_report(results: dict, out: Path) -> None:
    s = results["settings"]
    lines = [
        f"# Load test: {' vs '.join(SERVICES)}",
        "",
        f"Locust headless, closed loop, {s['duration_s']} s per step, {s['texts_per_request']} texts per request "
        f"drawn from a fixed corpus of real English sentences; users honour Retry-After (a 429 is counted as its "
        f"own outcome, then the user waits as told). Services started with {s['threads']} model threads each, "
        f"from `{s['artifacts']}`. Locust runs on the same {s['cores']} cores as the service: its CPU use is in "
        "the table, and every figure here is lower than the service would give with the cores to itself.",
        "",
        "Goodput: sentences answered 200 per second. p50/p95: the answered (200) requests. 429 share: of all "
        f"requests sent. Knee: the last step whose p95 stays within {s['slo_ms']:.0f} ms.",
        "",
        "Model busy: the share of the step the model was running (timed in the model's thread, so hand-offs and "
        "the event loop's delays count as idle; a call that straddles the step's start can put it a little over "
        "1); model speed: texts per second of model time (both from the service's /metrics). The model's speed "
        "drifts between steps on a shared machine; a serving layer that loses nothing keeps the model busy at "
        "every load.",
        "",
        table(
            [
                "service",
                "variant",
                "users",
                "requests",
                "200",
                "429 share",
                "5xx",
                "other failures",
                "goodput (sentences/s)",
                "p50 ms",
                "p95 ms",
                "model busy",
                "model speed (texts/s)",
                "Locust CPU (cores)",
                "service CPU (cores)",
            ],
            [
                [
                    name,
                    data["info"]["variant"],
                    step["users"],
                    step["requests"],
                    step["ok"],
                    f"{step['share_429']:.1%}",
                    step["failure_classes"]["5xx"],
                    step["failures"] - step["failure_classes"]["5xx"],
                    f"{step['goodput']:.1f}",
                    f"{step['p50_ms']:.0f}",
                    f"{step['p95_ms']:.0f}",
                    step.get("model_busy_share", "-"),
                    step.get("model_texts_per_model_s", "-"),
                    f"{step['locust_cpu_cores']:.2f}",
                    f"{step['service_cpu_cores']:.2f}",
                ]
                for name, data in results["services"].items()
                for step in data["steps"]
            ],
        ),
        "",
        "## Capacity and serving efficiency",
        "",
    ]
    capacity = []
    for name, data in results["services"].items():
        by_users = {st["users"]: st["goodput"] for st in data["steps"]}
        ratios = " / ".join(
            f"{by_users[u] / by_users[32]:.2f}x" if 32 in by_users and by_users[32] and u in by_users else "-"
            for u in (128, 512)
        )
        speeds = {st["users"]: st.get("model_texts_per_model_s") for st in data["steps"]}
        speed_ratios = " / ".join(
            f"{speeds[u] / speeds[32]:.2f}x" if speeds.get(32) and speeds.get(u) else "-" for u in (128, 512)
        )
        k = data["knee"]
        ceiling = data["in_process"]
        bar = p95_bar_ms(data)
        overloaded = [st["p95_ms"] for st in data["steps"] if st["users"] in (128, 512)]
        p95_check = f"{max(overloaded):.0f} vs {bar:.0f} ms" if bar and overloaded else "-"
        after = data["after_last_step"]
        best = f"{ceiling['best_texts_per_s']} (b{ceiling['best_batch']})" if ceiling else "-"
        efficiency = data["serving_efficiency"]
        capacity.append(
            [
                name,
                k["users"] if k else "-",
                k["capacity_sentences_per_s"] if k else "-",
                f"{data['saturation_goodput']:.1f}",
                best,
                efficiency if efficiency is not None else "-",
                ratios,
                speed_ratios,
                p95_check,
                f"HTTP {after['status']} in {after['ms']:.0f} ms",
            ]
        )
    lines += [
        table(
            [
                "service",
                "knee (users)",
                "capacity at the knee (sentences/s)",
                "saturation goodput",
                "in-process best (texts/s, batch)",
                "serving efficiency",
                "goodput at 128 / 512 users vs 32",
                "model speed at 128 / 512 vs 32",
                "worst p95 at 128 / 512 vs the wait budget + one full batch",
                "request right after",
            ],
            capacity,
        ),
        "",
        "![throughput](throughput.png)",
        "",
        "![latency](latency.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    write_charts(results, out)


def write_charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, data in results["services"].items():
        users = [s["users"] for s in data["steps"]]
        left.plot(users, [s["goodput"] for s in data["steps"]], marker="o", label=f"{name} goodput")
        right.plot(users, [100 * s["share_429"] for s in data["steps"]], marker="o", label=f"{name} 429 share")
    for ax, title in ((left, "goodput (sentences answered 200 per s)"), (right, "429 share of requests (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent users")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, data in results["services"].items():
        users = [s["users"] for s in data["steps"]]
        ax.plot(users, [s["p50_ms"] for s in data["steps"]], marker="o", label=f"{name} p50")
        ax.plot(users, [s["p95_ms"] for s in data["steps"]], marker="x", linestyle="--", label=f"{name} p95")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("latency (ms)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
