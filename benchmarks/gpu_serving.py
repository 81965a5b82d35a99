"""Serving on a GPU, measured: both services over HTTP on the GPU, plus the host CPU's int8 vs fp32 rows.

    python -m benchmarks.gpu_serving --tokenizer-dir models/all-mpnet-base-v2 --out $OUT --budget-s 450

One prepared script with a time budget for a lent GPU machine: `make gpu-carry` here, then on the device
`bash scripts/gpu_serving_device.sh` (carry .gpu-carry: the tokenizer and the services' wheels).
Real weights cannot travel there, so, as benchmarks.gpu_lab, the model is MPNet-base from the reference
configuration with RANDOM weights (seed 0) and the real MPNet tokenizer (--tokenizer-dir: a folder holding
tokenizer.json; a few MB, carried). Timings depend on shapes, not weight values; every cosine is kernel
numerics of a random network, not the trained model's fidelity. --artifacts DIR skips the build (tests).

Sections, in order (results.json / results.md rewritten after each; one that would start after --budget-s
is recorded as skipped with that reason, a failing one as its error, and the others still run):
  build      the random-weight model folder -> python -m build_artifacts (every variant, with parity)
  torch_api  python -m services.torch_api --device cuda (fp16, shape buckets, torch.compile reduce-overhead)
             over HTTP: time to healthy (load + precision check + compile + every bucket shape), graphs
             compiled, then closed-loop clients (1, 8, 32) x texts per request (1, 8): goodput (texts/s
             answered 200), p50/p95, and the service's own model time per request (x-inference-time: the
             in-process figure of the same run), GPU memory after warm-up
  onnx_api   python -m services.onnx_api --device cuda (CUDAExecutionProvider): the same cells; skipped with
             the reason where the installed onnxruntime has no CUDA provider (onnxruntime-gpu)
  host_cpu   python -m benchmarks --only ex1,ex3,ex6 on the machine's own CPU (its flags recorded: VNNI, AMX?):
             torch and ONNX int8 variants against fp32, to test whether the ~1.5x int8 ceiling of the 2-core
             AVX2 CI machine is AVX2's
--device cpu runs every code path on this machine (a test does, with MiniLM artifacts and tiny cells).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from runtime.markdown import table

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("build", "torch_api", "onnx_api", "host_cpu")
NEEDED_MODULES = (
    "fastapi",
    "uvicorn",
    "pydantic_settings",
    "prometheus_client",
    "httpx",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "transformers",
    "torch",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="results.json, results.md, service logs")
    parser.add_argument("--tokenizer-dir", type=Path, help="folder with tokenizer.json (for the random model)")
    parser.add_argument("--artifacts", type=Path, help="use this artifact folder (skips the build section)")
    parser.add_argument("--model-dir", type=Path, help="model folder for host_cpu (default: the random one)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no section (or cell) after this")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--texts", default="1,8", help="texts per request, each a cell with every client count")
    parser.add_argument("--duration-s", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--cell-warmup-s", type=float, default=1.5, help="unmeasured seconds before each cell")
    parser.add_argument("--start-timeout-s", type=float, default=300.0, help="most time a service may take to warm up")
    parser.add_argument("--compile-mode", default="reduce-overhead", help="torch_api compile mode on cuda")
    parser.add_argument("--threads", type=int, default=None, help="service threads (default: all cores)")
    parser.add_argument("--host-cpu-threads", default="", help="comma list (default: all cores)")
    parser.add_argument("--host-cpu-budget-s", type=float, default=2.0, help="benchmarks --time-budget-s")
    parser.add_argument("--tiny", action="store_true", help="2-layer width-64 MPNet: test the script itself")
    return parser.parse_args(argv)


def cpu_description() -> dict:
    from runtime.host import probe_cpu

    host = probe_cpu()
    return {"model": host.model, "cores": host.cores, "flags": sorted(host.features)}


def environment(args) -> dict:
    from runtime.host import package_versions

    versions = package_versions(NEEDED_MODULES, keep_missing=True)
    env = {
        "python": versions.pop("python"),
        "device": args.device,
        "cpu": cpu_description(),
        "weights": "given artifacts" if args.artifacts else "random (seed 0), MPNet-base reference configuration",
    }
    env.update({name: version for name, version in versions.items() if version is not None})
    env["missing_modules"] = [name for name, version in versions.items() if version is None]
    try:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    except ImportError:
        pass
    with contextlib.suppress(ImportError):
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return env


class Run:
    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.results: dict = {"environment": environment(args), "sections": {}, "skipped": {}}
        self.work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-serving-{os.getpid()}"
        self.artifacts: Path | None = args.artifacts
        self.model_dir: Path | None = args.model_dir

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def write(self) -> None:
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        (out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (out / "results.md").write_text(render_markdown(self.results))

    def section(self, name: str) -> None:
        if self.left() <= 0:
            spent = f"{self.elapsed():.0f} s spent of --budget-s {self.args.budget_s}"
            self.results["skipped"][name] = f"time budget: {spent}"
        else:
            print(f"[{name}] ... ({self.elapsed():.0f} s elapsed)", flush=True)
            t0 = time.perf_counter()
            try:
                self.results["sections"][name] = getattr(self, name)()
            except Exception as exc:  # one failing section must not lose the others' figures
                self.results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", flush=True)
        self.write()

    # --- sections -------------------------------------------------------------------------------------
    def build(self) -> dict:
        if self.artifacts is not None:
            return {"skipped": f"--artifacts {self.artifacts} given"}
        if self.args.tokenizer_dir is None:
            raise ValueError("--tokenizer-dir (a folder with tokenizer.json) or --artifacts is needed")
        self.model_dir = self.model_dir or random_model(self.args.tokenizer_dir, self.work / "model", self.args.tiny)
        out = self.work / "artifacts"
        t0 = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "build_artifacts",
            "--model",
            str(self.model_dir),
            "--out",
            str(out),
            "--force",
        ]
        log = self.args.out / "build.log"
        with log.open("w") as fh:
            subprocess.run(
                command, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, check=True, timeout=max(60.0, self.left())
            )
        self.artifacts = out
        manifest = json.loads((out / "manifest.json").read_text())
        return {
            "seconds": round(time.perf_counter() - t0, 1),
            "model": str(self.model_dir),
            "parity": {name: record["parity"] for name, record in manifest["artifacts"].items()},
        }

    def torch_api(self) -> dict:
        env = {"TORCH_API_DEVICE": self.args.device}
        if self.args.device == "cuda":
            env["TORCH_API_COMPILE_MODE"] = self.args.compile_mode
        else:  # the CPU path of this script: the same code, bucketed and compiled as on the GPU
            env.update(TORCH_API_SEQ_BUCKETS="default", TORCH_API_VARIANT="torch_fp32", TORCH_API_MAX_BATCH_SIZE="8")
        try:
            return self.serve("services.torch_api", env)
        except Exception as exc:  # one GPU run is all there is: fall back to eager, say why
            if self.args.device != "cuda" or self.left() <= 0:
                raise
            print(f"  torch_api failed ({exc}); once more without torch.compile", flush=True)
            result = self.serve("services.torch_api", {**env, "TORCH_API_COMPILE": "false"})
            result["compiled_attempt_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            return result

    def onnx_api(self) -> dict:
        if self.args.device == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return {
                    "skipped": f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
                    "(needs onnxruntime-gpu; its wheel is larger than a device call can carry)"
                }
        return self.serve("services.onnx_api", {"ONNX_API_DEVICE": self.args.device})

    def host_cpu(self) -> dict:
        if self.model_dir is None:
            raise ValueError("host_cpu needs the model folder (the build section, or --model-dir)")
        threads = [t for t in self.args.host_cpu_threads.split(",") if t] or [str(os.cpu_count())]
        rows = {}
        for count in threads:
            if self.left() <= 0:
                rows[count] = {"skipped": "time budget"}
                continue
            out = self.args.out / f"host-cpu-{count}t"
            command = [
                sys.executable,
                "-m",
                "benchmarks",
                "--model",
                str(self.model_dir),
                "--artifacts",
                str(self.artifacts),
                "--only",
                "ex1,ex3,ex6",
                "--threads",
                count,
                "--runs",
                "30",
                "--time-budget-s",
                str(self.args.host_cpu_budget_s),
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
            with (self.args.out / f"host-cpu-{count}t.log").open("w") as fh:
                subprocess.run(
                    command,
                    cwd=REPO,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=max(60.0, self.left() + 60),
                )
            rows[count] = int8_rows(json.loads((out / "results.json").read_text()))
        return {"cpu": self.results["environment"]["cpu"], "threads": rows}

    # --- one service over HTTP ------------------------------------------------------------------------
    def serve(self, module: str, env: dict) -> dict:
        from loadtest.processes import running_service

        log_path = self.args.out / f"{module.split('.')[-1]}.log"
        t0 = time.perf_counter()
        with (
            log_path.open("w") as log,
            running_service(
                module,
                self.artifacts,
                threads=self.args.threads or None,
                env=env,
                timeout_s=self.args.start_timeout_s,
                log_file=log,
            ) as base,
        ):
            result = {
                "seconds_to_healthy": round(time.perf_counter() - t0, 1),
                "env": env,
                "info": http_json(f"{base}/info"),
                "gpu_memory": gpu_memory(),
                "cells": [],
            }
            dimension = result["info"]["dimension"]
            for texts in [int(t) for t in self.args.texts.split(",")]:
                for clients in [int(c) for c in self.args.clients.split(",")]:
                    if self.left() <= 0:
                        result["cells"].append({"clients": clients, "texts": texts, "skipped": "time budget"})
                        continue
                    cell = load_cell(base, clients, texts, self.args.duration_s, self.args.cell_warmup_s, dimension)
                    print(f"  {module} {clients} clients x {texts} texts: {cell}", flush=True)
                    result["cells"].append(cell)
                    self.write()
            result["info_after"] = {
                k: v for k, v in http_json(f"{base}/info").items() if k in ("graphs_compiled", "warmup_s")
            }
            return result


def random_model(tokenizer_dir: Path, folder: Path, tiny: bool) -> Path:
    """MPNet-base (reference configuration; --tiny: 2 layers, width 64) with random weights, seed 0."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    from .gpu_lab import REFERENCE_CONFIG, TINY_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = dict(TINY_CONFIG if tiny else REFERENCE_CONFIG)
    MPNetModel(MPNetConfig(**config)).save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {tokenizer_dir}")
    return folder


def http_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def gpu_memory() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout.strip() or None


def load_cell(base: str, clients: int, texts: int, duration: float, warmup: float, dimension: int) -> dict:
    """Closed loop: `clients` workers, each sending `texts` texts per request back to back (429: wait Retry-After).
    server_ms_median is the model's time per call (x-inference-time)."""
    from build_artifacts.corpus import calibration_sentences, english_sentences
    from loadtest.closed_loop import closed_loop, summarize

    corpus = list(english_sentences()) + list(calibration_sentences())

    def draw(rng) -> list[str]:
        return [rng.choice(corpus) for _ in range(texts)]

    answers = asyncio.run(
        closed_loop(base, clients, duration, warmup, draw, dimension, server_time_header="x-inference-time")
    )
    return {**summarize(answers, clients, duration), "texts": texts}


def int8_rows(results: dict) -> list[dict]:
    """ex3 / ex6 speed rows of a `python -m benchmarks` run, each with its speed against fp32 on the same input:
    torch rows against ex1's eval + inference_mode, ONNX rows against the offline-optimized fp32 graph."""
    records = [r for r in results.get("records", []) if r.get("median_ms") and not r.get("skipped")]

    def fp32_ms(exercise: str, case: str) -> float | None:
        for r in records:
            torch_fp32 = exercise == "ex3" and r["exercise"] == "ex1" and "inference_mode" in r["variant"]
            onnx_fp32 = exercise == "ex6" and r["variant"] in ("onnx_optimized", "onnx_offline")
            if r["input"] == case and (torch_fp32 or onnx_fp32):
                return r["median_ms"]
        return None

    rows = []
    for r in records:
        if r["exercise"] not in ("ex3", "ex6") or r["variant"].endswith("cold_start"):
            continue
        reference = fp32_ms(r["exercise"], r["input"])
        rows.append(
            {
                "exercise": r["exercise"],
                "variant": r["variant"],
                "input": r["input"],
                "median_ms": r["median_ms"],
                "fp32_ms": reference,
                "x_vs_fp32": round(reference / r["median_ms"], 2) if reference else None,
                "min_cosine": r.get("min_cosine"),
                "runs": r.get("runs"),
            }
        )
    return rows


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# Serving on a GPU: both services over HTTP, and the host CPU's int8 rows",
        "",
        f"{env.get('gpu', env['device'])}, CUDA {env.get('cuda')}, torch {env.get('torch')}, onnxruntime "
        f"{env.get('onnxruntime')} ({', '.join(env.get('onnxruntime_providers', []))}); CPU {env['cpu']['model']} "
        f"x{env['cpu']['cores']} ({', '.join(env['cpu']['flags'])}). Weights: {env['weights']}.",
        "",
    ]
    if env.get("missing_modules"):
        lines += [f"Missing modules: {', '.join(env['missing_modules'])}", ""]
    sections = results["sections"]
    for name in ("torch_api", "onnx_api"):
        body = sections.get(name)
        if not isinstance(body, dict) or "cells" not in body:
            continue
        info = body["info"]
        lines += [
            f"## {name}: {info.get('variant')} {info.get('dtype', '')} on {info.get('device')} "
            f"({info.get('gpu') or ', '.join(info.get('providers', []))})",
            "",
            f"Healthy after {body['seconds_to_healthy']} s (warm-up {info.get('warmup_s')} s, "
            f"{info.get('warmup_shapes', '-')} bucket shapes, graphs compiled "
            f"{info.get('graphs_compiled', '-')}, "
            f"after the cells {body.get('info_after', {}).get('graphs_compiled', '-')}; compile mode "
            f"{info.get('compile_mode', '-')}; served parity "
            f"{(info.get('served_parity') or {}).get('min_cosine', '-')}); "
            f"GPU memory {body.get('gpu_memory')}.",
            "",
            table(
                ["clients", "texts/request", "goodput texts/s", "p50 ms", "p95 ms", "model ms (median)", "429 share"],
                [
                    [c["clients"], c["texts"], f"skipped: {c['skipped']}", "", "", "", ""]
                    if "skipped" in c
                    else [
                        c["clients"],
                        c["texts"],
                        c["goodput_texts_per_s"],
                        c["p50_ms"],
                        c["p95_ms"],
                        c["server_ms_median"],
                        c["share_429"],
                    ]
                    for c in body["cells"]
                ],
            ),
            "",
        ]
    host = sections.get("host_cpu")
    if isinstance(host, dict) and "threads" in host:
        lines += ["## Host CPU: int8 against fp32 (python -m benchmarks --only ex1,ex3,ex6)", ""]
        for count, rows in host["threads"].items():
            lines += [
                f"{count} threads:",
                "",
                table(
                    ["exercise", "variant", "input", "median ms", "fp32 ms", "x vs fp32", "min cos"],
                    [
                        [
                            r["exercise"],
                            r["variant"],
                            r["input"],
                            r["median_ms"],
                            r["fp32_ms"],
                            r["x_vs_fp32"],
                            r["min_cosine"],
                        ]
                        for r in (rows if isinstance(rows, list) else [])
                    ],
                ),
                "",
            ]
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- {name}: skipped ({why})")
    for name, body in sections.items():
        for key in ("error", "skipped"):
            if isinstance(body, dict) and key in body:
                lines.append(f"- {name}: {key}: {body[key]}")
    lines.append(f"\nElapsed: {results.get('elapsed_s')} s.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = Run(args)
    missing = run.results["environment"]["missing_modules"]
    if missing:
        print(f"missing modules: {', '.join(missing)} (carry wheels: make gpu-carry)", file=sys.stderr)
    if args.device == "cuda" and not run.results["environment"].get("cuda_available"):
        run.results["skipped"]["all"] = "CUDA is not available here: run with --device cpu to test the script"
        run.write()
        print(run.results["skipped"]["all"], file=sys.stderr)
        return 2
    for name in args.sections.split(","):
        run.section(name)
    shutil.rmtree(run.work, ignore_errors=True)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
