"""Two more client libraries, unchanged, against both services on real MiniLM weights over real HTTP (slow):
LlamaIndex's TEI embedding (it posts {"inputs": [...], "truncate": true} to /embed) within cosine 0.99 of the same
texts sent as strings to /embed, and LangChain's standard embeddings suite (langchain-tests) on OpenAIEmbeddings,
with plain text on the wire and with LangChain's defaults (cl100k_base ids, which TOKEN_IDS=tiktoken decodes)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from langchain_openai import OpenAIEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from .compat_helpers import DOCUMENTS, SERVICE_NAMES, min_cosine, real_service, seed_tiktoken_cache, tei_vectors

# anyio runs the async tests (langchain-tests' aembed_* and ours); it leaves the sync ones alone.
pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module", params=SERVICE_NAMES)
def base(request, minilm_artifacts):
    with real_service(request.param, minilm_artifacts) as url:
        yield url


def llama_index_tei(base: str, **kwargs):
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    # A model name with no instruction in LlamaIndex's table, so the texts go out as they are.
    return TextEmbeddingsInference(model_name="sentence-transformers/all-MiniLM-L6-v2", base_url=base, **kwargs)


def test_llama_index_tei_single_and_batch_match_embed(base):
    expected = tei_vectors(base, DOCUMENTS)
    embed = llama_index_tei(base)
    assert min_cosine([embed.get_text_embedding(DOCUMENTS[0])], expected[:1]) >= 0.99
    assert min_cosine([embed.get_query_embedding(DOCUMENTS[1])], expected[1:2]) >= 0.99
    assert min_cosine(embed.get_text_embedding_batch(DOCUMENTS), expected) >= 0.99
    in_threes = llama_index_tei(base, embed_batch_size=3)  # two requests, 3 texts then 1
    assert min_cosine(in_threes.get_text_embedding_batch(DOCUMENTS), expected) >= 0.99
    long_text = " ".join(DOCUMENTS * 40)  # over MiniLM's 256 tokens: its truncate=true has it cut, not refused
    assert min_cosine([embed.get_text_embedding(long_text)], tei_vectors(base, [long_text])) >= 0.99


async def test_llama_index_tei_async_matches_embed(base):
    expected = tei_vectors(base, DOCUMENTS)
    embed = llama_index_tei(base, embed_batch_size=3)
    assert min_cosine([await embed.aget_text_embedding(DOCUMENTS[2])], expected[2:3]) >= 0.99
    assert min_cosine(await embed.aget_text_embedding_batch(DOCUMENTS), expected) >= 0.99
    assert np.isclose(np.linalg.norm(await embed.aget_query_embedding(DOCUMENTS[3])), 1.0, atol=1e-4)


def no_keep_alive() -> httpx.AsyncClient:
    """The async client's connections close with each answer: a pooled one left for garbage collection would be
    closed on an event loop anyio has already closed ("Event loop is closed" in a later test)."""
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))


class TestOpenAIEmbeddingsStandard(EmbeddingsIntegrationTests):
    """langchain-tests' standard suite: OpenAIEmbeddings sending the texts (check_embedding_ctx_length=False)."""

    @pytest.fixture(autouse=True)
    def _service(self, base):
        self.base_url = base  # read by embedding_model_params when the suite's `model` fixture builds the client

    @property
    def embeddings_class(self) -> type[OpenAIEmbeddings]:
        return OpenAIEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {
            "model": "minilm",
            "base_url": f"{self.base_url}/v1",
            "api_key": "unused",
            "check_embedding_ctx_length": False,
            "http_async_client": no_keep_alive(),
        }


class TestOpenAIEmbeddingsStandardDefaults(TestOpenAIEmbeddingsStandard):
    """The same suite with LangChain's defaults: cl100k_base token ids on the wire (tiktoken works offline here)."""

    @pytest.fixture(autouse=True)
    def _tiktoken_offline(self, tmp_path, monkeypatch):
        seed_tiktoken_cache(tmp_path)
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    @property
    def embedding_model_params(self) -> dict:
        return {"base_url": f"{self.base_url}/v1", "api_key": "unused", "http_async_client": no_keep_alive()}
