"""benchmarks/peer_worker.py, the peers benchmark's sentence-transformers worker, over its stdin/stdout protocol.

Run with the project venv's own python and sentence-transformers' torch backend: the backends it exists for
(OpenVINO, ONNX) need optimum packages that only the peer venv (make peers-env) can hold.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks.peers import PeerError, PeerWorker

pytestmark = pytest.mark.slow

TEXTS = ["A short sentence.", "Another one, a little longer than the first sentence was."]


def test_worker_protocol_and_vectors(minilm_dir):
    from sentence_transformers import SentenceTransformer

    worker = PeerWorker(sys.executable, str(minilm_dir), "torch", threads=1)
    try:
        assert worker.runs == "torch"
        assert worker.environment["packages"]["sentence-transformers"]
        vectors, ms = worker.embed(TEXTS, True)
        none, ms_without = worker.embed(TEXTS[:1], False)
        worker.process.stdin.write(json.dumps({"nope": 1}) + "\n")  # a bad request is answered, not fatal
        worker.process.stdin.flush()
        assert "error" in worker._reply()
        again, _ = worker.embed(TEXTS[:1], True)
    finally:
        worker.close()
    assert worker.process.returncode == 0  # EOF ends it cleanly
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert vectors is not None and vectors.dtype == np.float32 and vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert none is None and again is not None and again.shape == (1, 384)
    assert ms > 0 and ms_without > 0


def test_a_backend_that_cannot_load_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(PeerError):
        PeerWorker(sys.executable, str(tmp_path / "no-such-model"), "torch", threads=1)
