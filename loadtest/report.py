"""make loadtest: both services under Locust at several user counts, plus an overload step; report + charts.

    python -m loadtest.report [--artifacts DIR | --torch-url URL --onnx-url URL] [--users 1,8,32,128]
                              [--duration 20] [--overload-users 512] [--out results/loadtest]

Each step runs Locust headless (closed loop: every user sends its next request as soon as the last one is
answered) and reads its CSV stats; sentences/s comes from the service's own embed_texts_total counter.
Locust runs on the same machine as the services, so it competes with them for the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .processes import REPO, running_service

SERVICES = {"torch_api": ("TorchApiUser", "services.torch_api"), "onnx_api": ("OnnxApiUser", "services.onnx_api")}


def metric_value(base_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def run_locust(user_class: str, base_url: str, users: int, duration_s: int, csv_prefix: Path) -> dict:
    """One headless Locust step; returns the /embed row of its stats plus failure reasons."""
    texts_before = metric_value(base_url, "embed_texts_total")
    started = time.monotonic()
    command = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), user_class,
               "--headless", "-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--host", base_url,
               "--csv", str(csv_prefix), "--only-summary", "--stop-timeout", "5", "--exit-code-on-error", "0",
               "--loglevel", "WARNING"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=duration_s + 120)
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"locust failed ({completed.returncode}): {completed.stderr[-2000:]}")
    sentences = metric_value(base_url, "embed_texts_total") - texts_before
    with open(f"{csv_prefix}_stats.csv", newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r["Name"] == "/embed"), None)
    if row is None:  # no request finished inside the step
        row = {"Request Count": 0, "Failure Count": 0, "Requests/s": 0, "50%": 0, "95%": 0, "Average Response Time": 0}
    with open(f"{csv_prefix}_failures.csv", newline="") as fh:
        failures = {r["Error"]: int(r["Occurrences"]) for r in csv.DictReader(fh) if r["Name"] == "/embed"}
    requests = int(row["Request Count"])
    return {
        "users": users,
        "requests": requests,
        "failures": int(row["Failure Count"]),
        "failure_reasons": failures,
        "requests_per_s": round(float(row["Requests/s"]), 2),
        "sentences_per_s": round(sentences / max(elapsed - 1.0, 1.0), 1),  # ~1 s of start-up is not load
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "mean_ms": round(float(row["Average Response Time"]), 1),
        "failure_classes": classify_failures(failures),
    }


def classify_failures(reasons: dict[str, int]) -> dict[str, int]:
    out = {"429": 0, "5xx": 0, "connection": 0, "other": 0}
    for reason, count in reasons.items():
        if "429 overloaded" in reason:
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
    return {"status": status, "ms": round((time.perf_counter() - t0) * 1000, 1), "vectors": vectors,
            "queue_drained_after_s": drained_s}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/all-mpnet-base-v2"))
    parser.add_argument("--torch-url", default=None, help="target a running torch_api instead of starting one")
    parser.add_argument("--onnx-url", default=None, help="target a running onnx_api instead of starting one")
    parser.add_argument("--services", default="torch_api,onnx_api")
    parser.add_argument("--users", default="1,8,32,128", help="comma list of concurrent users")
    parser.add_argument("--duration", type=int, default=20, help="seconds per step")
    parser.add_argument("--overload-users", type=int, default=512, help="users in the overload step (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="model threads per started service")
    parser.add_argument("--out", type=Path, default=Path("results/loadtest"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    users = [int(u) for u in args.users.split(",")]
    urls = {"torch_api": args.torch_url, "onnx_api": args.onnx_url}
    results = {"settings": {"users": users, "duration_s": args.duration, "overload_users": args.overload_users,
                            "threads": args.threads, "artifacts": str(args.artifacts)}, "services": {}}
    for service in args.services.split(","):
        user_class, module = SERVICES[service]
        with contextlib.ExitStack() as stack:
            base = urls[service]
            if base is None:
                print(f"starting {service} from {args.artifacts} (warm-up may take a minute) ...", flush=True)
                log = stack.enter_context(open(args.out / f"{service}.log", "w"))
                base = stack.enter_context(running_service(module, args.artifacts, threads=args.threads, log_file=log))
            with urllib.request.urlopen(f"{base}/info", timeout=10) as response:
                info = json.loads(response.read())
            steps = []
            for count in users:
                step = run_locust(user_class, base, count, args.duration, args.out / f"{service}_u{count}")
                print(f"  {service:<9} users {count:>4}: {step['requests_per_s']:7.2f} req/s "
                      f"{step['sentences_per_s']:8.1f} sentences/s  p50 {step['p50_ms']:7.0f} ms  "
                      f"p95 {step['p95_ms']:7.0f} ms  429s {step['failure_classes']['429']}  "
                      f"other failures {step['failures'] - step['failure_classes']['429']}", flush=True)
                steps.append(step)
            overload = None
            if args.overload_users:
                overload = run_locust(user_class, base, args.overload_users, args.duration,
                                      args.out / f"{service}_overload")
                overload["after"] = probe_after_overload(base)
                print(f"  {service:<9} overload {args.overload_users} users: {overload['failure_classes']}, "
                      f"then {overload['after']}", flush=True)
            results["services"][service] = {"info": {k: info.get(k) for k in ("variant", "runtime", "threads", "model")},
                                            "steps": steps, "overload": overload}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print((args.out / "report.md").read_text())
    return 0


def write_report(results: dict, out: Path) -> None:
    s = results["settings"]
    lines = ["# Load test: torch_api vs onnx_api", "",
             f"Locust headless, closed loop, {s['duration_s']} s per step, 1-16 texts per request from a fixed corpus "
             f"of real English sentences; services started with {s['threads']} model threads each, from "
             f"`{s['artifacts']}`. Locust shares the machine's CPU with the service under test.", "",
             "Latencies and req/s count every answered request, 429s included (they return at once).", "",
             "| service | variant | users | requests | 429 | other failures | req/s | sentences/s | p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, data in results["services"].items():
        for step in data["steps"]:
            c = step["failure_classes"]
            lines.append(f"| {name} | {data['info']['variant']} | {step['users']} | {step['requests']} | "
                         f"{c['429']} | {step['failures'] - c['429']} | {step['requests_per_s']:.2f} | {step['sentences_per_s']:.1f} | "
                         f"{step['p50_ms']:.0f} | {step['p95_ms']:.0f} |")
    overloads = {n: d["overload"] for n, d in results["services"].items() if d["overload"]}
    if overloads:
        lines += ["", f"## Overload: {s['overload_users']} users (far more than the queue holds)", "",
                  "| service | requests | 429 share | 5xx | connection errors | other failures | request right after |",
                  "|---|---|---|---|---|---|---|"]
        for name, o in overloads.items():
            c = o["failure_classes"]
            share = c["429"] / o["requests"] if o["requests"] else 0.0
            after = o["after"]
            lines.append(f"| {name} | {o['requests']} | {share:.1%} | {c['5xx']} | {c['connection']} | {c['other']} | "
                         f"HTTP {after['status']} in {after['ms']:.0f} ms (queue drained {after['queue_drained_after_s']} s "
                         "after the step) |")
    lines += ["", "![throughput](throughput.png)", "", "![latency](latency.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    write_charts(results, out)


def write_charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, data in results["services"].items():
        users = [s["users"] for s in data["steps"]]
        left.plot(users, [s["requests_per_s"] for s in data["steps"]], marker="o", label=f"{name} requests/s")
        right.plot(users, [s["sentences_per_s"] for s in data["steps"]], marker="o", label=f"{name} sentences/s")
    for ax, title in ((left, "requests/s"), (right, "sentences/s")):
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
