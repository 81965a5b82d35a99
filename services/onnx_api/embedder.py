"""The torch-free embedder: the ONNX graphs on ONNX Runtime (fp32, int8) or on OpenVINO (fp32, bf16) on the CPU,
whichever the variant choice finds fastest and faithful here; the fp32 graphs on ONNX Runtime's CUDA execution
provider with --device cuda."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from runtime.manifest import ArtifactError
from runtime.variants import names, served_by
from services.catalog import ONNX_API
from services.common.embedder import ArtifactEmbedder
from services.common.settings import ServiceSettings, SettingsConfigDict, SettingsError


class OnnxSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=ONNX_API.env_prefix, extra="ignore")

    port: int = Field(ONNX_API.port, ge=1, le=65535, description="port to bind")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="cuda: ONNX Runtime's CUDAExecutionProvider (needs the onnxruntime-gpu package)"
    )

    @model_validator(mode="after")
    def _device_defaults(self):
        if self.device == "cuda":
            self.use_gpu_batch_sizes()
            # The variant table's cuda rows: the plain export and the fused-attention graph (not the graph
            # optimized offline for the CPU provider, nor int8, whose MatMulInteger is a CPU kernel).
            on_cuda = names(served_by(ONNX_API.name, "cuda"))
            if self.variant not in ("auto", *on_cuda):
                raise ValueError(
                    f"variant {self.variant} does not run on the CUDA provider: with device cuda "
                    f"use variant auto or one of {', '.join(on_cuda)}"
                )
        return self


def require_cuda_provider() -> None:
    """Raise SettingsError (one line: exit 2) where the installed onnxruntime has no CUDA provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise SettingsError(
            f"device (--device / env ONNX_API_DEVICE) = 'cuda': this onnxruntime "
            f"{ort.__version__} has no CUDAExecutionProvider (has: {', '.join(available)}); "
            "install onnxruntime-gpu (the GPU image does)"
        )


class OnnxEmbedder(ArtifactEmbedder):
    service = ONNX_API.name

    def __init__(self, settings: OnnxSettings):
        self.device = settings.device
        if self.device == "cuda":
            require_cuda_provider()
        super().__init__(
            settings.artifacts_dir, settings.variant, settings.threads, self.device, memory=settings.memory_bounds()
        )
        self._runner: Any = None  # the variant row's runner (ONNX Runtime or OpenVINO), set at load

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
        runner = self.row.load(self.artifacts_dir, self.manifest, self.threads, self.device)
        if self.device == "cuda" and "CUDAExecutionProvider" not in runner.session.get_providers():
            raise ArtifactError(
                "device cuda: ONNX Runtime could not start its CUDA provider (no GPU or driver, "
                f"or CUDA/cuDNN libraries missing) and fell back to {runner.session.get_providers()}"
            )
        self._runner = runner

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._runner.run(input_ids, attention_mask)

    def info(self) -> dict:
        out = {**super().info(), "device": self.device}
        if self.runtime == "onnxruntime":
            out["graph_optimizations_at_load"] = self.row.optimize_at_load
        if self._runner is not None:
            out.update(self._runner.details())
        return out
