"""Torch embedder: the fp32 weights (eval, inference_mode, optional torch.compile) or the int8 state_dict."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from services.common.embedder import ArtifactEmbedder
from services.common.settings import ServiceSettings, SettingsConfigDict


class TorchSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TORCH_API_", extra="ignore")

    port: int = Field(8001, ge=1, le=65535, description="port to bind")
    compile: bool = Field(True, description="torch.compile the fp32 model at start-up (warm-up compiles it)")


class TorchEmbedder(ArtifactEmbedder):
    runtime = "torch"
    variants_fastest_first = ("torch_int8", "torch_int8_smooth", "torch_fp32")

    def __init__(self, settings: TorchSettings):
        super().__init__(settings.artifacts_dir, settings.variant, settings.threads)
        self.compile = settings.compile and self.variant == "torch_fp32"
        self._model = None

    def _load_model(self) -> None:
        import torch

        from runtime import torch_encoder

        torch_encoder.quiet_libraries()
        if self.threads:
            torch.set_num_threads(self.threads)
        model = torch_encoder.load_variant(self.artifacts_dir, self.manifest, self.variant)
        model.eval()
        # dynamic=True: one graph for every batch size and length (batch 1 still gets its own).
        self._model = torch.compile(model, dynamic=True) if self.compile else model

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        # Compiled graphs run under no_grad; eager under inference_mode (the lab's fastest eager mode).
        context = torch.no_grad() if self.compile else torch.inference_mode()
        with context:
            out = self._model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return out.float().numpy()

    def info(self) -> dict:
        return {**super().info(), "torch_compile": self.compile}
