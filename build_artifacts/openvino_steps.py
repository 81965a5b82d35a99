"""OpenVINO int8 IR from the ONNX export: every linear layer's weight as per-output-channel symmetric 8-bit.

The weights become `Constant(i8) -> Convert(f32) -> Multiply(scale)`, the decompression pattern OpenVINO's
CPU plugin folds into its fully connected kernels (the one NNCF's INT8_SYM weight compression writes). With
`DYNAMIC_QUANTIZATION_GROUP_SIZE` set (runtime.openvino_runner), the plugin quantizes each token's activations
in groups of channels at run time and multiplies in int8; without it the weights are only stored in 8 bits.
Data-free: no calibration texts are needed, so none of the fidelity corpora can leak into the recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.openvino_runner import IR_FILE, PER_TOKEN_GROUP

#: a weight's levels: symmetric, -127..127 (no -128: the scale maps the largest |w| of a channel to 127)
WEIGHT_LEVELS = 127


def quantize_per_channel(weight: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale broadcastable to it): scale = max |w| over the other axis / 127."""
    scale = np.abs(weight).max(axis=1 - channel_axis, keepdims=True).astype(np.float32) / WEIGHT_LEVELS
    scale[scale == 0] = 1.0
    return np.clip(np.rint(weight / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8), scale


def build_int8_ir(onnx_path: Path, out_dir: Path) -> dict:
    """Write out_dir/model.xml + .bin; returns what was done, for the manifest."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(onnx_path))
    compressed, kept, worst_error = 0, 0, 0.0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        source = node.input_value(1).get_node()
        weight = source.get_data() if source.get_type_name() == "Constant" else None
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
            kept += 1  # attention's activation x activation products stay as they are
            continue
        # MatMul(x, W): W is [in, out] unless transposed; the scale is per output channel
        out_axis = 0 if node.get_attributes()["transpose_b"] else 1
        q, scale = quantize_per_channel(weight, out_axis)
        worst_error = max(worst_error, float(np.abs(q * scale - weight).max() / np.abs(weight).max()))
        decompressed = ops.multiply(ops.convert(ops.constant(q, dtype=ov.Type.i8), ov.Type.f32), ops.constant(scale))
        node.input(1).replace_source_output(decompressed.output(0))
        compressed += 1
    if not compressed:
        raise ValueError(f"{onnx_path.name}: no MatMul with a constant fp32 weight to quantize")
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_dir / IR_FILE), compress_to_fp16=False)
    return {
        "weights": "int8 symmetric, per output channel",
        "activations": f"int8 per token in groups of {PER_TOKEN_GROUP} channels, at run time",
        "linear_layers_int8": compressed,
        "matmuls_kept": kept,
        "worst_weight_error_of_max": round(worst_error, 5),
        "source_graph": onnx_path.name,
    }
