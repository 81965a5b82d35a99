"""The variant table: one row per deployable variant of a model, and everything a consumer asks of one.

A variant is one way to run the model: an engine (torch, ONNX Runtime, OpenVINO), the file it reads from the
artifact folder, its arithmetic, the devices it runs on, the CPU features it needs or whose presence changes
its numbers, how it loads (`loader`, in `runtime`) and how it is built (`build_step`, a function of
`build_artifacts.build`). The build, both services, bulk_embed, the Ray Serve app and the benchmark read this
table; a new variant is one row here and one build step there.

Which variant `auto` serves is not decided here but by measurement (`runtime.selection`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

#: features for fast, unsaturated int8 dot products (8-bit weights are served only where one is present)
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")
#: features for native bf16 dot products (without them bf16 is emulated: slower than fp32)
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Variant:
    name: str
    engine: str  # "torch" | "onnxruntime" | "openvino"
    path: str  # a folder (torch) or a file (ONNX), relative to the artifact folder
    precision: str  # arithmetic: fp32, bf16, int8-dynamic, ...
    #: the fp32 reference computed by a rewritten graph (export, offline optimization, fusion): the build
    #: verifies it on the parity texts; approximations are measured on the whole fidelity corpus
    exact: bool
    loader: str  # "module:function" in runtime: (path, pooling, threads, device) -> runner
    build_step: str  # a function of build_artifacts.build: (state, variant) -> progress detail
    label: str  # what the build step does, for the progress line
    devices: tuple[str, ...] = ("cpu",)
    #: served on a CPU only where it has one of these
    needs_any: tuple[str, ...] = ()
    #: features whose presence changes the variant's numbers: where the serving CPU differs from the build's
    #: in one of them, its fidelity is re-checked at start-up (or it is refused)
    fidelity_depends_on: tuple[str, ...] = ()
    #: ONNX Runtime graph optimizations when the session opens (off for graphs optimized at build time)
    optimize_at_load: bool = True
    #: its output depends on the other texts in a call (activation scales computed per batch, as dynamic int8
    #: with per-tensor scales): measured in the batches a service forms; otherwise in length-sorted batches
    batch_mates_matter: bool = False
    #: torch rows: "module:function" (path, pooling) -> the encoder nn.Module in eval mode, wrapped by `loader`
    module_loader: str = ""
    #: built unless the build is asked for a list without it (`--variants`); off for slow lab recipes that no
    #: CPU seen serves (they cost minutes of build time)
    built_by_default: bool = True

    def load(self, artifacts_dir: Path, manifest, threads: int | None = None, device: str = "cpu"):
        """The runner of this variant in a built artifact folder: `.run(input_ids, attention_mask)` -> pooled
        float32 vectors (not normalized)."""
        return self.load_path(manifest.path_of(artifacts_dir, self.name), manifest.model.pooling_spec, threads, device)

    def load_path(self, path: Path, pooling, threads: int | None = None, device: str = "cpu"):
        return resolve(self.loader)(self, Path(path), pooling, threads, device)


def resolve(reference: str):
    """The function a "module:function" string names."""
    module, function = reference.split(":")
    return getattr(importlib.import_module(module), function)


_TORCH = "runtime.torch_encoder:open_runner"
_ORT = "runtime.onnx_runner:open_runner"
_OV = "runtime.openvino_runner:open_runner"

#: in build order (a later step may read an earlier step's files)
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "torch_fp32",
        "torch",
        "fp32",
        "fp32",
        True,
        _TORCH,
        "torch_fp32",
        "saving the fp32 weights (safetensors, Hugging Face folder)",
        devices=("cpu", "cuda"),
        module_loader="runtime.torch_encoder:load_fp32",
    ),
    Variant(
        "torch_bf16",
        "torch",
        "fp32",
        "bf16",
        False,
        _TORCH,
        "torch_bf16",
        "torch bf16: the fp32 weights cast to bfloat16 at load (oneDNN AVX512-BF16 / AMX kernels)",
        needs_any=BF16_FEATURES,
        fidelity_depends_on=BF16_FEATURES,
        module_loader="runtime.torch_encoder:load_bf16",
    ),
    Variant(
        "torch_int8",
        "torch",
        "torch_int8",
        "int8-dynamic",
        False,
        _TORCH,
        "torch_int8",
        "torch dynamic int8 (torch.ao quantize_dynamic, nn.Linear, qint8)",
        needs_any=INT8_FEATURES,
        fidelity_depends_on=INT8_FEATURES,
        batch_mates_matter=True,
        module_loader="runtime.torch_encoder:load_int8",
    ),
    # 7.4 min of a 25-min MPNet-base build on a Zen 4, and it fails the gate there (top-10 0.933): on request
    Variant(
        "torch_int8_smooth",
        "torch",
        "torch_int8_smooth",
        "int8-dynamic-smoothquant",
        False,
        _TORCH,
        "torch_int8_smooth",
        "torch SmoothQuant int8 (calibrated on other sentences; FFN output layers fp32)",
        needs_any=INT8_FEATURES,
        fidelity_depends_on=INT8_FEATURES,
        batch_mates_matter=True,
        built_by_default=False,
        module_loader="runtime.torch_encoder:load_int8_smooth",
    ),
    Variant(
        "onnx_fp32",
        "onnxruntime",
        "onnx/model.onnx",
        "fp32",
        True,
        _ORT,
        "onnx_fp32",
        "exporting ONNX (dynamic batch and sequence axes)",
        devices=("cpu", "cuda"),
    ),
    Variant(
        "onnx_optimized",
        "onnxruntime",
        "onnx/model.optimized.onnx",
        "fp32",
        True,
        _ORT,
        "onnx_optimized",
        "ONNX Runtime offline optimization (optimized_model_filepath)",
        optimize_at_load=False,
    ),
    Variant(
        "onnx_fused",
        "onnxruntime",
        "onnx/model.fused.onnx",
        "fp32",
        True,
        _ORT,
        "onnx_fused",
        "fusing self-attention into com.microsoft.MultiHeadAttention (relative position bias kept)",
        devices=("cpu", "cuda"),
    ),
    Variant(
        "onnx_int8",
        "onnxruntime",
        "onnx/model.int8.onnx",
        "int8-dynamic",
        False,
        _ORT,
        "onnx_int8",
        "ONNX Runtime dynamic int8 (quantize_dynamic, QInt8 per-channel weights)",
        needs_any=INT8_FEATURES,
        fidelity_depends_on=INT8_FEATURES,
        batch_mates_matter=True,
    ),
    Variant(
        "onnx_int8_smooth",
        "onnxruntime",
        "onnx/model.int8_smooth.onnx",
        "int8-dynamic-smoothquant",
        False,
        _ORT,
        "onnx_int8_smooth",
        "ONNX SmoothQuant int8 (calibrated on other sentences; FFN outlier channels split off in fp32)",
        needs_any=INT8_FEATURES,
        fidelity_depends_on=INT8_FEATURES,
        batch_mates_matter=True,
    ),
    Variant(
        "openvino_fp32",
        "openvino",
        "onnx/model.onnx",
        "fp32",
        True,
        _OV,
        "openvino_variant",
        "OpenVINO on the ONNX export, f32 inference precision",
    ),
    Variant(
        "openvino_bf16",
        "openvino",
        "onnx/model.onnx",
        "bf16",
        False,
        _OV,
        "openvino_variant",
        "OpenVINO on the ONNX export, bf16 inference precision (AVX512-BF16 / AMX)",
        needs_any=BF16_FEATURES,
        fidelity_depends_on=BF16_FEATURES,
    ),
    # Per-token activation scales (groups of 32 channels, computed per row at run time) and per-channel 8-bit
    # weights: the outlier channels that break per-tensor int8 (FINDINGS.md) get their own scales. Each row is
    # quantized on its own, so batch mates do not matter. 8-bit dot products need VNNI or AMX.
    Variant(
        "openvino_int8",
        "openvino",
        "openvino_int8",
        "int8-per-token",
        False,
        _OV,
        "openvino_int8",
        "OpenVINO int8: per-channel 8-bit weights, activations quantized per token at run time",
        needs_any=INT8_FEATURES,
        fidelity_depends_on=INT8_FEATURES,
    ),
)
BY_NAME = {v.name: v for v in VARIANTS}

#: which engines each consumer runs (the ONNX service, bulk_embed and its Ray Serve app carry no torch)
SERVICE_ENGINES = {
    "torch_api": ("torch",),
    "onnx_api": ("onnxruntime", "openvino"),
    "bulk_embed": ("onnxruntime", "openvino"),
}


class UnknownVariantError(KeyError):
    pass


def variant(name: str) -> Variant:
    if name not in BY_NAME:
        raise UnknownVariantError(f"'{name}' is not a variant (have: {', '.join(BY_NAME)})")
    return BY_NAME[name]


def served_by(service: str, device: str = "cpu", rows: tuple[Variant, ...] = VARIANTS) -> tuple[Variant, ...]:
    """The rows a consumer can run on a device, in table order."""
    engines = SERVICE_ENGINES[service]
    return tuple(v for v in rows if v.engine in engines and device in v.devices)


def names(rows: tuple[Variant, ...]) -> tuple[str, ...]:
    return tuple(v.name for v in rows)


def default_build() -> tuple[str, ...]:
    return tuple(v.name for v in VARIANTS if v.built_by_default)


__all__ = [
    "BF16_FEATURES",
    "BY_NAME",
    "INT8_FEATURES",
    "SERVICE_ENGINES",
    "VARIANTS",
    "Variant",
    "default_build",
    "names",
    "served_by",
    "variant",
]
