"""A fake embedder for fast tests of the HTTP layer, batcher, errors and settings: no weights, no manifest.

Like infinity's DummyTransformer: the same interface as the real embedders (services.common.embedder.Embedder),
deterministic vectors, and knobs to make it slow, fail, or refuse to load. Interface (stable; other tests use it):

    FakeEmbedder(dimension=8, max_tokens=32, normalize_default=True, delay_s=0.0, load_delay_s=0.0,
                 fail_load=None, fail_embed=None, variant="fake", runtime="fake", model_id="fake-model")
    .tokenize(texts) -> list[list[int]]       one id per whitespace-separated word, plus [CLS]/[SEP]; not truncated
    .truncate(ids) -> list[int]               keeps the first max_tokens - 1 ids and the closing [SEP]
    .embed_ids(ids) -> np.ndarray float32     [len(ids), dimension]; a row depends only on its own ids, not
                                              normalized (norm != 1), so normalize=True/False is observable
    .embed(texts) -> np.ndarray               tokenize + truncate + embed_ids
    .load() / .warmup() / .verify() / .info()
    .calls: list[int]                         batch size of every embed_ids call (for batcher tests)
    .loaded, .warmed_up: bool
Attributes: dimension, max_tokens, normalize_default, runtime, variant, model_id,
artifacts_dir (None: there is no artifact folder).
"""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np

from services.common.embedder import Embedder

CLS_ID, SEP_ID, VOCAB = 101, 102, 30_000


class FakeEmbedder(Embedder):
    def __init__(
        self,
        dimension: int = 8,
        max_tokens: int = 32,
        normalize_default: bool = True,
        delay_s: float = 0.0,
        load_delay_s: float = 0.0,
        fail_load: Exception | None = None,
        fail_embed: Exception | None = None,
        variant: str = "fake",
        runtime: str = "fake",
        model_id: str = "fake-model",
    ):
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.normalize_default = normalize_default
        self.delay_s = delay_s
        self.load_delay_s = load_delay_s
        self.fail_load = fail_load
        self.fail_embed = fail_embed
        self.variant = variant
        self.runtime = runtime
        self.model_id = model_id
        self.artifacts_dir = None
        self.threads = None
        self.loaded = False
        self.warmed_up = False
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def verify(self) -> None:
        """Nothing to check: there are no files."""

    def load(self) -> None:
        if self.load_delay_s:
            time.sleep(self.load_delay_s)
        if self.fail_load is not None:
            raise self.fail_load
        self.loaded = True

    def warmup(self) -> None:
        self.embed(["warm up"])
        self.warmed_up = True

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[CLS_ID, *(1000 + zlib.crc32(w.encode()) % VOCAB for w in text.split()), SEP_ID] for text in texts]

    def truncate(self, ids: list[int]) -> list[int]:
        return ids if len(ids) <= self.max_tokens else ids[: self.max_tokens - 1] + [ids[-1]]

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        with self._lock:
            self.calls.append(len(ids))
        if self.fail_embed is not None:
            raise self.fail_embed
        if self.delay_s:
            time.sleep(self.delay_s)
        return (
            np.stack([self._vector(row) for row in ids]).astype(np.float32)
            if ids
            else (np.zeros((0, self.dimension), dtype=np.float32))
        )

    def _vector(self, row: list[int]) -> np.ndarray:
        seed = zlib.crc32(np.asarray(row, dtype=np.int64).tobytes())
        return np.random.default_rng(seed).normal(size=self.dimension) * 3.0

    def info(self) -> dict:
        return {
            "model": self.model_id,
            "runtime": self.runtime,
            "variant": self.variant,
            "precision": "fp32",
            "parity": None,
            "dimension": self.dimension,
            "max_tokens": self.max_tokens,
            "pooling": "mean",
            "normalize_default": self.normalize_default,
            "threads": self.threads,
        }
