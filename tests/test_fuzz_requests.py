"""Property-based fuzzing of the request schemas: no body of any shape gets a 5xx (fake model: fast lane).

Hypothesis draws arbitrary JSON values (with lone surrogates, control and invisible characters, huge and
nested values), near-valid bodies of both APIs, and raw bytes that are not JSON at all.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.app import create_app
from services.common.settings import ServiceSettings

from .fakes import FakeEmbedder

# Text that reaches the tokenizer in odd shapes: surrogates, NUL, zero-width and bidi marks, combining marks.
odd_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["\ud800", "\udfff tail", "\u0000", "\u200b\u200b", "\u202e", "e\u0301", " ", "\t\n", "\ufeff", "x" * 5000]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=20,
)
texts = odd_text | st.lists(odd_text, max_size=10)
embed_bodies = st.fixed_dictionaries(
    {"inputs": texts | json_values}, optional={"normalize": json_values, "truncate": json_values, "extra": json_values}
)
openai_bodies = st.fixed_dictionaries(
    {"input": texts | json_values},
    optional={"model": json_values, "encoding_format": json_values, "dimensions": json_values, "user": json_values},
)


@pytest.fixture(scope="module")
def client():
    app = create_app(ServiceSettings(max_client_batch_size=8, max_payload_bytes=20_000), FakeEmbedder(max_tokens=16))
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 10
        while test_client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield test_client


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error", "error_type"} and body["error"], body


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _post_json(client, path: str, body) -> None:
    # json.dumps keeps lone surrogates as \ud800 escapes, as a hostile client would send them.
    _check(client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@FUZZ
@given(body=embed_bodies | json_values)
def test_embed_never_answers_5xx(client, body):
    _post_json(client, "/embed", body)


@FUZZ
@given(body=openai_bodies | json_values)
def test_openai_embeddings_never_answers_5xx(client, body):
    _post_json(client, "/v1/embeddings", body)


@FUZZ
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_raw_bytes_never_answer_5xx(client, raw, content_type):
    for path in ("/embed", "/v1/embeddings"):
        _check(client.post(path, content=raw, headers={"content-type": content_type} if content_type else {}))


def test_a_lone_surrogate_in_the_model_name_is_a_400_not_a_500(client):
    """Found by the fuzzer: the OpenAI answer echoes `model`, and a lone surrogate cannot be written as JSON."""
    response = client.post(
        "/v1/embeddings",
        content=json.dumps({"input": "0", "model": "\ud800"}).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error_type"] == "invalid_text", response.text
    ok = client.post("/v1/embeddings", json={"input": "0", "model": "any-name"})
    assert ok.status_code == 200 and ok.json()["model"] == "any-name"
