"""App factory: routes, lifespan (load + warm-up in the background, /health 503 until done), the edge middleware.

Routes only see the Embedder interface; they never import torch or onnxruntime.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import platform
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .batcher import DeadlineExceeded, DynamicBatcher, Overloaded, ShuttingDown, retry_after_for
from .embedder import Embedder, normalize_rows
from .errors import ApiError, ErrorType, error_response, error_responses, install_error_handlers
from .metrics import ServiceMetrics
from .schemas import EmbedRequest, OpenAIEmbedding, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse, OpenAIUsage
from .settings import ServiceSettings

log = logging.getLogger("embedding_service")

EMBED_ROUTES = ("/embed", "/v1/embeddings")
OPEN_ROUTES = ("/health",)  # answered without an API key: probes of orchestrators and load balancers


def _versions(runtime_packages: tuple[str, ...]) -> dict:
    out = {"python": platform.python_version()}
    for name in ("fastapi", "uvicorn", "numpy", "tokenizers", *runtime_packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def public_model_name(source: str) -> str:
    """The model as users know it: a hub id stays, a local folder shows only its name (no file paths)."""
    source = source.rstrip("/")
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
        return source.replace("\\", "/").rsplit("/", 1)[-1]
    return source


@dataclass
class ServingState:
    """What the edge middleware and the routes share: readiness, draining, requests in flight."""

    ready: bool = False
    load_error: str | None = None
    draining: bool = False
    in_flight: int = 0
    batcher: DynamicBatcher | None = None


class EdgeMiddleware:
    """Everything decided before a route runs, cheapest first (pure ASGI, so nothing is parsed on rejection).

    API key (401) -> draining (503) -> requests in flight (429) -> the queue's estimated wait (429, before the
    body is read) -> the body, read with a size limit (413) and a time limit (408). It also counts requests.
    """

    def __init__(self, app, settings: ServiceSettings, state: ServingState, metrics: ServiceMetrics):
        self.app, self.settings, self.state, self.metrics = app, settings, state, metrics
        self._keys = [key.encode() for key in settings.api_key_list]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        route = path if path in (*EMBED_ROUTES, "/health", "/info", "/metrics") else "other"
        status_seen = []

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        embedding = path in EMBED_ROUTES and scope["method"] == "POST"
        if embedding:
            self.state.in_flight += 1
            self.metrics.in_flight.inc()
        try:
            rejection = self._reject_early(scope, path, embedding)
            if rejection is not None:
                await rejection(scope, receive, send_counted)
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                await self._with_body(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            if embedding:
                self.state.in_flight -= 1
                self.metrics.in_flight.dec()
            status = str(status_seen[0]) if status_seen else "disconnected"
            self.metrics.requests.labels(route=route, status=status).inc()
            if route in EMBED_ROUTES:
                self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)

    def _reject_early(self, scope, path: str, embedding: bool) -> Response | None:
        if self._keys and path not in OPEN_ROUTES and not self._authorized(scope):
            return error_response(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                ErrorType.UNAUTHORIZED.value,
                {"WWW-Authenticate": "Bearer"},
            )
        if not embedding:
            return None
        if self.state.draining:
            return error_response(
                503,
                "the service is shutting down; retry on another replica",
                ErrorType.UNHEALTHY.value,
                {"Retry-After": "1", "Connection": "close"},
            )
        if self.state.in_flight > self.settings.max_concurrent_requests:
            self.metrics.rejected.labels(reason="concurrency").inc()
            wait = self.state.batcher.estimated_wait_s() if self.state.batcher else 0.0
            return error_response(
                429,
                f"overloaded: {self.settings.max_concurrent_requests} requests in flight; retry later",
                ErrorType.OVERLOADED.value,
                {"Retry-After": str(retry_after_for(wait))},
            )
        if self.state.ready and self.state.batcher is not None:
            try:
                self.state.batcher.check_admission()
            except Overloaded as exc:
                return error_response(
                    429,
                    f"overloaded: {exc}; retry later",
                    ErrorType.OVERLOADED.value,
                    {"Retry-After": str(exc.retry_after_s)},
                )
        return None

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare against every key, in constant time each, so timing says nothing about which was close.
        matches = [hmac.compare_digest(token.strip(), key) for key in self._keys]
        return any(matches)

    async def _with_body(self, scope, receive, send):
        max_bytes = self.settings.max_payload_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await body_too_large(max_bytes)(scope, receive, send)
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                reason = f"the request body took longer than {self.settings.body_timeout_s:g} s"
                return await closing_error(408, reason, ErrorType.TIMEOUT)(scope, receive, send)
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nothing to answer, nothing to log
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_bytes:
                return await body_too_large(max_bytes)(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _client_gone(receive) -> None:
    """Returns once the client has disconnected (the body was already read, so only that can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def drain(app: FastAPI, grace_s: float, delay_s: float = 0.0) -> dict:
    """Stop taking work and let admitted requests finish; cut off what is left at the grace deadline.

    /health answers 503 at once (load balancers stop sending), new embedding requests get 503, requests in
    flight run on. Returns what happened, for the log.
    """
    state: ServingState = app.state.serving
    started = time.monotonic()
    state.draining = True
    at_start = state.in_flight
    log.info("draining: %d request(s) in flight, grace %.0f s", at_start, grace_s)
    while time.monotonic() - started < grace_s and (state.in_flight > 0 or time.monotonic() - started < delay_s):
        await asyncio.sleep(0.05)
    cut_off = state.in_flight
    if cut_off and state.batcher is not None:
        await state.batcher.stop(ShuttingDown(f"cut off at the shutdown grace deadline ({grace_s:g} s)"))
        # Let the routes send their 503s before the server closes the connections.
        for _ in range(40):
            if state.in_flight == 0:
                break
            await asyncio.sleep(0.05)
    summary = {"in_flight_at_sigterm": at_start, "cut_off": cut_off, "seconds": round(time.monotonic() - started, 2)}
    log.info("drained: %s", summary)
    return summary


def closing_error(status_code: int, message: str, error_type: ErrorType) -> Response:
    """An error answered before the body was read to its end: the connection cannot carry another request."""
    return error_response(status_code, message, error_type.value, {"Connection": "close"})


def body_too_large(max_bytes: int) -> Response:
    return closing_error(413, f"request body is larger than {max_bytes} bytes", ErrorType.TOO_LARGE)


def is_valid_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON allows \\ud800 escapes; UTF-8 cannot hold them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def create_app(settings: ServiceSettings, embedder: Embedder, runtime_packages: tuple[str, ...] = ()) -> FastAPI:
    metrics = ServiceMetrics()
    state = ServingState()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = DynamicBatcher(
            embedder.run_batch,
            metrics,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue_wait_ms=settings.max_queue_wait_ms,
        )
        state.batcher = app.state.batcher = batcher
        batcher.start()
        loader = asyncio.create_task(_load_and_warm_up(app, batcher))
        yield
        loader.cancel()
        await batcher.stop()

    async def _load_and_warm_up(app: FastAPI, batcher: DynamicBatcher) -> None:
        try:
            started = time.perf_counter()
            await asyncio.to_thread(embedder.load)
            loaded = time.perf_counter()
            await asyncio.to_thread(embedder.warmup)
            # One timed call of a typical batch, so admission has a measured throughput from the first request.
            await asyncio.to_thread(batcher.calibrate, embedder.tokenize(CALIBRATION_TEXTS))
            app.state.bare_tokens = len(embedder.tokenize([""])[0])
            warm = time.perf_counter()
            state.ready = True
            log.info(
                "model loaded in %.1f s, warmed up in %.1f s: serving %s / %s (dim %d, max %d tokens, "
                "%.0f padded tokens/s measured)",
                loaded - started,
                warm - loaded,
                embedder.runtime,
                embedder.variant,
                embedder.dimension,
                embedder.max_tokens,
                batcher.throughput.padded_tokens_per_s,
            )
        except Exception as exc:  # noqa: BLE001 - reported through /health and the exit code
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s; the service stays unhealthy", state.load_error)
            on_failure = getattr(app.state, "on_load_failure", None)
            if on_failure:
                on_failure()

    app = FastAPI(title=f"Embeddings ({embedder.runtime})", lifespan=lifespan)
    choice = getattr(embedder, "choice", None)
    for candidate in choice.candidates if choice is not None else ():
        metrics.variant_candidates.labels(candidate.name, candidate.precision,
                                          candidate.verdict).set(candidate.texts_per_s or 0)
    app.state.metrics = metrics
    app.state.embedder = embedder
    app.state.serving = state
    app.state.bare_tokens = 0
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware, settings=settings, state=state, metrics=metrics)
    model_name = settings.model_name or public_model_name(str(embedder.info().get("model", "")))

    def require_ready() -> None:
        if state.draining:
            raise ApiError(ErrorType.UNHEALTHY, "the service is shutting down", {"Retry-After": "1"})
        if not state.ready:
            reason = state.load_error or "model is loading and warming up"
            raise ApiError(ErrorType.UNHEALTHY, f"not ready: {reason}", {"Retry-After": "5"})

    async def validated_texts(inputs: str | list[str], truncate: bool) -> list[list[int]]:
        """Checks the request's limits and tokenizes it once; returns truncated token ids per text."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ApiError(ErrorType.EMPTY, "input is empty: send at least one text")
        if len(texts) > settings.max_client_batch_size:
            raise ApiError(
                ErrorType.TOO_LARGE,
                f"{len(texts)} inputs is more than the limit of {settings.max_client_batch_size} per request",
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise ApiError(ErrorType.EMPTY, f"input {i} is an empty string")
            if not is_valid_unicode(text):
                raise ApiError(
                    ErrorType.INVALID_TEXT,
                    f"input {i} is not valid Unicode (it holds a lone surrogate such as \\ud800)",
                )
        ids = await asyncio.to_thread(embedder.tokenize, texts)
        for i, row in enumerate(ids):
            if len(row) <= app.state.bare_tokens:
                raise ApiError(ErrorType.EMPTY, f"input {i} has nothing to embed: only invisible or control characters")
            if len(row) > embedder.max_tokens and not truncate:
                raise ApiError(
                    ErrorType.TOO_LARGE,
                    f"input {i} has {len(row)} tokens, more than the limit of {embedder.max_tokens}; "
                    "send truncate=true to cut it",
                )
        return [embedder.truncate(row) for row in ids]

    async def embed_texts(request: Request, token_ids: list[list[int]], normalize: bool):
        batcher = state.batcher
        try:
            job = batcher.submit(token_ids)
        except Overloaded as exc:
            raise ApiError(
                ErrorType.OVERLOADED, f"overloaded: {exc}; retry later", {"Retry-After": str(exc.retry_after_s)}
            ) from None
        result_task = asyncio.ensure_future(batcher.wait(job))
        gone_task = asyncio.ensure_future(_client_gone(request.receive))
        try:
            await asyncio.wait({result_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone_task.cancel()
        if not result_task.done():  # the client went away: drop its queued texts
            batcher.cancel(job)
            result_task.cancel()
            return None, None
        try:
            result = result_task.result()
        except DeadlineExceeded as exc:  # load shed from the queue: an overload answer, not a server fault
            raise ApiError(
                ErrorType.OVERLOADED, f"overloaded: {exc}; retry later", {"Retry-After": str(exc.retry_after_s)}
            ) from None
        except ShuttingDown as exc:
            raise ApiError(ErrorType.UNHEALTHY, f"not run: {exc}", {"Retry-After": "1"}) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ApiError(ErrorType.BACKEND, f"model call failed: {type(exc).__name__}") from None
        vectors = normalize_rows(result.embeddings) if normalize else result.embeddings
        return vectors, result

    def timing_headers(started: float, result) -> dict:
        return {
            "x-total-time": f"{(time.perf_counter() - started) * 1000:.2f}",
            "x-queue-time": f"{result.queue_ms:.2f}",
            "x-estimated-queue-time": f"{result.estimated_queue_ms:.2f}",  # what admission expected
            "x-inference-time": f"{result.inference_ms:.2f}",
        }

    client_gone = Response(status_code=499)  # never reaches the client: it has gone

    @app.post(
        "/embed",
        summary="Embed texts (text-embeddings-inference compatible)",
        responses=error_responses(400, 401, 408, 413, 422, 429, 503),
    )
    async def embed(body: EmbedRequest, request: Request):
        started = time.perf_counter()
        require_ready()
        token_ids = await validated_texts(body.inputs, body.truncate)
        vectors, result = await embed_texts(request, token_ids, body.normalize)
        if result is None:
            return client_gone
        return JSONResponse(vectors.tolist(), headers=timing_headers(started, result))

    @app.post(
        "/v1/embeddings",
        summary="Embed texts (OpenAI compatible)",
        responses=error_responses(400, 401, 408, 413, 422, 429, 503),
    )
    async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request):
        started = time.perf_counter()
        require_ready()
        if body.dimensions is not None and body.dimensions != embedder.dimension:
            raise ApiError(
                ErrorType.VALIDATION,
                f"dimensions={body.dimensions} is not supported: this model returns {embedder.dimension}",
            )
        if body.model is not None and not is_valid_unicode(body.model):
            # The answer echoes the model name: a lone surrogate could not be written out as JSON.
            raise ApiError(ErrorType.INVALID_TEXT, "model is not valid Unicode (it holds a lone surrogate)")
        token_ids = await validated_texts(body.input, truncate=True)
        vectors, result = await embed_texts(request, token_ids, normalize=embedder.normalize_default)
        if result is None:
            return client_gone
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = vectors.tolist()
        payload = OpenAIEmbeddingResponse(
            data=[OpenAIEmbedding(index=i, embedding=e) for i, e in enumerate(encoded)],
            model=body.model or model_name,
            usage=OpenAIUsage(prompt_tokens=sum(map(len, token_ids)), total_tokens=sum(map(len, token_ids))),
        )
        return JSONResponse(payload.model_dump(), headers=timing_headers(started, result))

    @app.get("/health", summary="200 once warmed up; 503 before, and from SIGTERM on", responses=error_responses(503))
    async def health():
        require_ready()
        return {"status": "ok", "variant": embedder.variant}

    @app.get("/info", responses=error_responses(401))
    async def info():
        batcher = state.batcher
        details = {
            **embedder.info(),
            "model": model_name,
            "ready": state.ready,
            "draining": state.draining,
            "batching": {
                "max_client_batch_size": settings.max_client_batch_size,
                "max_batch_size": settings.max_batch_size,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_wait_ms": settings.max_wait_ms,
                "max_queue_wait_ms": settings.max_queue_wait_ms,
                "max_concurrent_requests": settings.max_concurrent_requests,
                "max_payload_bytes": settings.max_payload_bytes,
            },
            "admission": {
                "estimated_queue_wait_s": round(batcher.estimated_wait_s(), 3) if batcher else None,
                "measured_padded_tokens_per_s": round(batcher.throughput.padded_tokens_per_s, 1) if batcher else None,
                "requests_in_flight": state.in_flight,
            },
        }
        if settings.show_versions:
            details["versions"] = _versions(runtime_packages)
        return details

    @app.get("/metrics", summary="Prometheus metrics", responses=error_responses(401))
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


# A typical mixed batch for the throughput measurement at warm-up (short questions to a paragraph).
CALIBRATION_TEXTS = [
    "How do I reset my password?",
    "The quarterly report shows revenue growth in every region except the north-east, where sales fell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Which trains run from the airport to the city centre after midnight, and how often do they leave?",
] * 4
