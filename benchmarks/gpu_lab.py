"""The GPU part of the lab (Ex4, Ex5) as one short script for a lent GPU.

    python -m benchmarks.gpu_lab --tokenizer models/all-mpnet-base-v2/tokenizer.json --out DIR

Real weights cannot travel to the GPU machine, so the model is MPNet-base built from the reference
configuration (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30527, 32 relative-attention buckets)
with RANDOM weights (seed 0). Timings depend on shapes, not on weight values; fidelity figures
(cosine of the pooled, normalized embeddings against fp32 on the same device) are those of a random
network and read as numerics of the kernels, not of the trained model. Inputs are the project's real
sentences, tokenized with the real MPNet tokenizer, at batch sizes 1, 32 and 128.

Sections, in order (results.json / results.md rewritten after each, so a cut-off run still reports):
  placement   fp32 eager on CPU vs GPU
  copy        host-to-device copy of a tokenized batch: pageable vs pinned (non_blocking)
  precision   fp32, fp32+TF32, fp16, bf16, autocast fp16, autocast bf16: time and fidelity vs fp32
  compile     torch.compile default / max-autotune-no-cudagraphs / max-autotune on the fp16 model:
              compile time at the first call of each batch size, graphs compiled, steady-state time
A section that would start after --budget-s is recorded as skipped with that reason.
On a machine without CUDA, --device cpu runs the same code paths (for testing) and skips pinned memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from runtime.markdown import table
from runtime.similarity import parity_report

from .timing import dynamo_graph_count, time_calls

REFERENCE_CONFIG = dict(
    vocab_size=30527,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    relative_attention_num_buckets=32,
    max_position_embeddings=514,
    pad_token_id=1,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
)
TINY_CONFIG = dict(REFERENCE_CONFIG, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
BATCH_SIZES = (1, 32, 128)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")


class Lab:
    def __init__(self, args, transformer=None):
        """`transformer`: trained weights to use instead of the random reference configuration."""
        import torch

        self.args, self.torch = args, torch
        self.transformer = transformer
        self.device = torch.device(args.device)
        self.started = time.perf_counter()
        self.results: dict = {"environment": self._environment(), "sections": {}, "skipped": {}}
        self.batches = self._batches()
        torch.manual_seed(0)
        self.fp32 = self._model(torch.float32)
        self.reference = {b: self._embed(self.fp32, b) for b in BATCH_SIZES}

    # --- plumbing -------------------------------------------------------------------------------------
    def _environment(self) -> dict:
        from runtime.host import package_versions

        torch = self.torch
        env = {
            **package_versions(("torch", "transformers")),
            "device": self.args.device,
            "cpu_threads": torch.get_num_threads(),
            "weights": "random (seed 0), MPNet-base reference configuration",
            "config": TINY_CONFIG if self.args.tiny else REFERENCE_CONFIG,
        }
        if self.transformer is not None:
            env["weights"], env["config"] = "trained (the artifact's fp32 weights)", self.transformer.config.to_dict()
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(0)
            env.update(
                gpu=torch.cuda.get_device_name(0),
                capability=f"{props.major}.{props.minor}",
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                cuda=torch.version.cuda,
                multiprocessors=props.multi_processor_count,
            )
        return env

    def _batches(self) -> dict:
        from build_artifacts.corpus import calibration_sentences, english_sentences
        from runtime.tokenization import TextTokenizer

        tokenizer = TextTokenizer(Path(self.args.tokenizer), max_length=self.args.max_tokens)
        texts = list(english_sentences()) + list(calibration_sentences())
        out = {}
        for size in BATCH_SIZES:
            chosen = [texts[i % len(texts)] for i in range(size)] if size > 1 else [texts[3]]
            encoded = tokenizer.encode(chosen)
            out[size] = (encoded.input_ids, encoded.attention_mask)
        self.results["environment"]["inputs"] = {f"b{s}": list(out[s][0].shape) for s in BATCH_SIZES}
        return out

    def _model(self, dtype):
        if self.transformer is not None:
            import copy

            return copy.deepcopy(self.transformer).to(self.device, dtype).eval()
        from transformers import MPNetConfig, MPNetModel

        config = MPNetConfig(**(TINY_CONFIG if self.args.tiny else REFERENCE_CONFIG))
        config._attn_implementation = "eager"  # MPNet has no SDPA path in transformers
        self.torch.manual_seed(0)
        return MPNetModel(config).to(self.device, dtype).eval()

    def _inputs(self, size: int, device=None):
        ids, mask = self.batches[size]
        device = device or self.device
        return self.torch.from_numpy(ids).to(device), self.torch.from_numpy(mask).to(device)

    def _forward(self, model, ids, mask, autocast_dtype=None):
        torch = self.torch
        with (
            torch.inference_mode(),
            torch.autocast(ids.device.type, dtype=autocast_dtype or torch.float16, enabled=autocast_dtype is not None),
        ):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    def _embed(self, model, size: int, autocast_dtype=None) -> np.ndarray:
        ids, mask = self._inputs(size, next(model.parameters()).device)
        return self._forward(model, ids, mask, autocast_dtype).cpu().numpy()

    def _sync(self, device=None):
        if (device or self.device).type == "cuda":
            self.torch.cuda.synchronize()

    def _time(self, call, runs: int, warmup: int = 3, device=None) -> dict:
        timing = time_calls(call, runs, warmup, sync=lambda: self._sync(device))
        return {"median_ms": round(timing.median_ms, 3), "min_ms": round(timing.min_ms, 3), "runs": timing.runs}

    def _runs(self, size: int) -> int:
        return self.args.runs if size < 128 else max(5, self.args.runs // 2)

    @staticmethod
    def _fidelity(actual: np.ndarray, expected: np.ndarray) -> dict:
        report = parity_report(actual, expected)
        return {"min_cosine": report["min_cosine"], "mean_cosine": report["mean_cosine"]}

    def run_section(self, name: str, body) -> None:
        elapsed = time.perf_counter() - self.started
        if elapsed > self.args.budget_s:
            self.results["skipped"][name] = f"time budget: {elapsed:.0f} s spent of --budget-s {self.args.budget_s}"
            print(f"[{name}] skipped: {self.results['skipped'][name]}", flush=True)
            return
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            self.results["sections"][name] = body()
        except Exception as exc:  # one failing section must not lose the others' figures
            self.results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", flush=True)
        self.write()

    def write(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (out / "results.md").write_text(render_markdown(self.results))

    # --- sections -------------------------------------------------------------------------------------
    def placement(self) -> dict:
        torch = self.torch
        rows = []
        cpu_model = self._model(torch.float32).to("cpu") if self.device.type != "cpu" else self.fp32
        cpu = torch.device("cpu")
        for size in BATCH_SIZES:
            ids, mask = self._inputs(size, cpu)
            cpu_runs = {1: 10, 32: 3}.get(size, 2)  # the CPU side is slow at batch 128; a few runs suffice
            row = {
                "batch": size,
                "cpu": self._time(lambda m=cpu_model, i=ids, k=mask: self._forward(m, i, k), cpu_runs, 1, cpu),
            }
            if self.device.type == "cuda":
                gids, gmask = self._inputs(size)
                row["gpu"] = self._time(lambda: self._forward(self.fp32, gids, gmask), self._runs(size))
                row["gpu_vs_cpu"] = round(row["cpu"]["median_ms"] / row["gpu"]["median_ms"], 2)
                row["fidelity_gpu_vs_cpu"] = self._fidelity(self.reference[size], self._embed(cpu_model, size))
            rows.append(row)
        del cpu_model
        return {"what": "fp32 eager, inference_mode; CPU uses all its cores", "rows": rows}

    def copy(self) -> dict:
        torch = self.torch
        if self.device.type != "cuda":
            return {"skipped": "pinned memory needs CUDA"}
        rows = []
        for size in BATCH_SIZES:
            ids, mask = (torch.from_numpy(a) for a in self.batches[size])
            pinned_ids, pinned_mask = ids.pin_memory(), mask.pin_memory()
            rows.append(
                {
                    "batch": size,
                    "bytes": int(ids.numel() * ids.element_size() * 2),
                    "pageable": self._time(lambda: (ids.to(self.device), mask.to(self.device)), 50),
                    "pinned_non_blocking": self._time(
                        lambda: (
                            pinned_ids.to(self.device, non_blocking=True),
                            pinned_mask.to(self.device, non_blocking=True),
                        ),
                        50,
                    ),
                }
            )
        big = torch.randint(0, 30000, (128, 384), dtype=torch.int64)  # a full-length batch, for scale
        rows.append(
            {
                "batch": "128x384 (max length)",
                "bytes": int(big.numel() * 8 * 2),
                "pageable": self._time(lambda: (big.to(self.device), big.to(self.device)), 50),
                "pinned_non_blocking": self._time(
                    lambda p=big.pin_memory(): (  # noqa: B008 - pinned once
                        p.to(self.device, non_blocking=True),
                        p.to(self.device, non_blocking=True),
                    ),
                    50,
                ),
            }
        )
        return {"what": "input_ids + attention_mask (int64) host to device, synchronized", "rows": rows}

    def precision(self) -> dict:
        torch = self.torch
        variants = []
        tf32_before = torch.backends.cuda.matmul.allow_tf32
        fp16, bf16 = self._model(torch.float16), self._model(torch.bfloat16)
        if self.device.type == "cpu":
            fp16 = None  # fp16 matmuls on CPU are not a lab path
        candidates = [
            ("fp32", self.fp32, None, False),
            ("fp32_tf32", self.fp32, None, True),
            ("fp16", fp16, None, False),
            ("bf16", bf16, None, False),
            ("autocast_fp16", self.fp32, torch.float16, False),
            ("autocast_bf16", self.fp32, torch.bfloat16, False),
        ]
        for name, model, autocast_dtype, tf32 in candidates:
            if model is None or (tf32 and self.device.type != "cuda"):
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            row = {"variant": name}
            for size in BATCH_SIZES:
                ids, mask = self._inputs(size)
                row[f"b{size}"] = self._time(lambda: self._forward(model, ids, mask, autocast_dtype), self._runs(size))
                row[f"b{size}_fidelity"] = self._fidelity(
                    self._embed(model, size, autocast_dtype), self.reference[size]
                )
            variants.append(row)
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
        self.fp16 = fp16 if fp16 is not None else bf16
        return {
            "what": "eager, inference_mode; fidelity = cosine vs fp32 on the same device, same batch",
            "tf32_default": tf32_before,
            "rows": variants,
        }

    def compile(self) -> dict:
        import torch._dynamo
        from torch._dynamo.utils import counters

        torch = self.torch
        base = getattr(self, "fp16", None) or (self._model(torch.float16) if self.device.type == "cuda" else self.fp32)
        rows = []
        for mode in self.args.compile_modes.split(","):
            if time.perf_counter() - self.started > self.args.budget_s:
                rows.append({"mode": mode, "skipped": f"time budget (--budget-s {self.args.budget_s})"})
                continue
            torch._dynamo.reset()
            counters.clear()
            compiled = torch.compile(base, mode=mode)
            row = {"mode": mode, "dtype": str(next(base.parameters()).dtype).replace("torch.", ""), "sizes": []}
            try:
                for size in BATCH_SIZES:  # the size changes twice: 1 -> 32 -> 128
                    if time.perf_counter() - self.started > self.args.budget_s:
                        row["sizes_skipped"] = f"batch {size} on: time budget (--budget-s {self.args.budget_s})"
                        break
                    ids, mask = self._inputs(size)
                    graphs_before = dynamo_graph_count()
                    t0 = time.perf_counter()
                    first = self._forward(compiled, ids, mask)
                    self._sync()
                    first_ms = (time.perf_counter() - t0) * 1000.0
                    timing = self._time(lambda: self._forward(compiled, ids, mask), self._runs(size))
                    row["sizes"].append(
                        {
                            "batch": size,
                            "first_call_ms": round(first_ms, 1),
                            "graphs_compiled": dynamo_graph_count() - graphs_before,
                            "steady": timing,
                            "fidelity_vs_fp32": self._fidelity(first.float().cpu().numpy(), self.reference[size]),
                        }
                    )
                    self.write()
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            row["unique_graphs"] = dynamo_graph_count()
            rows.append(row)
            self.results["sections"]["compile"] = {"rows": rows}
        eager = {}
        for size in BATCH_SIZES:
            ids, mask = self._inputs(size)
            eager[f"b{size}"] = self._time(lambda: self._forward(base, ids, mask), self._runs(size))["median_ms"]
        return {
            "what": "torch.compile(model, mode=...) with default dynamic=None: the first size change "
            "recompiles with dynamic shapes",
            "eager_same_dtype_ms": eager,
            "rows": rows,
        }


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# GPU lab (Ex4, Ex5) on {env.get('gpu', env['device'])}",
        "",
        f"Model: {env['weights']}. torch {env['torch']}, CUDA {env.get('cuda')}, inputs "
        f"{env.get('inputs')} (batch x tokens, real sentences, real MPNet tokenizer). "
        "Times are medians in ms.",
        "",
    ]
    sections = results["sections"]
    if "placement" in sections and "rows" in sections["placement"]:
        rows = []
        for r in sections["placement"]["rows"]:
            gpu = r.get("gpu", {}).get("median_ms")
            rows.append(
                [
                    r["batch"],
                    f"{r['cpu']['median_ms']:.2f}",
                    gpu if gpu is not None else "-",
                    r.get("gpu_vs_cpu", "-"),
                    r.get("fidelity_gpu_vs_cpu", {}).get("min_cosine", "-"),
                ]
            )
        lines += [
            "## Placement: fp32 eager, CPU vs GPU",
            "",
            table(["batch", "CPU ms", "GPU ms", "GPU speedup", "min cos GPU vs CPU"], rows),
            "",
        ]
    if "copy" in sections and "rows" in sections["copy"]:
        rows = [
            [
                r["batch"],
                r["bytes"],
                f"{r['pageable']['median_ms']:.4f}",
                f"{r['pinned_non_blocking']['median_ms']:.4f}",
            ]
            for r in sections["copy"]["rows"]
        ]
        lines += [
            "## Host-to-device copy of a tokenized batch",
            "",
            table(["batch", "bytes", "pageable ms", "pinned non_blocking ms"], rows),
            "",
        ]
    if "precision" in sections and "rows" in sections["precision"]:
        measured = sections["precision"]["rows"]
        base = measured[0] if measured else None
        rows = [
            [
                r["variant"],
                f"{r['b1']['median_ms']:.2f}",
                f"{r['b32']['median_ms']:.2f}",
                f"{r['b128']['median_ms']:.2f}",
                f"{base['b32']['median_ms'] / r['b32']['median_ms']:.2f}",
                f"{base['b128']['median_ms'] / r['b128']['median_ms']:.2f}",
                f"{r['b128_fidelity']['min_cosine']:.5f}",
                f"{r['b128_fidelity']['mean_cosine']:.5f}",
            ]
            for r in measured
        ]
        lines += [
            "## Precision (eager): time and fidelity vs fp32",
            "",
            table(
                [
                    "variant",
                    "b1 ms",
                    "b32 ms",
                    "b128 ms",
                    "b32 x vs fp32",
                    "b128 x vs fp32",
                    "min cos (b128)",
                    "mean cos (b128)",
                ],
                rows,
            ),
            "",
        ]
    if "compile" in sections and "rows" in sections["compile"]:
        eager = sections["compile"].get("eager_same_dtype_ms", {})
        rows = []
        for r in sections["compile"]["rows"]:
            if "skipped" in r or not r.get("sizes"):
                rows.append([r["mode"], "-", r.get("skipped") or r.get("error", ""), "", "", ""])
                continue
            for s in r["sizes"]:
                rows.append(
                    [
                        f"{r['mode']} ({r['dtype']})",
                        s["batch"],
                        f"{s['first_call_ms']:.0f}",
                        s["graphs_compiled"],
                        f"{s['steady']['median_ms']:.2f}",
                        f"{s['fidelity_vs_fp32']['min_cosine']:.5f}",
                    ]
                )
            rows += [[r["mode"], key, r[key][:200], "", "", ""] for key in ("error", "sizes_skipped") if r.get(key)]
        lines += [
            "## torch.compile modes (sizes in order b1 -> b32 -> b128)",
            "",
            f"Eager, same dtype: {eager}",
            "",
            table(
                ["mode", "batch", "first call ms (compile)", "graphs compiled", "steady ms", "min cos vs fp32"], rows
            ),
            "",
        ]
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- {name}: skipped ({why})")
    for name, body in sections.items():
        if isinstance(body, dict) and "error" in body:
            lines.append(f"- {name}: error: {body['error']}")
        if isinstance(body, dict) and "skipped" in body:
            lines.append(f"- {name}: skipped ({body['skipped']})")
    lines.append(f"\nElapsed: {results.get('elapsed_s')} s.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json of the MPNet tokenizer")
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--runs", type=int, default=30, help="timed runs (half, at least 5, for batch 128)")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="2-layer width-64 MPNet: for testing the script itself")
    parser.add_argument("--sections", default="placement,copy,precision,compile")
    parser.add_argument("--compile-modes", default=",".join(COMPILE_MODES), help="comma list, run in this order")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here: run with --device cpu to test the script", file=sys.stderr)
        return 2
    lab = Lab(args)
    for name in args.sections.split(","):
        lab.run_section(name, getattr(lab, name))
    lab.write()
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
