"""The one interface each service implements (token ids -> float32 array, warm-up, info); its artifact-backed base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from runtime.batching import padding_efficient_groups
from runtime.manifest import ArtifactError, Manifest
from runtime.measure_here import HostMeasurements
from runtime.pooling import normalize_rows
from runtime.selection import Choice, choose
from runtime.tokenization import TextTokenizer
from runtime.variants import VARIANTS, Variant
from runtime.variants import variant as variant_row

WARMUP_TEXTS = ["warm up", "A longer sentence that warms up the kernels for a second, wider shape of input."]


class Embedder(ABC):
    """What the HTTP layer sees: token ids in, float32 vectors out, plus load / warm-up / checks / info.

    Implementations: ArtifactEmbedder (a built artifact, below) and tests/fakes.py (no weights).
    """

    runtime: str = ""
    variant: str = ""
    model_id: str = ""
    dimension: int
    max_tokens: int
    normalize_default: bool

    @abstractmethod
    def verify(self) -> None:
        """Check the files to be served (raises ArtifactError)."""

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, not truncated (callers check the limit, then `truncate`)."""

    @abstractmethod
    def truncate(self, ids: list[int]) -> list[int]: ...

    @abstractmethod
    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Token ids (already truncated) -> pooled embeddings, float32 [len(ids), dimension], not normalized."""

    @abstractmethod
    def info(self) -> dict: ...

    def run_batch(self, ids: list[list[int]]) -> np.ndarray:
        """Exactly one model call on these rows (the batcher owns batch shape); default: embed_ids."""
        return self.embed_ids(ids)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Texts -> pooled embeddings (float32), truncated at max_tokens, not normalized."""
        return self.embed_ids([self.truncate(row) for row in self.tokenize(texts)])

    def warmup(self) -> None:
        for _ in range(2):
            self.embed(WARMUP_TEXTS[:1])
            self.embed(WARMUP_TEXTS)


class ArtifactEmbedder(Embedder):
    """Tokenizes and runs one variant of a built artifact folder. Subclasses implement `_load_model`, `_forward`.

    The variant is chosen at construction, before the service listens (runtime.selection): the fastest that
    passes the gate on this CPU, from the manifest's figures where this is the build's CPU, re-checked and
    timed here where it is not. `service` names the consumer's engines in the variant table.
    """

    service: str = ""

    def __init__(self, artifacts_dir: Path, variant: str = "auto", threads: int | None = None, device: str = "cpu",
                 allowed: tuple[str, ...] | None = None):
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest = Manifest.load(self.artifacts_dir)
        self.threads = threads
        here = HostMeasurements(self.artifacts_dir, self.manifest, threads)
        rows = VARIANTS if allowed is None else tuple(v for v in VARIANTS if v.name in allowed)
        self.choice: Choice = choose(self.manifest, self.service, variant, device, recheck=here.recheck,
                                     time_here=here.time_here, rows=rows)
        self.variant = self.choice.variant
        self.row: Variant = variant_row(self.variant)
        self.runtime = self.row.engine
        model = self.manifest.model
        self.model_id = model.source
        self.dimension = model.dimension
        self.max_tokens = model.max_seq_length
        self.normalize_default = model.normalize
        self.tokenizer: TextTokenizer | None = None

    @property
    def record(self):
        return self.manifest.artifacts[self.variant]

    @property
    def model_path(self) -> Path:
        return self.manifest.path_of(self.artifacts_dir, self.variant)

    def verify(self) -> None:
        """sha256 of the served variant and the tokenizer against the manifest (raises ArtifactError)."""
        self.manifest.verify(self.artifacts_dir, self.variant)

    def load(self) -> None:
        self.tokenizer = TextTokenizer(self.artifacts_dir / self.manifest.tokenizer.path, self.max_tokens)
        self._load_model()

    @abstractmethod
    def _load_model(self) -> None: ...

    @abstractmethod
    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled, not normalized, float32 [batch, dimension]."""

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.token_ids(texts, truncate=False)

    def truncate(self, ids: list[int]) -> list[int]:
        return self.tokenizer.truncate(ids, self.max_tokens)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_ids(self.tokenizer.token_ids(texts))

    def run_batch(self, ids: list[list[int]]) -> np.ndarray:
        """One model call: the rows padded to the longest of them."""
        batch = self.tokenizer.pad(ids)
        return self._forward(batch.input_ids, batch.attention_mask)

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """For in-process callers (the services' batcher forms its own groups): rows sorted by length and
        run in groups that pad little, as the batcher does.
        """
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for group in padding_efficient_groups([len(row) for row in ids]):
            out[group] = self.run_batch([ids[i] for i in group])
        return out

    def info(self) -> dict:
        record = self.record
        return {
            "model": self.model_id,
            "runtime": self.runtime,
            "variant": self.variant,
            "precision": record.precision,
            "parity": record.parity.to_dict(),
            "speed": record.speed,
            "selection": self.choice.to_dict(),
            "dimension": self.dimension,
            "max_tokens": self.max_tokens,
            "pooling": self.manifest.model.pooling,
            "normalize_default": self.normalize_default,
            "threads": self.threads,
        }


__all__ = ["ArtifactEmbedder", "ArtifactError", "Embedder", "normalize_rows", "padding_efficient_groups"]
