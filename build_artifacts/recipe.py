"""Every constant of the build recipe in one typed place; `build` writes it into manifest.json (build.recipe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    onnx_opset: int = 17
    #: texts per model call when embedding the parity and calibration sets
    parity_batch: int = 8
    #: the gate's retrieval half: mean top-10 agreement with fp32 over the retrieval corpus (min cosine
    #: >= runtime.similarity.PARITY_MIN_COSINE on the parity corpus is the other half)
    min_top10_agreement: float = 0.95
    #: fidelity is measured in the groups a service forms: windows of arriving texts sorted by length,
    #: cut into batches of up to service_batch
    service_batch: int = 32
    service_window: int = 64
    #: fused fp32 graph vs fp32 torch: a rewrite, not an approximation; below this the int8 recipe
    #: starts from the unfused graph
    fusion_min_cosine: float = 0.9999
    #: torch SmoothQuant (torch_int8_smooth): migration strength, and the Linear layers left fp32
    #: (BERT/MPNet FFN output; not BERT's attention.output.dense)
    torch_smooth_alpha: float = 0.65
    torch_keep_fp32_modules: str = r"layer\.\d+\.output\.dense$"
    #: ONNX SmoothQuant (onnx_int8_smooth): migration strength; FFN output layers (regexes over node
    #: names of BERT/MPNet/RoBERTa exports) whose largest input channels are split off in fp32
    onnx_smooth_alpha: float = 0.5
    onnx_ffn_output_patterns: tuple[str, ...] = (r"layer\.\d+/output/dense/",)
    onnx_outlier_channels: int = 16
    #: when it holds several counts, the build tries each and keeps the one with the most top-10 agreement
    #: with fp32 on the calibration texts (onnx_outlier_channels is then unused)
    onnx_outlier_channel_candidates: tuple[int, ...] = ()
    #: linear layers (regexes over MatMul node names) left fp32 in onnx_int8_smooth: neither split, smoothed
    #: nor quantized
    onnx_keep_fp32_patterns: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """The recipe a manifest recorded (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        out = asdict(self)
        out["onnx_ffn_output_patterns"] = list(self.onnx_ffn_output_patterns)
        out["onnx_outlier_channel_candidates"] = list(self.onnx_outlier_channel_candidates)
        out["onnx_keep_fp32_patterns"] = list(self.onnx_keep_fp32_patterns)
        return out


DEFAULT_RECIPE = Recipe()
