"""Texts -> sentence vectors with one ONNX variant of a built artifact folder, through `runtime` only (no torch).

The variant is chosen as the ONNX service chooses it (`auto`: the fastest that passes parity), and a
variant that fails parity is refused: the manifest's parity gate, as in the services.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import onnx_runner
from runtime.manifest import ArtifactError, Manifest
from runtime.pooling import normalize_rows
from runtime.tokenization import TextTokenizer

#: `auto` takes the first of these that passes parity: the ONNX service's order (services/onnx_api/embedder.py,
#: OnnxEmbedder.variants_fastest_first; a test keeps the two equal), so a corpus gets the service's vectors.
AUTO_ORDER = ("onnx_int8", "onnx_int8_smooth", "onnx_optimized", "onnx_fused")
WHO = "bulk_embed (ONNX Runtime)"


def select_variant(manifest: Manifest, requested: str = "auto") -> str:
    """The variant to run (raises ArtifactError with one line: unknown, not built, or failing parity)."""
    if requested == "auto":
        return manifest.select_variant(AUTO_ORDER, "auto", WHO)
    if requested not in onnx_runner.ONNX_VARIANTS:
        raise ArtifactError(f"--variant {requested}: not an ONNX variant (choose from: auto, "
                            f"{', '.join(onnx_runner.ONNX_VARIANTS)})")
    if requested not in manifest.artifacts:
        raise ArtifactError(f"--variant {requested}: not built in this artifact folder "
                            f"(have: {', '.join(manifest.artifacts)})")
    parity = manifest.artifacts[requested].parity
    if not parity.passes_parity:
        passing = [v for v in manifest.passing() if v in onnx_runner.ONNX_VARIANTS]
        raise ArtifactError(f"--variant {requested} fails parity (min cosine {parity.min_cosine:.4f} < "
                            f"{parity.threshold} against fp32): refused; passing ONNX variants: "
                            f"{', '.join(passing) or 'none'}")
    return requested


def public_model_name(source: str) -> str:
    """The model as users know it: a hub id stays, a local folder shows its name only (as the services do)."""
    source = source.rstrip("/").replace("\\", "/")
    return source.rsplit("/", 1)[-1] if source.startswith(("/", ".", "~")) or source.count("/") > 1 else source


class Encoder:
    """Tokenizer + ONNX Runtime session of one variant; `embed` returns what the service returns."""

    def __init__(self, artifacts_dir: Path, variant: str = "auto", threads: int | None = None):
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest = Manifest.load(self.artifacts_dir)
        self.variant = select_variant(self.manifest, variant)
        model = self.manifest.model
        self.model_id, self.dimension = model.source, model.dimension
        self.max_tokens, self.normalize = model.max_seq_length, model.normalize
        self.tokenizer = TextTokenizer(self.artifacts_dir / self.manifest.tokenizer.path, self.max_tokens)
        self.runner = onnx_runner.load_variant(self.artifacts_dir, self.manifest, self.variant, threads)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, not truncated."""
        return self.tokenizer.token_ids(texts, truncate=False)

    def truncate(self, ids: list[int]) -> list[int]:
        return self.tokenizer.truncate(ids, self.max_tokens)

    def embed_ids(self, ids: list[list[int]], batch_size: int) -> np.ndarray:
        """Rows (truncated ids) -> float32 [len(ids), dimension], L2-normalized when the model is.

        Rows run sorted by length, `batch_size` per model call, so a call pads little; the result is in
        the input order.
        """
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            batch = self.tokenizer.pad([ids[i] for i in group])
            out[group] = self.runner.run(batch.input_ids, batch.attention_mask)
        return normalize_rows(out) if self.normalize else out

    def embed(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        return self.embed_ids([self.truncate(row) for row in self.token_ids(texts)], batch_size)

    def describe(self) -> dict:
        """What the output files' metadata records about the model."""
        record = self.manifest.artifacts[self.variant]
        return {"model": public_model_name(self.model_id), "variant": self.variant, "precision": record.precision,
                "parity_min_cosine": record.parity.min_cosine, "dimension": self.dimension,
                "normalized": self.normalize, "max_tokens": self.max_tokens,
                "manifest_created_at": self.manifest.created_at}
