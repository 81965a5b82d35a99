"""Faithful dynamic int8 for ONNX graphs whose linear-layer inputs carry outlier channels (MPNet-base).

Per-tensor dynamic activation scales cannot hold MPNet's FFN inputs, whose few outlier channels reach
~170x (LayerNorm output) and ~740x (GELU output) the mean magnitude. SmoothQuant (Xiao et al., 2023)
migrates that range into the weights, which are quantized per output channel anyway:

    X W = (X / s) (s W),   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

`s` comes from per-channel activation maxima on calibration sentences (never the parity set). The
1/s scaling is an explicit Mul in front of each MatMul, exact in fp32. The result is then quantized with
onnxruntime's dynamic quantization; U8S8 with 7-bit weights (reduce_range) avoids the int16 saturation
of AVX2's vpmaddubsw on CPUs without VNNI.

The FFN down-projections (input: a GELU output) are not smoothed: their range sits in a handful of
channels (the top channel reaches 10-70x the median channel's maximum), and moving it into the weights
broke parity. Instead those few channels are split off (LLM.int8()-style, but with a static channel set
chosen on calibration sentences): the layer computes

    X W = (X * keep) W_int8 + X[:, outliers] W[outliers, :]

so the per-tensor activation scale of the int8 product no longer has to cover the outliers, and the
outlier product (16 of 3072 input channels) stays fp32.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .recipe import DEFAULT_RECIPE


def weight_matmuls(model) -> list[tuple[object, str]]:
    """MatMul nodes whose second input is a 2-D initializer (the nn.Linear layers)."""
    initializers = {init.name: init for init in model.graph.initializer}
    return [
        (node, node.input[1])
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2
    ]


def collect_activation_max(model_path: Path, batches, threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every linear-layer input, over the real (unpadded) tokens of `batches`."""
    import onnx
    import onnxruntime as ort

    from runtime.onnx_runner import session_options

    model = onnx.load(str(model_path))
    names = sorted({node.input[0] for node, _ in weight_matmuls(model)})
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(
        model.SerializeToString(),
        sess_options=session_options(threads, optimize=False),
        providers=["CPUExecutionProvider"],
    )
    maxima: dict[str, np.ndarray] = {}
    for input_ids, attention_mask in batches:
        outputs = session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
        real = attention_mask.astype(bool)
        for name, value in zip(names, outputs, strict=True):
            tokens = value[real] if value.ndim == 3 else value.reshape(-1, value.shape[-1])
            channel_max = np.abs(tokens).max(axis=0)
            maxima[name] = np.maximum(maxima.get(name, channel_max), channel_max)
    return maxima


def smooth_model(model, activation_max: dict[str, np.ndarray], alpha: float = 0.5, skip: tuple[str, ...] = ()):
    """Insert Mul(x, 1/s) before each linear MatMul and scale its weight rows by s (in place).

    `skip`: regexes of MatMul node names to leave untouched."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    new_nodes = []
    for node, weight_name in weight_matmuls(model):
        if any(re.search(pattern, node.name) for pattern in skip):
            continue
        weight = numpy_helper.to_array(initializers[weight_name]).astype(np.float32)  # [K, N]
        act = np.maximum(activation_max[node.input[0]].astype(np.float32), 1e-5)
        w_max = np.maximum(np.abs(weight).max(axis=1), 1e-5)
        scale = np.clip(act**alpha / w_max ** (1.0 - alpha), 1e-4, 1e4).astype(np.float32)
        smoothed = numpy_helper.from_array(weight * scale[:, None], weight_name)
        initializers[weight_name].CopyFrom(smoothed)
        inv_name = f"{weight_name}_smooth_inv_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv_name))
        scaled_input = f"{node.name}_smoothed_input"
        new_nodes.append(
            (node, helper.make_node("Mul", [node.input[0], inv_name], [scaled_input], name=f"{node.name}_smooth"))
        )
        node.input[0] = scaled_input
    # Keep the graph topologically sorted: each Mul goes right before its MatMul.
    for matmul, mul in new_nodes:
        position = list(model.graph.node).index(matmul)
        model.graph.node.insert(position, mul)
    return model


def split_outlier_channels(
    model, activation_max: dict[str, np.ndarray], patterns: tuple[str, ...], channels: int, skip: tuple[str, ...] = ()
) -> list[str]:
    """For MatMuls matching `patterns`: zero the `channels` largest input channels on the main path and
    add them back through a small fp32 MatMul. Returns the names of those fp32 MatMuls (in place)."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    side_matmuls = []
    for node, weight_name in weight_matmuls(model):
        if not any(re.search(p, node.name) for p in patterns) or any(re.search(p, node.name) for p in skip):
            continue
        source, name = node.input[0], node.name
        outliers = np.argsort(activation_max[source])[::-1][:channels].astype(np.int64)
        keep = np.ones(activation_max[source].shape, dtype=np.float32)
        keep[outliers] = 0.0
        weight = numpy_helper.to_array(initializers[weight_name])
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(keep, f"{name}_keep"),
                numpy_helper.from_array(outliers, f"{name}_outlier_channels"),
                numpy_helper.from_array(
                    np.ascontiguousarray(weight[outliers]).astype(np.float32), f"{name}_outlier_weight"
                ),
            ]
        )
        result, main_result = node.output[0], f"{name}_main_output"
        before = [
            helper.make_node("Mul", [source, f"{name}_keep"], [f"{name}_inliers"], name=f"{name}_keep_inliers"),
            helper.make_node(
                "Gather",
                [source, f"{name}_outlier_channels"],
                [f"{name}_outliers"],
                axis=-1,
                name=f"{name}_gather_outliers",
            ),
            helper.make_node(
                "MatMul",
                [f"{name}_outliers", f"{name}_outlier_weight"],
                [f"{name}_outlier_output"],
                name=f"{name}_outlier_matmul",
            ),
        ]
        after = helper.make_node("Add", [main_result, f"{name}_outlier_output"], [result], name=f"{name}_add_outliers")
        node.input[0], node.output[0] = f"{name}_inliers", main_result
        position = list(model.graph.node).index(node)
        for offset, extra in enumerate(before):
            model.graph.node.insert(position + offset, extra)
        model.graph.node.insert(position + len(before) + 1, after)
        side_matmuls.append(f"{name}_outlier_matmul")
    return side_matmuls


# FFN down-projections: their input is a GELU output whose range sits in a few channels. The recipe's
# regexes over node names of BERT/MPNet/RoBERTa exports (BERT's attention projection
# "layer.N/attention/output/dense" is not matched).
SMOOTH_ALPHA = DEFAULT_RECIPE.onnx_smooth_alpha
FFN_OUTPUT_PATTERNS = DEFAULT_RECIPE.onnx_ffn_output_patterns
OUTLIER_CHANNELS = DEFAULT_RECIPE.onnx_outlier_channels


def build_smooth_int8(
    model_path: Path,
    out_path: Path,
    calibration_batches,
    threads: int | None = None,
    alpha: float = SMOOTH_ALPHA,
    split_patterns: tuple[str, ...] = FFN_OUTPUT_PATTERNS,
    outlier_channels: int = OUTLIER_CHANNELS,
    activation_max: dict[str, np.ndarray] | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> dict:
    """SmoothQuant + outlier split + dynamic int8 (U8S8, 7-bit per-channel weights); returns what was done.
    `activation_max` (from collect_activation_max) spares the calibration pass when several recipes are tried.
    `keep_fp32`: regexes of linear MatMul node names left fp32 (neither split, smoothed nor quantized)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if activation_max is None:
        activation_max = collect_activation_max(model_path, calibration_batches, threads)
    model = onnx.load(str(model_path))
    linears = [node.name for node, _ in weight_matmuls(model)]
    fp32_matmuls = [name for name in linears if any(re.search(pattern, name) for pattern in keep_fp32)]
    side_matmuls = split_outlier_channels(model, activation_max, split_patterns, outlier_channels, skip=keep_fp32)
    smooth_model(model, activation_max, alpha=alpha, skip=split_patterns + keep_fp32 + (r"_outlier_matmul$",))
    smoothed_path = out_path.with_suffix(".smoothed.tmp.onnx")
    try:
        onnx.save(model, str(smoothed_path))
        quantize_dynamic(
            str(smoothed_path),
            str(out_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            nodes_to_exclude=side_matmuls + fp32_matmuls,
            # contrib ops (fused attention) are unknown to ONNX shape inference
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        smoothed_path.unlink(missing_ok=True)
    return {
        "alpha": alpha,
        "linear_layers": len(linears),
        "smoothed": len(linears) - len(side_matmuls) - len(fp32_matmuls),
        "outlier_split_layers": len(side_matmuls),
        "outlier_channels": outlier_channels,
        "fp32_layers": len(fp32_matmuls),
        "weights": "int8 per-channel, 7-bit range (reduce_range)",
        "activations": "uint8 dynamic per-tensor",
    }
