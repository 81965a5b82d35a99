"""Run the ONNX export with OpenVINO (no torch): bf16 on CPUs with AVX512-BF16 or AMX, or f32.

OpenVINO reads `onnx/model.onnx` as it is and compiles it for this CPU at load (about a second for
MPNet-base). The inference precision is set explicitly from the variant (OpenVINO's own default is bf16 on
CPUs that have it, f32 elsewhere), so the variant's name says what runs; `describe()` reports what OpenVINO
actually compiled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the variant's precision -> OpenVINO's INFERENCE_PRECISION_HINT
PRECISION_HINTS = {"bf16": "bf16", "fp32": "f32"}


class OpenVinoRunner:
    """(input_ids, attention_mask) -> pooled sentence embeddings (not normalized), float32."""

    def __init__(self, model_path: Path, precision: str = "fp32", threads: int | None = None,
                 performance_hint: str = "LATENCY"):
        import openvino as ov

        self.model_path = Path(model_path)
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": performance_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._inputs = {port.get_any_name() for port in self.compiled.inputs}
        self._output = self.compiled.output("sentence_embedding")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        result = self._request.infer({k: v for k, v in feeds.items() if k in self._inputs})
        return np.array(result[self._output], dtype=np.float32)  # a copy: the request reuses its buffers

    def describe(self) -> dict:
        return {"openvino_inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                "openvino_performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
                "openvino_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS"))}


def open_runner(row, path: Path, pooling=None, threads: int | None = None, device: str = "cpu") -> OpenVinoRunner:
    """The table's loader for OpenVINO rows (runtime.variants.Variant.loader)."""
    return OpenVinoRunner(path, row.precision, threads)
