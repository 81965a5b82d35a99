"""Resolve a model (Hugging Face id or local folder) and build the sentence encoder around it.

Pooling and normalization follow the model's sentence-transformers config (modules.json,
1_Pooling/config.json, sentence_bert_config.json); without one: mean pooling + L2 normalize.
torch and transformers are imported inside the functions that need them so `--help` stays instant.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

DEFAULT_MODEL = "sentence-transformers/multi-qa-mpnet-base-cos-v1"
POOLING_MODES = ("mean", "cls", "max")
# Files a sentence-transformers model folder needs; weights in other formats are not fetched.
_HUB_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "model.safetensors",
    "1_Pooling/*",
    "2_Normalize/*",
]


class ModelUnavailableError(RuntimeError):
    """The model is neither a local folder nor reachable on (or cached from) the Hugging Face Hub."""


@dataclass(frozen=True)
class PoolingSpec:
    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model_dir(model: str) -> Path:
    """Return a local folder for `model`: the folder itself, or a Hub snapshot (cached or downloaded)."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(f"'{model}' is a folder but holds no config.json: not a Hugging Face model folder.")
        return local.resolve()
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(f"'{model}' is not a model folder and does not look like a Hugging Face id (owner/name).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS))
    except HFValidationError as exc:
        raise ModelUnavailableError(f"'{model}' is neither a local folder nor a valid Hugging Face id: {exc}") from None
    except Exception as exc:  # network errors, missing repos, offline mode without a cache entry
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelUnavailableError(
            f"Could not load model '{model}': it is not a local folder, and the Hugging Face Hub could not provide it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).\n"
            "Offline options: pass a local model folder (--model path/to/folder); run `make models` to unpack the "
            "offline models into ./models (e.g. --model models/all-mpnet-base-v2); or pre-fill the Hugging Face "
            f"cache ({cache}) on a machine with access and set HF_HUB_OFFLINE=1."
        ) from None


def read_pooling_spec(model_dir: Path, tokenizer_max_length: int | None = None) -> PoolingSpec:
    """Read pooling/normalization from the sentence-transformers config; default to mean + normalize."""
    modules_file = model_dir / "modules.json"
    mode, normalize = "mean", True
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        normalize = any(t.endswith("Normalize") for t in types)
        pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
        if pooling is not None:
            cfg = json.loads((model_dir / pooling.get("path", "1_Pooling") / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                mode = "max"
            elif cfg.get("pooling_mode_mean_tokens", True):
                mode = "mean"
            else:
                raise ModelUnavailableError(f"Unsupported pooling config in {model_dir}: {cfg}")
    max_len = tokenizer_max_length or 512
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
    config = json.loads((model_dir / "config.json").read_text())
    positions = config.get("max_position_embeddings")
    if positions:
        # RoBERTa/MPNet reserve padding_idx + 1 positions.
        offset = 2 if config.get("model_type") in ("mpnet", "roberta", "xlm-roberta") else 0
        max_len = min(max_len, positions - offset)
    return PoolingSpec(mode=mode, normalize=normalize, max_seq_length=max_len)


@cache
def _sentence_encoder_class():
    import torch

    class SentenceEncoder(torch.nn.Module):
        """Transformer plus pooling: (input_ids, attention_mask) -> pooled embedding, not normalized."""

        def __init__(self, transformer: torch.nn.Module, mode: str):
            super().__init__()
            self.transformer = transformer
            self.mode = mode

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self.mode == "cls":
                return hidden[:, 0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if self.mode == "max":
                return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return SentenceEncoder


def __getattr__(name: str):
    # SentenceEncoder needs torch; resolve it lazily so this module imports without torch.
    if name == "SentenceEncoder":
        return _sentence_encoder_class()
    raise AttributeError(name)


def build_encoder(model_dir: Path, pooling: PoolingSpec):
    """Load fp32 weights (eager attention, so export and quantization see plain ops) and add pooling."""
    import torch
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    return _sentence_encoder_class()(transformer, pooling.mode).eval()


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
