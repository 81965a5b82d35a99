"""The torch encoder of a built artifact: fp32, bf16, dynamic int8 and SmoothQuant int8 loaders.

torch and transformers are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import smoothquant
from .pooling import PoolingSpec, sentence_encoder_class

QUANTIZED_STATE_FILE = "model_int8.pt"


def quiet_libraries() -> None:
    """Silence per-file progress bars and deprecation chatter; our own step lines show progress."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def quantize_dynamic_int8(encoder):
    """torch.ao dynamic quantization of every nn.Linear to qint8 (weights int8, activations per batch)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)


def load_fp32(model_dir: Path, pooling: PoolingSpec):
    """fp32 weights (eager attention, so export and quantization see plain ops) plus pooling, in eval()."""
    import torch
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    return sentence_encoder_class()(transformer, pooling.mode).eval()


def fp32_skeleton(folder: Path, pooling: PoolingSpec):
    """The encoder architecture from folder/config.json, randomly initialized (weights come later)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(folder))
    config._attn_implementation = "eager"
    return sentence_encoder_class()(AutoModel.from_config(config), pooling.mode).eval()


def load_quantized_state(quantized, folder: Path):
    """Stored int8 weights into an identically quantized skeleton; weights_only: no arbitrary unpickling."""
    import torch

    quantized.load_state_dict(torch.load(folder / QUANTIZED_STATE_FILE, weights_only=True, map_location="cpu"))
    return quantized.eval()


def load_int8(folder: Path, pooling: PoolingSpec):
    """Rebuild the architecture from config.json, quantize it, then load the stored int8 weights."""
    return load_quantized_state(quantize_dynamic_int8(fp32_skeleton(folder, pooling)), folder)


def load_int8_smooth(folder: Path, pooling: PoolingSpec):
    """Rebuild: skeleton from config.json -> the same SmoothedLinear wrapping (quantization.json lists the
    layers) -> the same per-channel quantization -> the stored weights."""
    names = json.loads((Path(folder) / smoothquant.RECIPE_FILE).read_text())["smoothed_modules"]
    skeleton = smoothquant.wrap(fp32_skeleton(folder, pooling), names)
    return load_quantized_state(smoothquant.quantize_smoothed(skeleton, names), Path(folder))


def load_bf16(folder: Path, pooling: PoolingSpec):
    """The fp32 weights cast to bfloat16: oneDNN runs the matmuls on AVX512-BF16 or AMX where the CPU has them."""
    import torch

    return load_fp32(folder, pooling).to(torch.bfloat16)


class TorchRunner:
    """One torch variant in eval mode: `.run(ids, mask)` -> pooled float32 vectors; `.encoder` is the module."""

    def __init__(self, encoder, device: str = "cpu"):
        self.encoder, self.device = encoder, device

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return embed(self.encoder, input_ids, attention_mask, self.device)

    def details(self) -> dict:
        return {}


def open_runner(row, path: Path, pooling: PoolingSpec, threads: int | None = None, device: str = "cpu") -> TorchRunner:
    """The table's loader for torch rows (runtime.variants.Variant.loader)."""
    quiet_libraries()
    set_threads(threads)
    from .variants import resolve

    return TorchRunner(resolve(row.module_loader)(path, pooling).to(device), device)


def load_variant(artifacts_dir: Path, manifest, variant: str):
    """The encoder (nn.Module, eval mode) of one torch variant of a built artifact folder."""
    from .manifest import ArtifactError
    from .variants import VARIANTS, resolve

    rows = {row.name: row for row in VARIANTS if row.engine == "torch"}
    if variant not in rows:
        raise ArtifactError(f"'{variant}' is not a torch variant (have: {', '.join(rows)}).")
    return resolve(rows[variant].module_loader)(manifest.path_of(artifacts_dir, variant), manifest.model.pooling_spec)


def embed(encoder, input_ids: np.ndarray, attention_mask: np.ndarray, device: str = "cpu") -> np.ndarray:
    import torch

    ids, mask = torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device)
    with torch.inference_mode():
        return encoder(ids, mask).float().cpu().numpy()
