"""The client libraries, unchanged and with their defaults, against both services on real MiniLM weights over
real HTTP (slow): vectors within cosine 0.99 of the same texts sent as strings to /embed."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from runtime.manifest import Manifest
from services.common.app import create_app
from services.common.embedder import read_prompts
from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings

from .compat_helpers import (
    DOCUMENTS,
    SERVICE_NAMES,
    min_cosine,
    real_service,
    seed_tiktoken_cache,
    serving,
    tei_vectors,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=SERVICE_NAMES)
def base(request, minilm_artifacts):
    with real_service(request.param, minilm_artifacts) as url:
        yield url


def test_langchain_openai_embeddings_defaults_match_embed(base, tmp_path, monkeypatch):
    from langchain_openai import OpenAIEmbeddings

    seed_tiktoken_cache(tmp_path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    expected = tei_vectors(base, DOCUMENTS)
    defaults = OpenAIEmbeddings(base_url=f"{base}/v1", api_key="unused")  # tiktoken ids on the wire
    assert min_cosine(defaults.embed_documents(DOCUMENTS), expected) >= 0.99
    assert min_cosine([defaults.embed_query(DOCUMENTS[0])], expected[:1]) >= 0.99
    plain = OpenAIEmbeddings(base_url=f"{base}/v1", api_key="unused", check_embedding_ctx_length=False)
    assert min_cosine(plain.embed_documents(DOCUMENTS), expected) >= 0.999
    with_empty = defaults.embed_documents(["", DOCUMENTS[0]])
    assert np.isclose(np.linalg.norm(with_empty[0]), 1.0, atol=1e-4)


def test_openai_client_models_dimensions_and_base64(base):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["minilm"]
    full = client.embeddings.create(input=DOCUMENTS, model="minilm")  # base64 on the wire
    assert min_cosine([d.embedding for d in full.data], tei_vectors(base, DOCUMENTS)) >= 0.999
    short = client.embeddings.create(input=DOCUMENTS, model="minilm", dimensions=128)
    raw = np.asarray(httpx.post(f"{base}/embed", json={"inputs": DOCUMENTS, "normalize": False}).json())
    expected = raw[:, :128] / np.linalg.norm(raw[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose([d.embedding for d in short.data], expected, atol=1e-4)
    tokens = httpx.post(f"{base}/tokenize", json={"inputs": DOCUMENTS}).json()
    assert full.usage.prompt_tokens == sum(map(len, tokens))
    with pytest.raises(BadRequestError) as caught:
        client.embeddings.create(input="x", model="minilm", dimensions=385)
    assert caught.value.param == "dimensions"


def test_huggingface_hub_inference_client_at_the_root(base):
    from huggingface_hub import InferenceClient

    got = np.asarray(InferenceClient(model=base).feature_extraction(DOCUMENTS[0])).reshape(1, -1)
    assert min_cosine(got, tei_vectors(base, DOCUMENTS[:1])) >= 0.999


def test_tokenize_offsets_and_decode_on_the_real_tokenizer(base):
    rows = httpx.post(f"{base}/tokenize", json={"inputs": DOCUMENTS[:3]}).json()
    for text, row in zip(DOCUMENTS, rows, strict=False):
        assert row[0]["special"] and row[0]["text"] == "[CLS]" and row[-1]["text"] == "[SEP]"
        for token in row[1:-1]:
            assert text[token["start"] : token["stop"]] == token["text"], token
    decoded = httpx.post(f"{base}/decode", json={"ids": [[t["id"] for t in rows[0]]]}).json()
    assert decoded == [DOCUMENTS[0].lower()]  # an uncased WordPiece vocabulary
    bad = httpx.post(f"{base}/decode", json={"ids": [10**6]})
    assert bad.status_code == 400 and "not a token id" in bad.json()["error"]


def test_truncation_direction_on_a_long_text(base):
    long_text = " ".join(DOCUMENTS * 40)
    right = httpx.post(f"{base}/embed", json={"inputs": long_text, "truncation_direction": "Right"})
    left = httpx.post(f"{base}/embed", json={"inputs": long_text, "truncation_direction": "Left"})
    assert right.status_code == left.status_code == 200
    assert min_cosine(right.json(), left.json()) < 0.9999  # a different end of the text was kept
    unknown_prompt = httpx.post(f"{base}/embed", json={"inputs": "x", "prompt_name": "query"})
    assert unknown_prompt.status_code == 400 and "no prompts" in unknown_prompt.json()["error"]


def test_model_token_ids_from_tokenize_give_the_texts_vector(minilm_artifacts):
    settings = OnnxSettings(artifacts_dir=minilm_artifacts, threads=1, token_ids="model")
    with serving(create_app(settings, OnnxEmbedder(settings)), timeout_s=300) as url:
        ids = [[t["id"] for t in row] for row in httpx.post(f"{url}/tokenize", json={"inputs": DOCUMENTS}).json()]
        by_ids = httpx.post(f"{url}/v1/embeddings", json={"input": ids}).json()["data"]
        assert min_cosine([d["embedding"] for d in by_ids], tei_vectors(url, DOCUMENTS)) >= 0.999


def test_prompts_are_read_from_the_sentence_transformers_config(minilm_artifacts, tmp_path):
    manifest = Manifest.load(minilm_artifacts)
    assert read_prompts(minilm_artifacts, manifest) == ({}, None)  # all-MiniLM-L6-v2 defines none
    config = {"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": "query"}
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(config))
    assert read_prompts(tmp_path, manifest) == ({"query": "query: ", "document": ""}, "query")
