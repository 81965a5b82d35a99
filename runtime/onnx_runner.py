"""Run an exported sentence-embedding ONNX graph with ONNX Runtime (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def session_options(threads: int | None, optimize: bool, optimized_model_path: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


class OnnxSentenceRunner:
    """(input_ids, attention_mask) -> pooled sentence embeddings (not normalized), float32."""

    def __init__(
        self, model_path: Path, threads: int | None = None, optimize: bool = True, providers: list | None = None
    ):
        """`providers`: ONNX Runtime execution providers in order of preference (default: the CPU only)."""
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options(threads, optimize),
            providers=providers or ["CPUExecutionProvider"],
        )
        self._input_names = {i.name for i in self.session.get_inputs()}

    def details(self) -> dict:
        return {"providers": self.session.get_providers()}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        return self.session.run(["sentence_embedding"], feeds)[0]


def open_runner(row, path: Path, pooling=None, threads: int | None = None, device: str = "cpu") -> OnnxSentenceRunner:
    """The table's loader for ONNX Runtime rows (runtime.variants.Variant.loader); device cuda: the CUDA
    provider first, the CPU provider as the fallback for ops without a CUDA kernel."""
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if device == "cuda" else None
    return OnnxSentenceRunner(path, threads=threads, optimize=row.optimize_at_load, providers=providers)
