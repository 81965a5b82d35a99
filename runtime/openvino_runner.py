"""Run a graph with OpenVINO (no torch): the ONNX export in bf16 or f32, or the int8 IR the build writes.

OpenVINO reads `onnx/model.onnx` as it is and compiles it for this CPU at load (about a second for
MPNet-base). The inference precision is set explicitly from the variant (OpenVINO's own default is bf16 on
CPUs that have it, f32 elsewhere), so the variant's name says what runs; `details()` reports what OpenVINO
actually compiled. The int8 variant is an IR folder (`model.xml` + `model.bin`) whose linear layers hold
per-channel 8-bit weights; OpenVINO quantizes their activations per token in groups of
`PER_TOKEN_GROUP` channels at run time and runs the dot products in int8 (VNNI / AMX).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .memory import cache_capacity

#: activation channels that share one dynamic int8 scale, per token (OpenVINO's default on CPU; set so that
#: the variant means the same on every OpenVINO version)
PER_TOKEN_GROUP = 32
#: the variant's precision -> OpenVINO CPU settings; dynamic quantization off where weights are not 8-bit
PRECISION_CONFIG = {
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "fp32": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "int8-per-token": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": PER_TOKEN_GROUP},
}
#: the graph inside an IR folder
IR_FILE = "model.xml"


class OpenVinoRunner:
    """(input_ids, attention_mask) -> pooled sentence embeddings (not normalized), float32."""

    def __init__(
        self, model_path: Path, precision: str = "fp32", threads: int | None = None, performance_hint: str = "LATENCY"
    ):
        import openvino as ov

        self.model_path = Path(model_path) / IR_FILE if Path(model_path).is_dir() else Path(model_path)
        # the per-shape kernel cache, capped (runtime.memory): its default 5,000 entries grow RSS by ~0.9 MB a shape
        config = {
            **PRECISION_CONFIG[precision],
            "PERFORMANCE_HINT": performance_hint,
            "CPU_RUNTIME_CACHE_CAPACITY": cache_capacity(),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.cache_capacity = config["CPU_RUNTIME_CACHE_CAPACITY"]
        self.compiled = ov.Core().compile_model(str(self.model_path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._inputs = {port.get_any_name() for port in self.compiled.inputs}
        self._output = self.compiled.output("sentence_embedding")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        result = self._request.infer({k: v for k, v in feeds.items() if k in self._inputs})
        return np.array(result[self._output], dtype=np.float32)  # a copy: the request reuses its buffers

    def details(self) -> dict:
        return {
            "openvino_inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
            "openvino_performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
            "openvino_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "openvino_dynamic_quantization_group": int(self.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")),
            "openvino_runtime_cache_capacity": self.cache_capacity,  # not readable back from a compiled model
        }


def open_runner(row, path: Path, pooling=None, threads: int | None = None, device: str = "cpu") -> OpenVinoRunner:
    """The table's loader for OpenVINO rows (runtime.variants.Variant.loader)."""
    return OpenVinoRunner(path, row.precision, threads)
