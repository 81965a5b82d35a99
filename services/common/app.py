"""App factory: routes, lifespan (load + warm-up in the background, /health 503 until done), middleware.

Routes only see the Embedder interface; they never import torch or onnxruntime.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import platform
import time
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .batcher import DynamicBatcher, QueueFullError
from .embedder import Embedder, normalize_rows
from .errors import ApiError, ErrorType, error_response, install_error_handlers
from .metrics import ServiceMetrics
from .schemas import EmbedRequest, OpenAIEmbedding, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse, OpenAIUsage
from .settings import ServiceSettings

log = logging.getLogger("embedding_service")


def _versions(runtime_packages: tuple[str, ...]) -> dict:
    out = {"python": platform.python_version()}
    for name in ("fastapi", "uvicorn", "numpy", "tokenizers", *runtime_packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class PayloadLimitMiddleware:
    """Rejects request bodies over the limit with 413 before anything parses them (pure ASGI)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        chunks, size = [], 0
        if not too_large:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    too_large = True
                    break
                if not message.get("more_body", False):
                    break
        if too_large:
            response = error_response(413, f"request body is larger than {self.max_bytes} bytes", ErrorType.TOO_LARGE.value)
            return await response(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(settings: ServiceSettings, embedder: Embedder, runtime_packages: tuple[str, ...] = ()) -> FastAPI:
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready = False
        app.state.load_error = None
        batcher = DynamicBatcher(embedder.embed_ids, metrics, max_batch_size=settings.max_batch_size,
                                 max_batch_tokens=settings.max_batch_tokens, max_wait_ms=settings.max_wait_ms,
                                 queue_limit=settings.queue_limit)
        app.state.batcher = batcher
        batcher.start()
        loader = asyncio.create_task(_load_and_warm_up(app))
        yield
        loader.cancel()
        await batcher.stop()

    async def _load_and_warm_up(app: FastAPI) -> None:
        try:
            started = time.perf_counter()
            await asyncio.to_thread(embedder.load)
            loaded = time.perf_counter()
            await asyncio.to_thread(embedder.warmup)
            warm = time.perf_counter()
            app.state.ready = True
            log.info("model loaded in %.1f s, warmed up in %.1f s: serving %s / %s (dim %d, max %d tokens)",
                     loaded - started, warm - loaded, embedder.runtime, embedder.variant, embedder.dimension,
                     embedder.max_tokens)
        except Exception as exc:  # noqa: BLE001 - reported through /health and the exit code
            app.state.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load; the service stays unhealthy")
            on_failure = getattr(app.state, "on_load_failure", None)
            if on_failure:
                on_failure()

    app = FastAPI(title=f"Embeddings ({embedder.runtime})", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.embedder = embedder
    install_error_handlers(app)
    app.add_middleware(PayloadLimitMiddleware, max_bytes=settings.max_payload_bytes)

    def require_ready(request: Request) -> None:
        if not request.app.state.ready:
            reason = request.app.state.load_error or "model is loading and warming up"
            raise ApiError(ErrorType.UNHEALTHY, f"not ready: {reason}")

    async def validated_texts(inputs: str | list[str], truncate: bool) -> list[list[int]]:
        """Checks the request's limits and tokenizes it once; returns truncated token ids per text."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ApiError(ErrorType.EMPTY, "input is empty: send at least one text")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ApiError(ErrorType.EMPTY, f"input {empty[0]} is an empty string")
        if len(texts) > settings.max_client_batch_size:
            raise ApiError(ErrorType.TOO_LARGE,
                           f"{len(texts)} inputs is more than the limit of {settings.max_client_batch_size} per request")
        ids = await asyncio.to_thread(embedder.tokenize, texts)
        too_long = [i for i, row in enumerate(ids) if len(row) > embedder.max_tokens]
        if too_long and not truncate:
            i = too_long[0]
            raise ApiError(ErrorType.TOO_LARGE,
                           f"input {i} has {len(ids[i])} tokens, more than the limit of {embedder.max_tokens}; "
                           "send truncate=true to cut it")
        return [embedder.truncate(row) for row in ids]

    async def embed_texts(request: Request, token_ids: list[list[int]], normalize: bool):
        try:
            result = await request.app.state.batcher.submit(token_ids)
        except QueueFullError as exc:
            raise ApiError(ErrorType.OVERLOADED, f"overloaded: {exc}; retry later") from None
        except Exception as exc:  # noqa: BLE001
            raise ApiError(ErrorType.BACKEND, f"model call failed: {type(exc).__name__}") from None
        vectors = normalize_rows(result.embeddings) if normalize else result.embeddings
        return vectors, result

    def timing_headers(started: float, result) -> dict:
        return {
            "x-total-time": f"{(time.perf_counter() - started) * 1000:.2f}",
            "x-queue-time": f"{result.queue_ms:.2f}",
            "x-inference-time": f"{result.inference_ms:.2f}",
        }

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path in ("/embed", "/v1/embeddings", "/health", "/info") else "other"
        metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        if route in ("/embed", "/v1/embeddings"):
            metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)
        return response

    @app.post("/embed", summary="Embed texts (text-embeddings-inference compatible)")
    async def embed(body: EmbedRequest, request: Request):
        started = time.perf_counter()
        require_ready(request)
        token_ids = await validated_texts(body.inputs, body.truncate)
        vectors, result = await embed_texts(request, token_ids, body.normalize)
        return JSONResponse(vectors.tolist(), headers=timing_headers(started, result))

    @app.post("/v1/embeddings", summary="Embed texts (OpenAI compatible)")
    async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request):
        started = time.perf_counter()
        require_ready(request)
        if body.dimensions is not None and body.dimensions != embedder.dimension:
            raise ApiError(ErrorType.VALIDATION,
                           f"dimensions={body.dimensions} is not supported: this model returns {embedder.dimension}")
        token_ids = await validated_texts(body.input, truncate=True)
        vectors, result = await embed_texts(request, token_ids, normalize=embedder.normalize_default)
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = vectors.tolist()
        payload = OpenAIEmbeddingResponse(
            data=[OpenAIEmbedding(index=i, embedding=e) for i, e in enumerate(encoded)],
            model=body.model or embedder.manifest["model"]["source"],
            usage=OpenAIUsage(prompt_tokens=sum(map(len, token_ids)), total_tokens=sum(map(len, token_ids))),
        )
        return JSONResponse(payload.model_dump(), headers=timing_headers(started, result))

    @app.get("/health", summary="200 once warmed up, 503 before")
    async def health(request: Request):
        require_ready(request)
        return {"status": "ok", "variant": embedder.variant}

    @app.get("/info")
    async def info(request: Request):
        return {
            **embedder.info(),
            "ready": request.app.state.ready,
            "batching": {
                "max_client_batch_size": settings.max_client_batch_size,
                "max_batch_size": settings.max_batch_size,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_wait_ms": settings.max_wait_ms,
                "queue_limit": settings.queue_limit,
                "max_payload_bytes": settings.max_payload_bytes,
            },
            "versions": _versions(runtime_packages),
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app

