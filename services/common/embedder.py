"""The one interface each service implements (token ids -> float32 array, warm-up, info); its artifact-backed base."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.batching import padding_efficient_groups
from runtime.manifest import ArtifactError, Manifest
from runtime.measure_here import HostMeasurements
from runtime.memory import HeapTrimmer, MemoryBounds
from runtime.pooling import normalize_rows
from runtime.selection import Choice, choose
from runtime.tokenization import TextTokenizer
from runtime.variants import VARIANTS, Variant
from runtime.variants import variant as variant_row

WARMUP_TEXTS = ["warm up", "A longer sentence that warms up the kernels for a second, wider shape of input."]
# Where sentence-transformers keeps a model's prompts (and default_prompt_name); build_artifacts copies it next to
# the fp32 weights.
ST_CONFIG = "config_sentence_transformers.json"


@dataclass(frozen=True)
class Token:
    """One token as text-embeddings-inference's /tokenize shows it (offsets in characters of the input)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


def read_prompts(artifacts_dir: Path, manifest: Manifest) -> tuple[dict[str, str], str | None]:
    """(prompts, default prompt name) of the model's sentence-transformers config; none when it has none.

    Read from the manifest's model record where a build recorded it, else from the config file the build copied
    next to the fp32 weights.
    """
    recorded = manifest.model.extra.get("prompts")
    if isinstance(recorded, dict):
        return ({str(k): str(v) for k, v in recorded.items()}, manifest.model.extra.get("default_prompt_name") or None)
    candidates = [Path(artifacts_dir) / ST_CONFIG]
    if "torch_fp32" in manifest.artifacts:
        candidates.append(manifest.path_of(artifacts_dir, "torch_fp32") / ST_CONFIG)
    for path in candidates:
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            prompts = config.get("prompts") or {}
            if isinstance(prompts, dict):
                return {str(k): str(v) for k, v in prompts.items()}, config.get("default_prompt_name") or None
    return {}, None


class Embedder(ABC):
    """What the HTTP layer sees: token ids in, float32 vectors out, plus load / warm-up / checks / info.

    Implementations: ArtifactEmbedder (a built artifact, below) and tests/fakes.py (no weights).
    """

    runtime: str = ""
    variant: str = ""
    artifacts_dir: Path | None = None  # the artifact folder served from (None: no files, as in tests)
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

    # Model prompts (sentence-transformers `prompts`), put before a text by name; none unless the model has some.
    prompts: dict[str, str] = {}
    default_prompt_name: str | None = None

    def run_batch(self, ids: list[list[int]]) -> np.ndarray:
        """Exactly one model call on these rows (the batcher owns batch shape); default: embed_ids."""
        return self.embed_ids(ids)

    def release_memory(self) -> None:
        """Between model calls, in the model's thread: hand freed memory back (runtime.memory). Default: nothing."""
        return None

    def memory_info(self) -> dict:
        """How this embedder bounds its memory, for /info."""
        return {}

    def truncate_left(self, ids: list[int]) -> list[int]:
        """Keep the end of a text: the opening special token and the last max_tokens - 1 ids (the closing one
        among them), mirroring `truncate`, which keeps the beginning and the closing token."""
        if len(ids) <= self.max_tokens:
            return ids
        return ids[:1] + ids[len(ids) - (self.max_tokens - 1) :]

    @property
    def vocab_size(self) -> int | None:
        """Ids the tokenizer knows (token-id inputs are checked against it); None: unknown, not checked."""
        return None

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[list[Token]]:
        """Tokens with their text and character offsets, for /tokenize. Default: ids only (no text known)."""
        rows = self.tokenize(texts)
        return [[Token(i, "", False, None, None) for i in row] for row in rows]

    def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """Token ids -> text, for /decode (raises ValueError on an unknown id, NotImplementedError if the
        tokenizer cannot decode)."""
        raise NotImplementedError("this model's tokenizer cannot decode")

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
    artifacts_dir: Path

    def __init__(
        self,
        artifacts_dir: Path,
        variant: str = "auto",
        threads: int | None = None,
        device: str = "cpu",
        allowed: tuple[str, ...] | None = None,
        memory: MemoryBounds | None = None,
    ):
        # before any engine runs here (the choice may time variants): oneDNN reads its cache capacity once
        self.memory = memory or MemoryBounds()
        self.memory.apply()
        self._trimmer = HeapTrimmer(self.memory.trim_interval_s)
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest = Manifest.load(self.artifacts_dir)
        self.threads = threads
        here = HostMeasurements(self.artifacts_dir, self.manifest, threads)
        rows = VARIANTS if allowed is None else tuple(v for v in VARIANTS if v.name in allowed)
        self.choice: Choice = choose(
            self.manifest, self.service, variant, device, recheck=here.recheck, time_here=here.time_here, rows=rows
        )
        self.variant = self.choice.variant
        self.row: Variant = variant_row(self.variant)
        self.runtime = self.row.engine
        model = self.manifest.model
        self.model_id = model.source
        self.dimension = model.dimension
        self.max_tokens = model.max_seq_length
        self.normalize_default = model.normalize
        self.prompts, self.default_prompt_name = read_prompts(self.artifacts_dir, self.manifest)
        self._tokenizer: TextTokenizer | None = None
        self._hf_tokenizer: Any = None  # tokenizers.Tokenizer, for offsets and decoding (/tokenize, /decode)

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not run: there is no tokenizer yet")
        return self._tokenizer

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
        from tokenizers import Tokenizer

        tokenizer_file = self.artifacts_dir / self.manifest.tokenizer.path
        self._tokenizer = TextTokenizer(tokenizer_file, self.max_tokens)
        self._hf_tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._hf_tokenizer.no_padding()
        self._hf_tokenizer.no_truncation()
        self._load_model()

    @property
    def vocab_size(self) -> int | None:
        return self._hf_tokenizer.get_vocab_size(with_added_tokens=True) if self._hf_tokenizer else None

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[list[Token]]:
        out = []
        encodings = self._hf_tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        for text, encoding in zip(texts, encodings, strict=True):
            row = []
            for token_id, token, (start, stop), special in zip(
                encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask, strict=True
            ):
                # tokenizers' offsets count characters of the Python string, as TEI's do
                if special:
                    row.append(Token(token_id, token, True, None, None))
                else:
                    row.append(Token(token_id, text[start:stop], False, start, stop))
            out.append(row)
        return out

    def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        size = self.vocab_size or 0
        for row in ids:
            bad = next((i for i in row if not 0 <= i < size), None)
            if bad is not None:
                raise ValueError(f"{bad} is not a token id of this model (0 .. {size - 1})")
        return self._hf_tokenizer.decode_batch(ids, skip_special_tokens=skip_special_tokens)

    def release_memory(self) -> None:
        self._trimmer.maybe_trim()

    def memory_info(self) -> dict:
        return {**self.memory.to_dict(), "heap_trims": self._trimmer.trims}

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


__all__ = ["ArtifactEmbedder", "ArtifactError", "Embedder", "Token", "normalize_rows"]
