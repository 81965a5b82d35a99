"""Texts -> sentence vectors with one ONNX variant of a built artifact folder, through `runtime` only (no torch).

The variant is chosen as the ONNX service chooses it (`auto`: the most faithful of the fastest that pass the gate
on this CPU, runtime.selection), and a variant that fails the gate is refused, as in the services.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.batching import padding_efficient_groups
from runtime.manifest import ArtifactError, Manifest, public_model_name
from runtime.measure_here import HostMeasurements
from runtime.pooling import normalize_rows
from runtime.selection import choose
from runtime.tokenization import TextTokenizer
from runtime.variants import variant as variant_row

SERVICE = "bulk_embed"


def select_variant(
    manifest: Manifest, requested: str = "auto", artifacts_dir: Path | None = None, threads: int | None = None
) -> str:
    """The variant to run, chosen as the ONNX service chooses (runtime.selection: the most faithful of the fastest
    that pass the gate on this CPU); raises ArtifactError with one line: unknown, not built, failing the gate, or
    refused."""
    here = HostMeasurements(artifacts_dir, manifest, threads) if artifacts_dir is not None else None
    try:
        return choose(
            manifest,
            SERVICE,
            requested,
            recheck=here.recheck if here else None,
            time_here=here.time_here if here else None,
        ).variant
    except ArtifactError as exc:
        raise ArtifactError(f"--variant {requested}: {exc}") from None


class Encoder:
    """Tokenizer + ONNX Runtime session of one variant; `embed` returns what the service returns."""

    def __init__(self, artifacts_dir: Path, variant: str = "auto", threads: int | None = None):
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest = Manifest.load(self.artifacts_dir)
        self.variant = select_variant(self.manifest, variant, self.artifacts_dir, threads)
        model = self.manifest.model
        self.model_id, self.dimension = model.source, model.dimension
        self.max_tokens, self.normalize = model.max_seq_length, model.normalize
        self.tokenizer = TextTokenizer(self.artifacts_dir / self.manifest.tokenizer.path, self.max_tokens)
        self.runner = variant_row(self.variant).load(self.artifacts_dir, self.manifest, threads)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, not truncated."""
        return self.tokenizer.token_ids(texts, truncate=False)

    def truncate(self, ids: list[int]) -> list[int]:
        return self.tokenizer.truncate(ids, self.max_tokens)

    def embed_ids(self, ids: list[list[int]], batch_size: int) -> np.ndarray:
        """Rows (truncated ids) -> float32 [len(ids), dimension], L2-normalized when the model is.

        Rows run sorted by length, at most `batch_size` per model call, cut where the services cut
        (runtime.batching), so a call pads little; the result is in the input order.
        """
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for group in padding_efficient_groups([len(row) for row in ids], max_size=batch_size):
            batch = self.tokenizer.pad([ids[i] for i in group])
            out[group] = self.runner.run(batch.input_ids, batch.attention_mask)
        return normalize_rows(out) if self.normalize else out

    def embed(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        return self.embed_ids([self.truncate(row) for row in self.token_ids(texts)], batch_size)

    def details(self) -> dict:
        """What the output files' metadata records about the model."""
        record = self.manifest.artifacts[self.variant]
        return {
            "model": public_model_name(self.model_id),
            "variant": self.variant,
            "precision": record.precision,
            "parity_min_cosine": record.parity.min_cosine,
            "dimension": self.dimension,
            "normalized": self.normalize,
            "max_tokens": self.max_tokens,
            "manifest_created_at": self.manifest.created_at,
        }
