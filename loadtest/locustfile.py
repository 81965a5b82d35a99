"""Locust users for both embedding services (web UI and headless).

    locust -f loadtest/locustfile.py                       # web UI on :8089, both user classes
    locust -f loadtest/locustfile.py OnnxApiUser --headless -u 8 -r 8 -t 30s --csv out/onnx

Each request sends 1-16 texts drawn from a fixed corpus of real English sentences, and every response
is validated: status, number of vectors, dimension, finite unit-norm values. Users behave like good clients:
a 429 is not a failure but its own outcome, counted under the name "/embed 429 (backed off)", and the user
then waits the Retry-After the service sent before its next request. Settings (env vars):
TORCH_API_URL, ONNX_API_URL, LOADTEST_MAX_BATCH (16), LOADTEST_TEXTS (unset: 1..MAX_BATCH at random; a number:
exactly that many texts per request), LOADTEST_WAIT_S (think time between requests; 0: closed loop, back to
back), LOADTEST_HONOR_RETRY_AFTER (1), LOADTEST_SEED (fixed draws per user), LOADTEST_API_KEY (sent as Bearer).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import FastHttpUser, events, task

# Locust loads this file by path: its folder for validation.py, the repository root for the services' table.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from validation import validate_embeddings  # noqa: E402

from services.catalog import ONNX_API, TORCH_API  # noqa: E402

_DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "build_artifacts" / "data" / "sentences.txt"
CORPUS_FILE = Path(os.environ.get("LOADTEST_CORPUS", _DEFAULT_CORPUS))
CORPUS = [line.strip() for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
MAX_BATCH = int(os.environ.get("LOADTEST_MAX_BATCH", "16"))
FIXED_TEXTS = int(os.environ["LOADTEST_TEXTS"]) if os.environ.get("LOADTEST_TEXTS") else None
WAIT_S = float(os.environ.get("LOADTEST_WAIT_S", "0"))
HONOR_RETRY_AFTER = os.environ.get("LOADTEST_HONOR_RETRY_AFTER", "1") != "0"
SEED = int(os.environ.get("LOADTEST_SEED", "1234"))
API_KEY = os.environ.get("LOADTEST_API_KEY", "")
REJECTED_NAME = "/embed 429 (backed off)"
_user_counter = 0


def retry_after_s(headers) -> float:
    """Seconds from a Retry-After header (delta-seconds form; 1 s when absent or unreadable)."""
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


class _EmbeddingUser(FastHttpUser):
    abstract = True
    dimension: int | None = None

    def on_start(self) -> None:
        global _user_counter
        _user_counter += 1
        self.rng = random.Random(SEED + _user_counter)
        self.headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
        self.backoff_s = 0.0
        with self.client.get("/info", name="/info", headers=self.headers, catch_response=True) as response:
            if response.status_code == 200:
                self.dimension = response.json().get("dimension")
                response.success()
            else:
                response.failure(f"/info answered {response.status_code}")

    def wait_time(self) -> float:
        # After a 429 the service's Retry-After, otherwise the think time.
        backoff, self.backoff_s = self.backoff_s, 0.0
        return max(backoff, WAIT_S)

    @task
    def embed(self) -> None:
        count = FIXED_TEXTS or self.rng.randint(1, MAX_BATCH)
        texts = [self.rng.choice(CORPUS) for _ in range(count)]
        with self.client.post(
            "/embed", json={"inputs": texts}, name="/embed", headers=self.headers, catch_response=True
        ) as response:
            if response.status_code == 429:
                # Its own outcome, not a failure: the service said when to come back, and we do.
                response.request_meta["name"] = REJECTED_NAME
                response.success()
                if HONOR_RETRY_AFTER:
                    self.backoff_s = retry_after_s(response.headers)
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
                return
            reason = validate_embeddings(response.json(), count, self.dimension)
            if reason:
                response.failure(reason)
            else:
                response.success()


def _host(service) -> str:
    """$<SERVICE>_URL, else the service's default port on this machine (services/catalog.py)."""
    return os.environ.get(service.url_env, service.local_url())


# One class per row of services/catalog.py, named as its `locust_user` (tests/test_service_catalog.py checks).
class TorchApiUser(_EmbeddingUser):
    host = _host(TORCH_API)


class OnnxApiUser(_EmbeddingUser):
    host = _host(ONNX_API)


@events.init_command_line_parser.add_listener
def _describe(parser) -> None:  # shows up in `locust --help`
    parser.add_argument(
        "--embedding-corpus-info",
        default=f"{len(CORPUS)} texts from {CORPUS_FILE.name}",
        help="(info only) corpus the users draw from",
    )
