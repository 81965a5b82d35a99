"""Pooling and normalization: what turns a transformer's token states into one sentence vector.

PoolingSpec comes from the manifest (or, at build time, from the model's sentence-transformers config).
The torch module that pools (`sentence_encoder_class`) imports torch lazily; the ONNX graphs hold the
same pooling inside the graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class PoolingSpec:
    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalized rows, float32 (what the services return with normalize=true)."""
    return l2_normalize(vectors).astype(np.float32)


@cache
def sentence_encoder_class():
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
