"""How fast can int8 be here? One linear layer of MPNet-base, fp32 vs ONNX Runtime dynamic int8.

    python -m benchmarks.gemm_ceiling [--threads 2] [--tokens 864,14]

Times a single MatMul (x[tokens, K] @ W[K, N]) for the three weight shapes of MPNet-base (768x768,
768x3072, 3072x768), as the fp32 graph runs it and as the int8 recipe runs it (DynamicQuantizeMatMul,
U8S8, 7-bit per-channel weights). The ratio bounds what any int8 recipe can gain on this CPU: a whole
model cannot be faster than its GEMMs allow. Tokens 864 = the benchmark's b32_mixed batch (32 x 27).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from .timing import time_calls

SHAPES = {"qkv/o 768x768": (768, 768), "FFN in 768x3072": (768, 3072), "FFN out 3072x768": (3072, 768)}


def _graph(path: Path, k: int, n: int, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).normal(0, 0.02, (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear/MatMul")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _median_ms(session, x: np.ndarray, runs: int) -> float:
    return time_calls(lambda: session.run(None, {"x": x}), runs, warmup=3).median_ms


def main(argv=None) -> int:
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" hint on the root logger
    from runtime.onnx_runner import session_options

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gemm_ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", default="864,14", help="comma list of token counts (rows of x)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    options = session_options(args.threads, optimize=True)
    print(
        f"{'layer':<18} {'tokens':>6} {'fp32 ms':>9} {'int8 ms':>9} {'int8 x':>7} {'fp32 GFLOP/s':>13} "
        f"{'int8 GOP/s':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, (k, n) in SHAPES.items():
            fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            _graph(fp32_path, k, n)
            quantize_dynamic(
                str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
            )
            fp32 = ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
            int8 = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
            for tokens in (int(t) for t in args.tokens.split(",")):
                x = np.random.default_rng(1).normal(0, 1, (tokens, k)).astype(np.float32)
                runs = args.runs if tokens < 100 else max(10, args.runs // 3)
                a, b = _median_ms(fp32, x, runs), _median_ms(int8, x, runs)
                flops = 2.0 * tokens * k * n
                print(
                    f"{label:<18} {tokens:>6} {a:9.3f} {b:9.3f} {a / b:7.2f} {flops / a / 1e6:13.1f} "
                    f"{flops / b / 1e6:11.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
