"""The one interface each service implements: texts -> float32 array, warm-up, info."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from build_artifacts.manifest import ArtifactError, load_manifest, verify_artifact, verify_files
from build_artifacts.similarity import l2_normalize
from build_artifacts.tokenization import TextTokenizer

WARMUP_TEXTS = ["warm up", "A longer sentence that warms up the kernels for a second, wider shape of input."]


class Embedder(ABC):
    """Tokenizes and runs one artifact variant. Subclasses implement `load` and `_forward`."""

    runtime: str = ""
    #: variants of this runtime, fastest first; "auto" serves the first that passes parity
    variants_fastest_first: tuple[str, ...] = ()

    def __init__(self, artifacts_dir: Path, variant: str = "auto", threads: int | None = None):
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest = load_manifest(self.artifacts_dir)
        self.variant = self.select_variant(variant)
        self.threads = threads
        model = self.manifest["model"]
        self.dimension: int = model["dimension"]
        self.max_tokens: int = model["max_seq_length"]
        self.normalize_default: bool = model["normalize"]
        self.tokenizer: TextTokenizer | None = None

    def select_variant(self, requested: str) -> str:
        artifacts = self.manifest.get("artifacts", {})
        if requested != "auto":
            if requested not in self.variants_fastest_first:
                raise ArtifactError(f"Variant '{requested}' is not served by {self.runtime} "
                                    f"(choose from: auto, {', '.join(self.variants_fastest_first)}).")
            if requested not in artifacts:
                raise ArtifactError(f"Variant '{requested}' is not in {self.artifacts_dir}/manifest.json.")
            if not artifacts[requested]["parity"]["passes_parity"]:
                p = artifacts[requested]["parity"]
                raise ArtifactError(f"Variant '{requested}' fails parity (min cosine {p['min_cosine']:.4f} < "
                                    f"{p['threshold']}): refusing to serve it.")
            return requested
        for name in self.variants_fastest_first:
            if name in artifacts and artifacts[name]["parity"]["passes_parity"]:
                return name
        raise ArtifactError(f"No {self.runtime} variant in {self.artifacts_dir} passes parity.")

    def verify(self) -> None:
        """sha256 of the served variant and the tokenizer against the manifest (raises ArtifactError)."""
        verify_artifact(self.artifacts_dir, self.manifest, self.variant)
        verify_files(self.artifacts_dir, self.manifest["tokenizer"]["files"])

    def load(self) -> None:
        self.tokenizer = TextTokenizer(self.artifacts_dir / self.manifest["tokenizer"]["path"], self.max_tokens)
        self._load_model()

    @abstractmethod
    def _load_model(self) -> None: ...

    @abstractmethod
    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled, not normalized, float32 [batch, dimension]."""

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, not truncated (callers check the limit, then `truncate`)."""
        return self.tokenizer.token_ids(texts, truncate=False)

    def truncate(self, ids: list[int]) -> list[int]:
        return self.tokenizer.truncate(ids, self.max_tokens)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Texts -> pooled embeddings (float32), truncated at max_tokens, not normalized."""
        return self.embed_ids(self.tokenizer.token_ids(texts))

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Token ids (already truncated) -> pooled embeddings, float32, not normalized.

        Rows are sorted by length and run in groups that pad little: one 230-token paragraph in a
        batch of 15 short sentences would otherwise make every row cost 230 tokens.
        """
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for group in padding_efficient_groups([len(row) for row in ids]):
            batch = self.tokenizer.pad([ids[i] for i in group])
            out[group] = self._forward(batch.input_ids, batch.attention_mask)
        return out

    def warmup(self) -> None:
        for _ in range(2):
            self.embed(WARMUP_TEXTS[:1])
            self.embed(WARMUP_TEXTS)

    def info(self) -> dict:
        record = self.manifest["artifacts"][self.variant]
        return {
            "model": self.manifest["model"]["source"],
            "runtime": self.runtime,
            "variant": self.variant,
            "precision": record["precision"],
            "parity": record["parity"],
            "dimension": self.dimension,
            "max_tokens": self.max_tokens,
            "pooling": self.manifest["model"]["pooling"],
            "normalize_default": self.normalize_default,
            "threads": self.threads,
        }


def padding_efficient_groups(lengths: list[int], max_padding: float = 0.3, overhead_tokens: int = 16) -> list[list[int]]:
    """Indices grouped by length so that padded tokens exceed real ones by at most `max_padding`.

    `overhead_tokens` stands for the fixed cost of one model call, so tiny groups are not split off.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        length = lengths[index]
        padded = (len(current) + 1) * length
        if current and padded > (1 + max_padding) * (real + length) + overhead_tokens:
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += length
    if current:
        groups.append(current)
    return groups


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    return l2_normalize(vectors).astype(np.float32)


__all__ = ["ArtifactError", "Embedder", "normalize_rows"]
