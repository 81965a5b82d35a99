"""PyTorch-side offline steps: save dynamic int8, SmoothQuant calibration and folding, ONNX export.

The loaders that read these files back live in runtime.torch_encoder and runtime.smoothquant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from runtime.smoothquant import RECIPE_FILE, quantize_smoothed, wrap
from runtime.torch_encoder import QUANTIZED_STATE_FILE


def save_quantized(quantized, folder: Path, model_dir: Path) -> None:
    """Store the int8 state_dict (plain tensors, qint8 tensors, dtypes) plus config.json.

    It is loaded with torch.load(weights_only=True), which refuses arbitrary pickled objects.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(quantized.state_dict(), folder / QUANTIZED_STATE_FILE)
    (folder / "config.json").write_text((model_dir / "config.json").read_text())


# SmoothQuant for the PyTorch int8 variant (torch.ao dynamic quantization), as for the ONNX graph.
# torch.ao's dynamic quantization scales activations per tensor, which MPNet-base's outlier channels
# break (min cosine 0.34). Dividing each Linear input channel by s_j = max|X_j|^a / max|W_j|^(1-a) (a
# buffer multiply in front of the Linear) and multiplying the weight rows by s moves that range into
# the weights, quantized per output channel. FFN down-projections (GELU-fed) stay fp32. Measured on
# all-mpnet-base-v2 (parity min / mean cosine): alpha 0.35: 0.975/0.989, 0.5: 0.989/0.996,
# 0.65: 0.996/0.998, 0.8: 0.994/0.997; without smoothing 0.925/0.964.


def smoothable_linears(encoder, keep_fp32: str) -> list[str]:
    import torch

    return [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear) and ".pooler." not in f".{name}" and not re.search(keep_fp32, name)
    ]


def calibrate(encoder, names: list[str], batches) -> dict:
    """Per-channel max |x| of each named Linear's input over the calibration batches."""
    import torch

    maxima: dict[str, torch.Tensor] = {}
    modules = dict(encoder.named_modules())

    def hook(name):
        def record(_module, args):
            channel_max = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)
            maxima[name] = torch.maximum(maxima[name], channel_max) if name in maxima else channel_max

        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with torch.inference_mode():
            for input_ids, attention_mask in batches:
                encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def smooth_and_quantize(encoder, calibration_batches, alpha: float, keep_fp32: str):
    names = smoothable_linears(encoder, keep_fp32)
    maxima = calibrate(encoder, names, calibration_batches)
    quantized = quantize_smoothed(wrap(encoder, names, maxima, alpha), names)
    recipe = {
        "scheme": "smoothquant",
        "alpha": alpha,
        "smoothed_modules": names,
        "weights": "qint8 per output channel",
        "activations": "quint8 dynamic per tensor",
        "kept_fp32": sum(1 for n, _ in encoder.named_modules() if re.search(keep_fp32, n)),
    }
    return quantized.eval(), recipe


def save_smooth(quantized, recipe: dict, folder: Path, model_dir: Path) -> None:
    save_quantized(quantized, folder, model_dir)
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def export_onnx(encoder, sample_ids: np.ndarray, sample_mask: np.ndarray, path: Path, opset: int = 17) -> None:
    """TorchScript-based export with dynamic batch and sequence axes; output is the pooled embedding."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(
            encoder,
            (torch.from_numpy(sample_ids), torch.from_numpy(sample_mask)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def config_summary(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    return {
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "num_attention_heads": config.get("num_attention_heads"),
    }
