"""python -m benchmarks: every lab measurement in one process, on the same inputs, with fidelity.

Exercises (named as in the lab):
  ex1  no optimizations (train mode, autograd on), eval(), eval()+no_grad(), eval()+inference_mode()
  ex2  torch.compile: compile + first call once per input size, then inference
  ex3  dynamic int8 (torch.ao quantize_dynamic): module printout, state_dict sizes, speed
  ex6  ONNX Runtime: online optimization vs offline (pre-optimized file, optimizations off), cold
       start included; the int8 ONNX too
  ex4/ex5/gpu  compile modes, fp32/fp16/bf16/autocast, placement and pinned-memory copies, with
       --device cuda and CUDA present; otherwise recorded as skipped with the reason
Every record: median/mean/p95 over --runs after warm-up, speedup against the no-optimizations
baseline of the same input size, min cosine against fp32 eager.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from build_artifacts.build import tool_versions
from build_artifacts.corpus import english_sentences
from build_artifacts.model_loading import DEFAULT_MODEL, ModelUnavailableError

from .timing import Timing, time_calls

EXERCISES = ("ex1", "ex2", "ex3", "ex6", "gpu")
SHORT_TEXT = "Can you recommend a good book about the history of mathematics?"
LONG_TEXT_TOKENS = 256
BASELINE_VARIANT = "no_optimizations"


@dataclass
class InputCase:
    name: str
    texts: list[str]
    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass
class Recorder:
    device: str
    records: list[dict] = field(default_factory=list)
    references: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, exercise: str, variant: str, case: InputCase, timing: Timing | None, embeddings=None,
            device: str | None = None, skipped: str | None = None, note: str | None = None) -> dict:
        min_cos = None
        if embeddings is not None and case.name in self.references:
            from build_artifacts.similarity import rowwise_cosine

            min_cos = round(float(rowwise_cosine(np.asarray(embeddings, dtype=np.float32), self.references[case.name]).min()), 6)
        record = {
            "exercise": exercise,
            "variant": variant,
            "device": device or self.device,
            "input": case.name,
            "batch_size": case.batch_size,
            "seq_len": case.seq_len,
            "runs": timing.runs if timing else 0,
            "mean_ms": round(timing.mean_ms, 3) if timing else None,
            "median_ms": round(timing.median_ms, 3) if timing else None,
            "p95_ms": round(timing.p95_ms, 3) if timing else None,
            "speedup": None,
            "min_cosine": min_cos,
            "skipped": skipped,
        }
        if note:
            record["note"] = note
        self.records.append(record)
        label = f"{exercise:<4} {variant:<34} {case.name:<10}"
        if not skipped:  # skipped groups print their reason once, where they are skipped
            cos = f"{min_cos:.4f}" if min_cos is not None else "   -  "
            print(f"  {label} median {timing.median_ms:9.2f} ms  p95 {timing.p95_ms:9.2f}  min cos {cos}", flush=True)
        return record

    def fill_speedups(self) -> None:
        baselines = {
            (r["input"], r["device"]): r["median_ms"]
            for r in self.records
            if r["variant"] == BASELINE_VARIANT and r["median_ms"]
        }
        cpu_baselines = {r["input"]: r["median_ms"] for r in self.records if r["variant"] == BASELINE_VARIANT and r["device"] == "cpu" and r["median_ms"]}
        for r in self.records:
            if r["variant"].endswith(("_first_call", "_cold_start")):
                continue  # one-off costs, not comparable to a steady-state call
            base = baselines.get((r["input"], r["device"])) or cpu_baselines.get(r["input"])
            if base and r["median_ms"]:
                r["speedup"] = round(base / r["median_ms"], 3)


def build_inputs(tokenizer) -> list[InputCase]:
    corpus = english_sentences()
    counts = tokenizer.count_tokens(list(corpus))
    sentences = [t for t, n in zip(corpus, counts) if n < 40][:32]  # sentences, not paragraphs
    paragraphs = sorted(corpus, key=lambda t: -len(t))[:2]
    long_ids = tokenizer.encode([" ".join(paragraphs)], max_length=min(LONG_TEXT_TOKENS, tokenizer.max_length))
    cases = []
    for name, texts, batch in (
        ("b1_short", [SHORT_TEXT], tokenizer.encode([SHORT_TEXT])),
        ("b32_mixed", sentences, tokenizer.encode(sentences)),
        ("b1_long", [" ".join(paragraphs)], long_ids),
    ):
        cases.append(InputCase(name, texts, batch.input_ids, batch.attention_mask))
    return cases


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL), help="HF id or local folder")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="artifact folder from build_artifacts (default: build one under --out)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per measurement, after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="stop a measurement early after this many seconds (>= 2 runs); actual runs are recorded")
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
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from build_artifacts import torch_runtime
    from build_artifacts.manifest import load_manifest
    from build_artifacts.model_loading import PoolingSpec, resolve_model_dir
    from build_artifacts.tokenization import TextTokenizer

    from . import exercises, report

    torch_runtime.quiet_libraries()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)

    model_dir = resolve_model_dir(args.model)
    artifacts = args.artifacts
    if artifacts is None:
        from build_artifacts.build import build

        artifacts = args.out / "artifacts"
        print(f"no --artifacts given: building them into {artifacts}", flush=True)
        build(args.model, artifacts, force=True, threads=args.threads)
    manifest = load_manifest(artifacts)
    m = manifest["model"]
    pooling = PoolingSpec(mode=m["pooling"], normalize=m["normalize"], max_seq_length=m["max_seq_length"])
    tokenizer = TextTokenizer(artifacts / manifest["tokenizer"]["path"], pooling.max_seq_length)
    cases = build_inputs(tokenizer)
    only = set(args.only.split(","))

    recorder = Recorder(device="cpu")
    ctx = exercises.Context(args=args, artifacts=artifacts, manifest=manifest, pooling=pooling,
                            model_dir=model_dir, cases=cases, recorder=recorder, extras={})
    print(f"model {args.model} ({m.get('model_type')}, dim {m['dimension']}); threads {args.threads}; "
          f"runs {args.runs}; inputs " + ", ".join(f"{c.name}={c.batch_size}x{c.seq_len}" for c in cases), flush=True)
    started = time.perf_counter()
    exercises.reference_embeddings(ctx)
    for name, fn in (("ex1", exercises.ex1_modes), ("ex2", exercises.ex2_compile), ("ex3", exercises.ex3_int8),
                     ("ex6", exercises.ex6_onnxruntime), ("gpu", exercises.gpu_exercises)):
        if name in only:
            fn(ctx)
    recorder.fill_speedups()

    header = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "model_info": m,
        "artifacts": str(artifacts),
        "hardware": hardware_info(),
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "time_budget_s": args.time_budget_s,
        "device_requested": args.device,
        "versions": tool_versions(),
        "inputs": [{"name": c.name, "batch_size": c.batch_size, "seq_len": c.seq_len,
                    "real_tokens": int(c.attention_mask.sum())} for c in cases],
        "fidelity": "min cosine of pooled, normalized embeddings against fp32 eager (eval + inference_mode) on CPU",
        "baseline": f"'{BASELINE_VARIANT}' of the same input size: model in train() mode with autograd on",
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
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in flags]
    except (OSError, StopIteration):
        isa = []
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "isa": isa, "platform": platform.platform()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - hardware probing must never fail the run
        pass
    return info


def temp_bytes_of_state_dict(module) -> int:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.pt"
        torch.save(module.state_dict(), path)
        return path.stat().st_size
