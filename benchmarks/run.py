"""python -m benchmarks: every lab measurement in one process, on the same inputs, with fidelity.

Exercises (named as in the lab):
  ex1  no optimizations (train mode, autograd on), eval(), eval()+no_grad(), eval()+inference_mode()
  ex2  torch.compile: compile + first call once per input size, then inference
  ex3  dynamic int8 (torch.ao quantize_dynamic): module printout, state_dict sizes, speed of
       torch_int8 and torch_int8_smooth
  ex6  ONNX Runtime: onnx_fp32 (online optimization) vs onnx_optimized (pre-optimized file,
       optimizations off), cold start included; onnx_fused, onnx_int8, onnx_int8_smooth too
  ex4/ex5/gpu  with --device cuda and CUDA present, the GPU lab's sections (benchmarks.gpu_lab) on
       the trained weights; otherwise recorded as skipped with the reason
Every record: median/mean/p95 over --runs after warm-up (or fewer: --time-budget-s per measurement),
speedup against the no-optimizations baseline of the same input size, min cosine against fp32 eager.
Artifact rows use the manifest's variant names. Progress lines end with an estimate of the time left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from build_artifacts.build import tool_versions
from build_artifacts.model_loading import DEFAULT_MODEL, ModelUnavailableError

from .inputs import build_inputs
from .recorder import BASELINE_VARIANT, Recorder

EXERCISES = ("ex1", "ex2", "ex3", "ex6", "gpu")
#: per measurement; with it the benchmark stage of `make benchmark` takes about 8 minutes on 2 cores
DEFAULT_TIME_BUDGET_S = 6.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL), help="HF id or local folder")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="artifact folder from build_artifacts (default: build one under --out)",
    )
    parser.add_argument("--runs", type=int, default=100, help="timed runs per measurement, after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=DEFAULT_TIME_BUDGET_S,
        help="stop a measurement early after this many seconds (>= 2 runs; 0: no limit); the "
        "actual runs are recorded (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, fixed for every measurement")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", default=",".join(EXERCISES), help=f"comma list of {', '.join(EXERCISES)}")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md, charts")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(EXERCISES)
    if unknown:
        parser.error(f"unknown exercises: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be >= 1")
    if not args.time_budget_s:
        args.time_budget_s = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from build_artifacts.model_loading import resolve_model_dir

    try:
        resolve_model_dir(args.model)  # a bad --model fails here, with the offline options, before torch loads
        return run(args)
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime import torch_encoder
    from runtime.manifest import Manifest
    from runtime.tokenization import TextTokenizer

    from . import exercises, report

    torch_encoder.quiet_libraries()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)

    artifacts = args.artifacts
    if artifacts is None:
        from build_artifacts.build import build

        artifacts = args.out / "artifacts"
        print(f"no --artifacts given: building them into {artifacts}", flush=True)
        build(args.model, artifacts, force=True, threads=args.threads)
    manifest = Manifest.load(artifacts)
    m = manifest.model
    tokenizer = TextTokenizer(artifacts / manifest.tokenizer.path, m.max_seq_length)
    cases = build_inputs(tokenizer)
    only = set(args.only.split(","))

    recorder = Recorder(device="cpu", planned=exercises.planned_measurements(manifest, only, len(cases)))
    ctx = exercises.Context(
        args=args, artifacts=artifacts, manifest=manifest, cases=cases, recorder=recorder, extras={}
    )
    budget = f"at most {args.time_budget_s:g} s each" if args.time_budget_s else "no time limit"
    print(
        f"model {args.model} ({m.model_type}, dim {m.dimension}); threads {args.threads}; "
        f"{recorder.planned} measurements of up to {args.runs} runs ({budget}); inputs "
        + ", ".join(f"{c.name}={c.batch_size}x{c.seq_len}" for c in cases),
        flush=True,
    )
    started = time.perf_counter()
    exercises.reference_embeddings(ctx)
    for name, fn in (
        ("ex1", exercises.ex1_modes),
        ("ex2", exercises.ex2_compile),
        ("ex3", exercises.ex3_int8),
        ("ex6", exercises.ex6_onnxruntime),
        ("gpu", exercises.gpu_exercises),
    ):
        if name in only:
            fn(ctx)
    recorder.fill_speedups()

    header = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "model_info": m.to_dict(),
        "artifacts": str(artifacts),
        "hardware": hardware_info(),
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "time_budget_s": args.time_budget_s,
        "device_requested": args.device,
        "versions": tool_versions(),
        "inputs": [
            {
                "name": c.name,
                "batch_size": c.batch_size,
                "seq_len": c.seq_len,
                "real_tokens": int(c.attention_mask.sum()),
            }
            for c in cases
        ],
        "fidelity": "min cosine of pooled, normalized embeddings against fp32 eager (eval + inference_mode) on CPU",
        "baseline": f"'{BASELINE_VARIANT}' of the same input size: model in train() mode with autograd on",
        # the build's gate per artifact (parity corpus cosine, retrieval agreement): the fidelity that decides
        # what the services serve, next to the min cosine on this run's few inputs
        "gate": {name: record.parity.to_dict() for name, record in manifest.artifacts.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    results = {"header": header, "records": recorder.records, "extras": ctx.extras}
    tmp = args.out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.out / "results.json")
    report.write_markdown(results, args.out / "results.md")
    report.write_charts(results, args.out)
    print()
    print(report.summary_table(results))
    return 0


def hardware_info() -> dict:
    from runtime.host import probe_cpu

    host = probe_cpu()
    info = {
        "cpu": host.model,
        "logical_cores": host.cores,
        "isa": sorted(host.features),
        "platform": platform.platform(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # hardware probing must never fail the run
        pass
    return info
