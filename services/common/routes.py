"""The routes: a few lines each over EmbeddingService (handling.py). They never import torch or onnxruntime."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .errors import error_responses, openai_error_responses
from .handling import EmbeddingService, with_cancellation
from .metrics import ServiceMetrics
from .schemas import (
    DecodeRequest,
    EmbedRequest,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
    SimpleToken,
    TokenizeRequest,
)

TEI_ERRORS = error_responses(400, 401, 408, 413, 422, 429, 503)


def add_work_routes(app: FastAPI, service: EmbeddingService) -> None:
    """The routes that tokenize or embed (behind admission): TEI's /embed, / , /tokenize, /decode; OpenAI's."""

    @with_cancellation
    async def embed(body: EmbedRequest, request: Request):
        return await service.embed(request, body)

    embed_doc: dict[str, Any] = {"responses": TEI_ERRORS, "response_model": list[list[float]]}
    app.post("/embed", summary="Embed texts (text-embeddings-inference compatible)", **embed_doc)(embed)
    # huggingface_hub's InferenceClient(model=<base url>).feature_extraction posts to the root, as TEI answers.
    app.post(
        "/", summary="Embed texts: the same as /embed (text-embeddings-inference answers the root too)", **embed_doc
    )(embed)

    @app.post(
        "/tokenize",
        summary="Tokens of each text (text-embeddings-inference compatible)",
        responses=TEI_ERRORS,
        response_model=list[list[SimpleToken]],
    )
    async def tokenize(body: TokenizeRequest, request: Request):
        return await service.tokens(request, body)

    @app.post(
        "/decode",
        summary="Text of token ids (text-embeddings-inference compatible)",
        responses=TEI_ERRORS,
        response_model=list[str],
    )
    async def decode(body: DecodeRequest):
        return await service.decode(body)

    @app.post(
        "/v1/embeddings",
        summary="Embed texts or token ids (OpenAI compatible)",
        responses=openai_error_responses(400, 401, 408, 413, 422, 429, 503),
        response_model=OpenAIEmbeddingResponse,
    )
    @with_cancellation
    async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request):
        return await service.openai_embeddings(request, body)


def add_read_routes(app: FastAPI, service: EmbeddingService, metrics: ServiceMetrics, details) -> None:
    """Discovery, health, details and metrics. details: () -> dict, what /info answers."""

    @app.get(
        "/v1/models",
        summary="The served model (OpenAI compatible)",
        response_model=OpenAIModelList,
        responses=openai_error_responses(401),
    )
    async def openai_models():
        return OpenAIModelList(data=[service.served_model()])

    @app.get(
        "/v1/models/{model_id:path}",
        summary="The served model by name (OpenAI compatible)",
        response_model=OpenAIModel,
        responses=openai_error_responses(401, 404),
    )
    async def openai_model(model_id: str):
        return service.served_model(model_id)

    @app.get("/health", summary="200 once warmed up; 503 before, and from SIGTERM on", responses=error_responses(503))
    async def health():
        service.require_ready()
        return {"status": "ok", "variant": service.embedder.variant}

    @app.get("/info", responses=error_responses(401))
    async def info():  # the name is the OpenAPI operation's (info_info_get)
        return details()

    @app.get("/metrics", summary="Prometheus metrics", responses=error_responses(401))
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
