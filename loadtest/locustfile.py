"""Locust users for both embedding services (web UI and headless).

    locust -f loadtest/locustfile.py                       # web UI on :8089, both user classes
    locust -f loadtest/locustfile.py OnnxApiUser --headless -u 8 -r 8 -t 30s --csv out/onnx

Each request sends 1-16 texts drawn from a fixed corpus of real English sentences, and every response
is validated: status, number of vectors, dimension, finite unit-norm values. A 429 is recorded as the
failure "429 overloaded" so the share of rejections shows in the stats. Settings (env vars):
TORCH_API_URL, ONNX_API_URL, LOADTEST_MAX_BATCH (16), LOADTEST_WAIT_S (0: closed loop, back to back),
LOADTEST_SEED (fixed draws per user).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import FastHttpUser, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # locust loads this file by path
from validation import validate_embeddings  # noqa: E402

_DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "build_artifacts" / "data" / "sentences.txt"
CORPUS_FILE = Path(os.environ.get("LOADTEST_CORPUS", _DEFAULT_CORPUS))
CORPUS = [line.strip() for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
MAX_BATCH = int(os.environ.get("LOADTEST_MAX_BATCH", "16"))
WAIT_S = float(os.environ.get("LOADTEST_WAIT_S", "0"))
SEED = int(os.environ.get("LOADTEST_SEED", "1234"))
_user_counter = 0


class _EmbeddingUser(FastHttpUser):
    abstract = True
    wait_time = constant(WAIT_S)
    dimension: int | None = None

    def on_start(self) -> None:
        global _user_counter
        _user_counter += 1
        self.rng = random.Random(SEED + _user_counter)
        with self.client.get("/info", name="/info", catch_response=True) as response:
            if response.status_code == 200:
                self.dimension = response.json().get("dimension")
                response.success()
            else:
                response.failure(f"/info answered {response.status_code}")

    @task
    def embed(self) -> None:
        count = self.rng.randint(1, MAX_BATCH)
        texts = [self.rng.choice(CORPUS) for _ in range(count)]
        with self.client.post("/embed", json={"inputs": texts}, name="/embed", catch_response=True) as response:
            if response.status_code == 429:
                response.failure("429 overloaded")
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
                return
            reason = validate_embeddings(response.json(), count, self.dimension)
            if reason:
                response.failure(reason)
            else:
                response.success()


class TorchApiUser(_EmbeddingUser):
    host = os.environ.get("TORCH_API_URL", "http://127.0.0.1:8001")


class OnnxApiUser(_EmbeddingUser):
    host = os.environ.get("ONNX_API_URL", "http://127.0.0.1:8002")


@events.init_command_line_parser.add_listener
def _describe(parser) -> None:  # shows up in `locust --help`
    parser.add_argument("--embedding-corpus-info", default=f"{len(CORPUS)} texts from {CORPUS_FILE.name}",
                        help="(info only) corpus the users draw from")
