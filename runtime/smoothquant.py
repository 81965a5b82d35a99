"""The structure of the SmoothQuant int8 torch variant: SmoothedLinear wrappers and per-channel qint8.

The build (build_artifacts.torch_steps) calibrates, folds the scales into the weights and saves;
runtime.torch_encoder.load_int8_smooth rebuilds the same structure from config.json and
quantization.json and loads the weights with torch.load(weights_only=True). torch is imported inside
the functions.
"""

from __future__ import annotations

from functools import cache

RECIPE_FILE = "quantization.json"


@cache
def smoothed_linear_class():
    import torch

    class SmoothedLinear(torch.nn.Module):
        """x -> linear(x * inv_scale); the Linear's weight rows were multiplied by 1 / inv_scale."""

        inv_scale: torch.Tensor  # a registered buffer

        def __init__(self, linear: torch.nn.Module, inv_scale: torch.Tensor):
            super().__init__()
            self.register_buffer("inv_scale", inv_scale)
            self.linear = linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x * self.inv_scale)

    return SmoothedLinear


def wrap(encoder, names: list[str], maxima: dict | None = None, alpha: float = 0.5):
    """Replace each named Linear by SmoothedLinear; with `maxima` (build time), fold s into its weight rows."""
    import torch

    modules = dict(encoder.named_modules())
    for name in names:
        linear = modules[name]
        if maxima is None:
            inv = torch.ones(linear.in_features)
        else:
            with torch.no_grad():
                w_max = linear.weight.abs().amax(dim=0).clamp(min=1e-5)
                scale = (maxima[name].clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(1e-4, 1e4)
                linear.weight.mul_(scale[None, :])
                inv = (1.0 / scale).contiguous()
        parent_name, attr = name.rsplit(".", 1)
        setattr(modules[parent_name], attr, smoothed_linear_class()(linear, inv))
    return encoder


def quantize_smoothed(encoder, names: list[str]):
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {f"{name}.linear": per_channel_dynamic_qconfig for name in names}
    return quantize_dynamic(encoder, spec, dtype=torch.qint8)
