"""ONNX Runtime embedder: the offline-optimized graph (optimizations off at load) or an int8 graph on the CPU;
the fp32 graph on ONNX Runtime's CUDA execution provider with --device cuda."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from runtime import onnx_runner
from runtime.manifest import ArtifactError
from services.common.embedder import ArtifactEmbedder
from services.common.settings import ServiceSettings, SettingsConfigDict, SettingsError

# On the CUDA provider: the plain export (ONNX Runtime fuses for CUDA at load) and the fused-attention graph
# (com.microsoft.MultiHeadAttention has a CUDA kernel). Not onnx_optimized (optimized offline for the CPU
# provider) nor the int8 graphs (dynamic int8 MatMulInteger is a CPU kernel: it would run on the CPU).
CUDA_VARIANTS = ("onnx_fp32", "onnx_fused")


class OnnxSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ONNX_API_", extra="ignore")

    port: int = Field(8002, ge=1, le=65535, description="port to bind")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="cuda: ONNX Runtime's CUDAExecutionProvider (needs the onnxruntime-gpu package)"
    )

    @model_validator(mode="after")
    def _device_defaults(self):
        if self.device == "cuda":
            self.use_gpu_batch_sizes()
            if self.variant not in ("auto", *CUDA_VARIANTS):
                raise ValueError(f"variant {self.variant} does not run on the CUDA provider: with device cuda "
                                 f"use variant auto or one of {', '.join(CUDA_VARIANTS)}")
        return self


def require_cuda_provider() -> None:
    """Raise SettingsError (one line: exit 2) where the installed onnxruntime has no CUDA provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise SettingsError(f"device (--device / env ONNX_API_DEVICE) = 'cuda': this onnxruntime "
                            f"{ort.__version__} has no CUDAExecutionProvider (has: {', '.join(available)}); "
                            "install onnxruntime-gpu (the GPU image does)")


class OnnxEmbedder(ArtifactEmbedder):
    runtime = "onnxruntime"
    # onnx_fused (fp32, fused attention) last: on the CPUs measured it is no faster than onnx_optimized at
    # batch 32, so auto never reaches it; ONNX_API_VARIANT=onnx_fused selects it.
    variants_fastest_first = ("onnx_int8", "onnx_int8_smooth", "onnx_optimized", "onnx_fused")

    def __init__(self, settings: OnnxSettings):
        self.device = settings.device
        if self.device == "cuda":
            require_cuda_provider()
            self.variants_fastest_first = CUDA_VARIANTS
        super().__init__(settings.artifacts_dir, settings.variant, settings.threads)
        self._runner: onnx_runner.OnnxSentenceRunner | None = None

    @property
    def providers(self) -> list:
        if self.device == "cuda":
            # The CPU provider stays as the fallback for any op without a CUDA kernel.
            return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def verify(self) -> None:
        """sha256 as always; on cuda also open the session before listening, so a provider that cannot start
        (no driver, missing CUDA libraries: ONNX Runtime then falls back to the CPU) is a one-line exit 2."""
        super().verify()
        if self.device == "cuda":
            self.load()

    def load(self) -> None:
        if self._runner is None:
            super().load()

    def _load_model(self) -> None:
        runner = onnx_runner.load_variant(self.artifacts_dir, self.manifest, self.variant, self.threads,
                                          providers=self.providers)
        if self.device == "cuda" and "CUDAExecutionProvider" not in runner.session.get_providers():
            raise ArtifactError("device cuda: ONNX Runtime could not start its CUDA provider (no GPU or driver, "
                                f"or CUDA/cuDNN libraries missing) and fell back to {runner.session.get_providers()}")
        self._runner = runner

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._runner.run(input_ids, attention_mask)

    def info(self) -> dict:
        out = {**super().info(), "graph_optimizations_at_load": onnx_runner.optimize_at_load(self.variant),
               "device": self.device}
        if self._runner is not None:
            out["providers"] = self._runner.session.get_providers()
        return out
