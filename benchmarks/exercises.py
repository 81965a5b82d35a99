"""The lab's measurements. Each function times its variants on every input case and records them."""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .timing import Timing, summarize, time_calls

GPU_VARIANTS = [
    ("ex4", "gpu_fp32"), ("ex4", "gpu_fp16"), ("ex4", "gpu_bf16"), ("ex4", "gpu_autocast_fp16"),
    ("ex4", "h2d_copy_pageable"), ("ex4", "h2d_copy_pinned"),
    ("ex5", "compile_default_gpu"), ("ex5", "compile_max-autotune"), ("ex5", "compile_max-autotune-no-cudagraphs"),
]


@dataclass
class Context:
    args: argparse.Namespace
    artifacts: Path
    manifest: dict
    pooling: object
    model_dir: Path
    cases: list
    recorder: object
    extras: dict
    fp32: object = None


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

    from build_artifacts import torch_runtime

    ctx.fp32 = torch_runtime.load_fp32(ctx.artifacts / "fp32", ctx.pooling)
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
        ctx.recorder.add("ex1", "no_optimizations", case, _timed(ctx, plain), _numpy(plain()),
                         note="train() mode (dropout active), autograd on")
        model.eval()
        for variant, fn in (("eval", plain), ("eval_no_grad", no_grad), ("eval_inference_mode", inference_mode)):
            ctx.recorder.add("ex1", variant, case, _timed(ctx, fn), _numpy(fn()))
    model.eval()


def dynamo_graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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
        ctx.recorder.add("ex2", "compile_default_first_call", case, summarize([first_ms]), _numpy(first),
                         note=f"compile + first call; {new_graphs} graph(s) compiled at this size")
        ctx.recorder.add("ex2", "compile_default", case, _timed(ctx, call), _numpy(call()))
    ctx.extras["compile_cpu"] = compile_log


def ex3_int8(ctx: Context) -> None:
    import torch

    from build_artifacts import torch_runtime

    from .run import temp_bytes_of_state_dict

    print("Ex3: dynamic int8 quantization (torch.ao quantize_dynamic)", flush=True)
    quantized = torch_runtime.load_quantized(ctx.artifacts / "torch_int8", ctx.pooling)
    example = next((name, m) for name, m in quantized.named_modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__)
    ctx.extras["int8_module_example"] = {"name": example[0], "printed": repr(example[1]),
                                         "class": f"{type(example[1]).__module__}.{type(example[1]).__name__}"}
    ctx.extras["state_dict_bytes"] = {"fp32": temp_bytes_of_state_dict(ctx.fp32),
                                      "int8": temp_bytes_of_state_dict(quantized)}
    ctx.extras["state_dict_bytes"]["ratio"] = round(ctx.extras["state_dict_bytes"]["fp32"] / ctx.extras["state_dict_bytes"]["int8"], 2)
    print(f"  printed module {example[0]}: {example[1]!r}")
    print(f"  state_dict bytes: fp32 {ctx.extras['state_dict_bytes']['fp32']:,}, int8 {ctx.extras['state_dict_bytes']['int8']:,}")
    for case in ctx.cases:
        ids, mask = _tensors(case)

        def call():
            with torch.inference_mode():
                return quantized(ids, mask)

        ctx.recorder.add("ex3", "int8_dynamic", case, _timed(ctx, call), _numpy(call()))
    smooth_dir = ctx.artifacts / "torch_int8_smooth"
    if smooth_dir.is_dir():  # the faithful int8 (SmoothQuant); older artifact folders lack it
        from build_artifacts import torch_smooth

        smoothed = torch_smooth.load(smooth_dir, ctx.pooling)
        for case in ctx.cases:
            ids, mask = _tensors(case)

            def call_smooth(ids=ids, mask=mask):
                with torch.inference_mode():
                    return smoothed(ids, mask)

            ctx.recorder.add("ex3", "int8_smoothquant", case, _timed(ctx, call_smooth), _numpy(call_smooth()))


def ex6_onnxruntime(ctx: Context) -> None:
    from build_artifacts.onnx_runner import OnnxSentenceRunner

    print("Ex6: ONNX Runtime online vs offline optimization, fused attention, int8 ONNX", flush=True)
    onnx_dir = ctx.artifacts / "onnx"
    sessions = {
        "onnx_online": (onnx_dir / "model.onnx", True),
        "onnx_offline": (onnx_dir / "model.optimized.onnx", False),
        "onnx_fused_attention": (onnx_dir / "model.fused.onnx", True),
        "onnx_int8": (onnx_dir / "model.int8.onnx", True),
        "onnx_int8_smooth": (onnx_dir / "model.int8_smooth.onnx", True),
    }
    sessions = {k: v for k, v in sessions.items() if v[0].is_file()}  # older artifact folders lack some
    short = ctx.cases[0]
    cold = {}
    for variant, (path, optimize) in sessions.items():
        # Cold start: session creation (with or without graph optimization) plus the first inference.
        samples = []
        for _ in range(min(3, ctx.args.runs)):
            t0 = time.perf_counter()
            runner = OnnxSentenceRunner(path, threads=ctx.args.threads, optimize=optimize)
            first = runner.run(short.input_ids, short.attention_mask)
            samples.append((time.perf_counter() - t0) * 1000.0)
        cold[variant] = round(float(np.median(samples)), 1)
        ctx.recorder.add("ex6", f"{variant}_cold_start", short, summarize(samples), first,
                         note="session creation + first inference")
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
    import torch

    print(f"Ex4/Ex5 on {torch.cuda.get_device_name(0)}", flush=True)
    device = torch.device("cuda")
    sync = torch.cuda.synchronize
    major, minor = torch.cuda.get_device_capability(0)
    ctx.extras["tensor_cores"] = {
        "device": torch.cuda.get_device_name(0),
        "capability": f"{major}.{minor}",
        "fp16_tensor_cores": major >= 7,
        "bf16_tensor_cores": major >= 8,
        "tf32_matmul_allowed": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    fp32 = copy.deepcopy(ctx.fp32).to(device).eval()
    fp16 = copy.deepcopy(fp32).half()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    add = ctx.recorder.add
    for case in ctx.cases:
        ids, mask = _tensors(case, device)

        def run(model, autocast=False):
            def call():
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                    return model(ids, mask)
            return call

        for variant, call in (("gpu_fp32", run(fp32)), ("gpu_fp16", run(fp16)), ("gpu_bf16", run(bf16)),
                              ("gpu_autocast_fp16", run(fp32, autocast=True))):
            add("ex4", variant, case, _timed(ctx, call, sync), _numpy(call()), device="cuda")
        host_ids, host_mask = _tensors(case)
        pinned_ids, pinned_mask = host_ids.pin_memory(), host_mask.pin_memory()
        add("ex4", "h2d_copy_pageable", case,
            _timed(ctx, lambda: (host_ids.to(device), host_mask.to(device)), sync), None, device="cuda")
        add("ex4", "h2d_copy_pinned", case,
            _timed(ctx, lambda: (pinned_ids.to(device, non_blocking=True), pinned_mask.to(device, non_blocking=True)), sync),
            None, device="cuda")
    compile_log = []
    for mode, variant in ((None, "compile_default_gpu"), ("max-autotune", "compile_max-autotune"),
                          ("max-autotune-no-cudagraphs", "compile_max-autotune-no-cudagraphs")):
        torch._dynamo.reset()
        compiled = torch.compile(fp32, mode=mode) if mode else torch.compile(fp32)
        for case in ctx.cases:
            ids, mask = _tensors(case, device)

            def call(compiled=compiled, ids=ids, mask=mask):
                with torch.no_grad():
                    return compiled(ids, mask)

            graphs_before = dynamo_graph_count()
            t0 = time.perf_counter()
            first = call()
            sync()
            first_ms = (time.perf_counter() - t0) * 1000.0
            compile_log.append({"mode": mode or "default", "input": case.name, "first_call_ms": round(first_ms, 1),
                                "graphs_compiled": dynamo_graph_count() - graphs_before})
            add("ex5", variant, case, _timed(ctx, call, sync), _numpy(first), device="cuda",
                note=f"first call {first_ms:.0f} ms incl. compilation")
    ctx.extras["compile_gpu"] = compile_log
