"""ONNX Runtime embedder: the offline-optimized graph (optimizations off at load) or an int8 graph."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from runtime import onnx_runner
from services.common.embedder import ArtifactEmbedder
from services.common.settings import ServiceSettings, SettingsConfigDict


class OnnxSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ONNX_API_", extra="ignore")

    port: int = Field(8002, ge=1, le=65535, description="port to bind")


class OnnxEmbedder(ArtifactEmbedder):
    runtime = "onnxruntime"
    # onnx_fused (fp32, fused attention) last: on the CPUs measured it is no faster than onnx_optimized at
    # batch 32, so auto never reaches it; ONNX_API_VARIANT=onnx_fused selects it.
    variants_fastest_first = ("onnx_int8", "onnx_int8_smooth", "onnx_optimized", "onnx_fused")

    def __init__(self, settings: OnnxSettings):
        super().__init__(settings.artifacts_dir, settings.variant, settings.threads)
        self._runner: onnx_runner.OnnxSentenceRunner | None = None

    def _load_model(self) -> None:
        self._runner = onnx_runner.load_variant(self.artifacts_dir, self.manifest, self.variant, self.threads)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._runner.run(input_ids, attention_mask)

    def info(self) -> dict:
        return {**super().info(), "graph_optimizations_at_load": onnx_runner.optimize_at_load(self.variant)}
