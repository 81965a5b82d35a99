"""The lab's measurements. Each function times its variants on every input case and records them.

Artifacts load through the manifest and the runtime's loaders; rows carry the manifest's variant names
(torch_int8, onnx_optimized, ...) where they time a built artifact.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import torch_encoder
from runtime.manifest import Manifest
from runtime.variants import BY_NAME, VARIANTS

from .inputs import InputCase
from .recorder import Recorder
from .timing import Timing, dynamo_graph_count, summarize, time_calls

# What the GPU lab measures (benchmarks.gpu_lab), recorded as skipped rows where CUDA is absent.
GPU_VARIANTS = [
    ("ex4", "gpu_fp32"),
    ("ex4", "gpu_fp16"),
    ("ex4", "gpu_bf16"),
    ("ex4", "gpu_autocast_fp16"),
    ("ex4", "h2d_copy_pageable"),
    ("ex4", "h2d_copy_pinned"),
    ("ex5", "compile_default_gpu"),
    ("ex5", "compile_max-autotune"),
    ("ex5", "compile_max-autotune-no-cudagraphs"),
]


@dataclass
class Context:
    args: argparse.Namespace
    artifacts: Path
    manifest: Manifest
    cases: list[InputCase]
    recorder: Recorder
    extras: dict
    fp32: object = None

    def torch_variant(self, variant: str):
        return torch_encoder.load_variant(self.artifacts, self.manifest, variant)


#: from the variant table, where the manifest has them: Ex3 the torch rows below fp32 (int8, SmoothQuant
#: int8, bf16), Ex6 the rows that run the ONNX graphs (ONNX Runtime and OpenVINO)
EX3_VARIANTS = tuple(v.name for v in VARIANTS if v.engine == "torch" and v.name != "torch_fp32")
EX6_VARIANTS = tuple(v.name for v in VARIANTS if v.engine in ("onnxruntime", "openvino"))


def planned_measurements(manifest: Manifest, exercises: set[str], cases: int) -> int:
    """How many timed measurements a run makes (the basis of its progress and time estimate)."""
    counts = {
        "ex1": 4 * cases,
        "ex2": 2 * cases,
        "ex3": cases * sum(v in manifest.artifacts for v in EX3_VARIANTS),
        "ex6": (1 + cases) * sum(v in manifest.artifacts for v in EX6_VARIANTS),
    }
    return sum(n for name, n in counts.items() if name in exercises)


def _tensors(case, device="cpu"):
    import torch

    return torch.from_numpy(case.input_ids).to(device), torch.from_numpy(case.attention_mask).to(device)


def _timed(ctx: Context, fn, sync=None) -> Timing:
    return time_calls(fn, ctx.args.runs, ctx.args.warmup, ctx.args.time_budget_s, sync=sync)


def _numpy(out) -> np.ndarray:
    return out.detach().float().cpu().numpy()


def reference_embeddings(ctx: Context) -> None:
    """fp32 eager, eval() + inference_mode(): the fidelity reference for every other variant."""
    import torch

    ctx.fp32 = ctx.torch_variant("torch_fp32")
    for case in ctx.cases:
        ids, mask = _tensors(case)
        with torch.inference_mode():
            ctx.recorder.references[case.name] = _numpy(ctx.fp32(ids, mask))


def ex1_modes(ctx: Context) -> None:
    import torch

    print("Ex1: train mode vs eval() vs no_grad() vs inference_mode()", flush=True)
    model = ctx.fp32
    for case in ctx.cases:
        ids, mask = _tensors(case)

        def plain():
            return model(ids, mask)

        def no_grad():
            with torch.no_grad():
                return model(ids, mask)

        def inference_mode():
            with torch.inference_mode():
                return model(ids, mask)

        # from_pretrained() already calls eval(); train() shows what eval() buys (dropout off).
        model.train()
        torch.manual_seed(0)
        ctx.recorder.add(
            "ex1",
            "no_optimizations",
            case,
            _timed(ctx, plain),
            _numpy(plain()),
            note="train() mode (dropout active), autograd on",
        )
        model.eval()
        for variant, fn in (("eval", plain), ("eval_no_grad", no_grad), ("eval_inference_mode", inference_mode)):
            ctx.recorder.add("ex1", variant, case, _timed(ctx, fn), _numpy(fn()))
    model.eval()


def temp_bytes_of_state_dict(module) -> int:
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.pt"
        torch.save(module.state_dict(), path)
        return path.stat().st_size


def ex2_compile(ctx: Context) -> None:
    import torch

    print("Ex2: torch.compile (default mode; first call includes compilation)", flush=True)
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(ctx.fp32).eval())
    compile_log = []
    for case in ctx.cases:
        ids, mask = _tensors(case)

        def call():
            with torch.no_grad():  # no_grad: inference_mode tensors cannot be saved for compiled backward graphs
                return compiled(ids, mask)

        graphs_before = dynamo_graph_count()
        t0 = time.perf_counter()
        first = call()
        first_ms = (time.perf_counter() - t0) * 1000.0
        new_graphs = dynamo_graph_count() - graphs_before
        compile_log.append({"input": case.name, "first_call_ms": round(first_ms, 1), "graphs_compiled": new_graphs})
        ctx.recorder.add(
            "ex2",
            "compile_default_first_call",
            case,
            summarize([first_ms]),
            _numpy(first),
            note=f"compile + first call; {new_graphs} graph(s) compiled at this size",
        )
        ctx.recorder.add("ex2", "compile_default", case, _timed(ctx, call), _numpy(call()))
    ctx.extras["compile_cpu"] = compile_log


def ex3_int8(ctx: Context) -> None:
    import torch

    print("Ex3: reduced precision torch (dynamic int8, SmoothQuant int8, bf16 weights)", flush=True)
    for variant in EX3_VARIANTS:
        if variant not in ctx.manifest.artifacts:  # older artifact folders lack the SmoothQuant one
            continue
        quantized = ctx.torch_variant(variant)
        if variant == "torch_int8":
            _describe_int8(ctx, quantized)
        for case in ctx.cases:
            ids, mask = _tensors(case)

            def call(model=quantized, ids=ids, mask=mask):
                with torch.inference_mode():
                    return model(ids, mask)

            ctx.recorder.add("ex3", variant, case, _timed(ctx, call), _numpy(call()))


def _describe_int8(ctx: Context, quantized) -> None:
    example = next(
        (name, m)
        for name, m in quantized.named_modules()
        if type(m).__name__ == "Linear" and "quantized" in type(m).__module__
    )
    ctx.extras["int8_module_example"] = {
        "name": example[0],
        "printed": repr(example[1]),
        "class": f"{type(example[1]).__module__}.{type(example[1]).__name__}",
    }
    sizes = {"fp32": temp_bytes_of_state_dict(ctx.fp32), "int8": temp_bytes_of_state_dict(quantized)}
    sizes["ratio"] = round(sizes["fp32"] / sizes["int8"], 2)
    ctx.extras["state_dict_bytes"] = sizes
    print(f"  printed module {example[0]}: {example[1]!r}")
    print(f"  state_dict bytes: fp32 {sizes['fp32']:,}, int8 {sizes['int8']:,}")


def ex6_onnxruntime(ctx: Context) -> None:
    print(
        "Ex6: ONNX Runtime online vs offline optimization, fused attention, int8 ONNX; OpenVINO fp32/bf16", flush=True
    )
    variants = [v for v in EX6_VARIANTS if v in ctx.manifest.artifacts]  # older artifact folders lack some
    short = ctx.cases[0]
    cold = {}
    for variant in variants:
        # Cold start: session creation (with or without graph optimization) plus the first inference.
        samples = []
        for _ in range(min(3, ctx.args.runs)):
            t0 = time.perf_counter()
            runner = BY_NAME[variant].load(ctx.artifacts, ctx.manifest, threads=ctx.args.threads)
            first = runner.run(short.input_ids, short.attention_mask)
            samples.append((time.perf_counter() - t0) * 1000.0)
        cold[variant] = round(float(np.median(samples)), 1)
        row = BY_NAME[variant]
        opened = (
            f"session creation ({'with' if row.optimize_at_load else 'without'} graph optimization)"
            if row.engine == "onnxruntime"
            else "OpenVINO compile_model"
        )
        ctx.recorder.add(
            "ex6", f"{variant}_cold_start", short, summarize(samples), first, note=f"{opened} + first inference"
        )
        for case in ctx.cases:

            def call(runner=runner, case=case):
                return runner.run(case.input_ids, case.attention_mask)

            ctx.recorder.add("ex6", variant, case, _timed(ctx, call), call())
    ctx.extras["onnx_cold_start_ms"] = cold


def gpu_exercises(ctx: Context) -> None:
    import torch

    reason = None
    if ctx.args.device != "cuda":
        reason = "not requested (--device cpu)"
    elif not torch.cuda.is_available():
        reason = "CUDA not available (torch.cuda.is_available() is False)"
    if reason:
        print(f"Ex4/Ex5 (GPU): skipped, {reason}", flush=True)
        for case in ctx.cases:
            for exercise, variant in GPU_VARIANTS:
                ctx.recorder.add(exercise, variant, case, None, device="cuda", skipped=reason)
        return
    _run_gpu(ctx)


def _run_gpu(ctx: Context) -> None:
    """Ex4/Ex5 with CUDA: the GPU lab's sections (one implementation, benchmarks.gpu_lab) on this
    artifact's trained fp32 weights; its results.json/.md go to OUT/gpu and into extras["gpu_lab"]."""
    from . import gpu_lab

    args = gpu_lab.parse_args(
        [
            "--tokenizer",
            str(ctx.artifacts / ctx.manifest.tokenizer.path),
            "--out",
            str(ctx.args.out / "gpu"),
            "--runs",
            str(ctx.args.runs),
            "--max-tokens",
            str(ctx.manifest.model.max_seq_length),
        ]
    )
    lab = gpu_lab.Lab(args, transformer=ctx.fp32.transformer)
    for name in args.sections.split(","):
        lab.run_section(name, getattr(lab, name))
    lab.write()
    ctx.extras["gpu_lab"] = lab.results
