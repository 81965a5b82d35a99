"""ONNX Runtime embedder: the offline-optimized graph (optimizations off at load) or the int8 graph."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from build_artifacts.onnx_runner import OnnxSentenceRunner
from services.common.embedder import Embedder
from services.common.settings import ServiceSettings, SettingsConfigDict


class OnnxSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ONNX_API_", extra="ignore")

    port: int = Field(8002, ge=1, le=65535, description="port to bind")


class OnnxEmbedder(Embedder):
    runtime = "onnxruntime"
    # onnx_fused (fp32, fused attention) last: on the CPUs measured it is no faster than onnx_optimized at
    # batch 32, so auto never reaches it; ONNX_API_VARIANT=onnx_fused selects it.
    variants_fastest_first = ("onnx_int8", "onnx_int8_smooth", "onnx_optimized", "onnx_fused")

    def __init__(self, settings: OnnxSettings):
        super().__init__(settings.artifacts_dir, settings.variant, settings.threads)
        self._runner: OnnxSentenceRunner | None = None

    def _load_model(self) -> None:
        path = self.artifacts_dir / self.manifest["artifacts"][self.variant]["path"]
        # The offline-optimized graph is loaded with optimizations off: the work was done at build time.
        self._runner = OnnxSentenceRunner(path, threads=self.threads, optimize=self.variant != "onnx_optimized")

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._runner.run(input_ids, attention_mask)

    def info(self) -> dict:
        return {**super().info(), "graph_optimizations_at_load": self.variant != "onnx_optimized"}
