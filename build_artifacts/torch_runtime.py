"""PyTorch side of the artifact chain: fp32 encoder, dynamic int8, ONNX export (imports torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .model_loading import PoolingSpec, build_encoder

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


def save_quantized(quantized, folder: Path, model_dir: Path) -> None:
    """Store the int8 state_dict (plain tensors, qint8 tensors, dtypes) plus config.json.

    It is loaded with torch.load(weights_only=True), which refuses arbitrary pickled objects.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(quantized.state_dict(), folder / QUANTIZED_STATE_FILE)
    (folder / "config.json").write_text((model_dir / "config.json").read_text())


def fp32_skeleton(folder: Path, pooling: PoolingSpec):
    """The encoder architecture from folder/config.json, randomly initialized (weights come later)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(folder))
    config._attn_implementation = "eager"
    return build_encoder_from_module(AutoModel.from_config(config), pooling)


def load_quantized_state(quantized, folder: Path):
    """Stored int8 weights into an identically quantized skeleton; weights_only: no arbitrary unpickling."""
    import torch

    quantized.load_state_dict(torch.load(folder / QUANTIZED_STATE_FILE, weights_only=True, map_location="cpu"))
    return quantized.eval()


def load_quantized(folder: Path, pooling: PoolingSpec):
    """Rebuild the architecture from config.json, quantize it, then load the stored int8 weights."""
    return load_quantized_state(quantize_dynamic_int8(fp32_skeleton(folder, pooling)), folder)


def build_encoder_from_module(transformer, pooling: PoolingSpec):
    from .model_loading import _sentence_encoder_class

    return _sentence_encoder_class()(transformer, pooling.mode).eval()


def load_fp32(model_dir: Path, pooling: PoolingSpec):
    return build_encoder(model_dir, pooling)


def embed(encoder, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).float().numpy()


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
