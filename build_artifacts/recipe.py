"""Every constant of the build recipe in one typed place; `build` writes it into manifest.json (build.recipe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    onnx_opset: int = 17
    #: texts per model call when embedding the parity and calibration sets
    parity_batch: int = 8
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

    def to_dict(self) -> dict:
        out = asdict(self)
        out["onnx_ffn_output_patterns"] = list(self.onnx_ffn_output_patterns)
        return out


DEFAULT_RECIPE = Recipe()
