"""Measurements a variant gets on the host it runs on: speed on service-shaped batches, and the start-up
fidelity re-check against the fp32 reference vectors an artifact folder ships.

The build times every variant with `service_speed` (recorded in the manifest with the CPU); a service on
another CPU times its candidates with the same function, on the same texts, before choosing. The re-check
embeds the shipped texts in service batches and applies the gate to them (`runtime.similarity`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .batching import padding_efficient_groups
from .manifest import ArtifactError, FileEntry, Manifest
from .similarity import MIN_TOP10_AGREEMENT, PARITY_MIN_COSINE, fidelity_report, service_batches
from .tokenization import TextTokenizer

#: in the artifact folder: the texts (re-check and speed) and the fp32 reference vectors of the re-check texts
CHECK_TEXTS_FILE = "fidelity/check_texts.json"
CHECK_VECTORS_FILE = "fidelity/reference_vectors.npy"
#: the service's batch: the speed figure is texts/s over one batch of this many mixed texts
SPEED_BATCH_TEXTS = 32

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


def service_speed(
    run: Run, tokenizer: TextTokenizer, batch_texts: list[str], one_text: str, rounds: int = 3, one_text_rounds: int = 5
) -> dict:
    """Median time of one short text and of a batch of mixed texts cut into calls as the services' batcher
    cuts them (runtime.batching); each after one untimed warm-up call."""
    one = tokenizer.encode([one_text])
    rows = tokenizer.token_ids(batch_texts)
    groups = [tokenizer.pad([rows[i] for i in g]) for g in padding_efficient_groups([len(r) for r in rows])]

    def batch():
        for encoded in groups:
            run(encoded.input_ids, encoded.attention_mask)

    def median_ms(fn, n):
        fn()
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return float(np.median(samples) * 1000)

    one_ms = median_ms(lambda: run(one.input_ids, one.attention_mask), one_text_rounds)
    batch_ms = median_ms(batch, rounds)
    return {
        "texts_per_s": round(len(batch_texts) / batch_ms * 1000, 2),
        "batch_ms": round(batch_ms, 1),
        "batch_texts": len(batch_texts),
        "one_text_ms": round(one_ms, 2),
    }


def embed_in_groups(run: Run, tokenizer: TextTokenizer, texts: list[str], groups: list[list[int]]) -> np.ndarray:
    """Embeddings in text order, one model call per group of text indices."""
    out = None
    for group in groups:
        batch = tokenizer.encode([texts[i] for i in group])
        vectors = run(batch.input_ids, batch.attention_mask)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[group] = vectors
    assert out is not None, "no texts to embed"
    return out


def embed_in_service_batches(
    run: Run, tokenizer: TextTokenizer, texts: list[str], max_batch: int = 32, window: int = 64
) -> np.ndarray:
    """Embeddings in text order, computed in the groups a service forms (runtime.similarity.service_batches):
    mixed lengths and batch mates, as dynamic int8 meets them when served."""
    return embed_in_groups(run, tokenizer, texts, service_batches(tokenizer.count_tokens(texts), max_batch, window))


def check_files(manifest: Manifest) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(**f) for f in manifest.parity.get("check", {}).get("files", ()))


def load_check(artifacts_dir: Path, manifest: Manifest) -> tuple[dict, np.ndarray] | None:
    """(texts, fp32 reference vectors of texts["recheck"]) or None where the folder ships none (older builds)."""
    entries = check_files(manifest)
    if not entries:
        return None
    for entry in entries:
        entry.verify(artifacts_dir)
    texts = json.loads((Path(artifacts_dir) / CHECK_TEXTS_FILE).read_text(encoding="utf-8"))
    vectors = np.load(Path(artifacts_dir) / CHECK_VECTORS_FILE, allow_pickle=False)
    if len(vectors) != len(texts["recheck"]):
        raise ArtifactError(f"{CHECK_VECTORS_FILE} holds {len(vectors)} vectors for {len(texts['recheck'])} texts")
    return texts, vectors


class HostMeasurements:
    """The `recheck` and `time_here` of runtime.selection.choose for one artifact folder on this host: each
    loads the variant through its table row, measures, and lets it go."""

    def __init__(self, artifacts_dir: Path, manifest: Manifest, threads: int | None = None):
        self.artifacts_dir, self.manifest, self.threads = Path(artifacts_dir), manifest, threads
        self._check = load_check(self.artifacts_dir, manifest)
        self._tokenizer: TextTokenizer | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer(
                self.artifacts_dir / self.manifest.tokenizer.path, self.manifest.model.max_seq_length
            )
        return self._tokenizer

    def recheck(self, row) -> dict | None:
        if self._check is None:
            return None
        texts, reference = self._check
        runner = row.load(self.artifacts_dir, self.manifest, self.threads)
        vectors = embed_in_service_batches(runner.run, self.tokenizer, texts["recheck"])
        gate = self.manifest.parity
        return fidelity_report(
            vectors,
            reference,
            len(reference),
            gate.get("min_cosine_threshold", PARITY_MIN_COSINE),
            gate.get("min_top10_agreement", MIN_TOP10_AGREEMENT),
        )

    def time_here(self, row) -> dict:
        texts: dict[str, Any] = (
            self._check[0] if self._check else {"speed_batch": ["warm up"] * SPEED_BATCH_TEXTS, "speed_one": "warm up"}
        )
        runner = row.load(self.artifacts_dir, self.manifest, self.threads)
        return service_speed(
            runner.run, self.tokenizer, texts["speed_batch"], texts["speed_one"], rounds=2, one_text_rounds=3
        )


__all__ = [
    "CHECK_TEXTS_FILE",
    "CHECK_VECTORS_FILE",
    "HostMeasurements",
    "embed_in_groups",
    "embed_in_service_batches",
    "load_check",
    "service_speed",
]
