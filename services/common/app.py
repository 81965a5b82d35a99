"""The app factory and the edge middleware. The request path: edge middleware (here) -> routes.py ->
handling.py (EmbeddingService) -> batcher.py; start and stop in lifecycle.py.

Nothing here imports torch or onnxruntime: each service supplies an Embedder.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import platform
import time
from importlib import metadata

from fastapi import FastAPI
from fastapi.responses import Response

from .admission import Overloaded, in_flight_overload
from .embedder import Embedder
from .errors import ErrorType, error_response, install_error_handlers
from .handling import EmbeddingService, ServingState
from .lifecycle import drain, lifespan_for
from .metrics import ServiceMetrics
from .routes import add_read_routes, add_work_routes
from .settings import ServiceSettings
from .token_ids import TokenIdReader
from .tracing import NO_TRACE, NoTrace, RequestTrace, Tracing

__all__ = ["create_app", "drain"]

log = logging.getLogger("embedding_service")

# POST routes that embed (POST / is /embed, as text-embeddings-inference answers it for an embedding model).
EMBED_ROUTES = ("/embed", "/v1/embeddings", "/")
# Routes behind admission (draining, requests in flight, the queue's wait): tokenizing competes with the model
# for the same cores, so it is shed with the embedding work.
WORK_ROUTES = (*EMBED_ROUTES, "/tokenize", "/decode")
METRIC_ROUTES = (*WORK_ROUTES, "/health", "/info", "/metrics", "/v1/models")
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


class EdgeMiddleware:
    """Everything decided before a route runs, cheapest first (pure ASGI, so nothing is parsed on rejection).

    API key (401) -> draining (503) -> requests in flight (429) -> the queue's estimated wait (429, before the
    body is read) -> the body, read with a size limit (413) and a time limit (408). It also counts requests.
    """

    def __init__(self, app, settings: ServiceSettings, state: ServingState, metrics: ServiceMetrics,
                 tracing: Tracing):
        self.app, self.settings, self.state, self.metrics, self.tracing = app, settings, state, metrics, tracing
        self._keys = [key.encode() for key in settings.api_key_list]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        route = path if path in METRIC_ROUTES else "/v1/models" if path.startswith("/v1/models/") else "other"
        status_seen = []

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        trace: NoTrace | RequestTrace = self.tracing.start(scope) if self.tracing.enabled else NO_TRACE
        scope.setdefault("state", {})["trace"] = trace
        trace_token = trace.activate()
        embedding = path in WORK_ROUTES and scope["method"] == "POST"
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
            if route in WORK_ROUTES:
                self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)
            trace.end(status_seen[0] if status_seen else None)
            trace.deactivate(trace_token)

    def _reject_early(self, scope, path: str, embedding: bool) -> Response | None:
        if self._keys and path not in OPEN_ROUTES and not self._authorized(scope):
            return error_response(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                ErrorType.UNAUTHORIZED.value,
                {"WWW-Authenticate": "Bearer"},
                path,
            )
        if not embedding:
            return None
        if self.state.draining:
            return error_response(
                503,
                "the service is shutting down; retry on another replica",
                ErrorType.UNHEALTHY.value,
                {"Retry-After": "1", "Connection": "close"},
                path,
            )
        admission = self.state.batcher.admission if self.state.batcher is not None else None
        try:
            if self.state.in_flight > self.settings.max_concurrent_requests:
                self.metrics.rejected.labels(reason="concurrency").inc()
                raise in_flight_overload(self.settings.max_concurrent_requests, admission)
            if self.state.ready and admission is not None:
                admission.check()
        except Overloaded as exc:
            return error_response(429, f"overloaded: {exc}; retry later", ErrorType.OVERLOADED.value, exc.headers, path)
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
            return await body_too_large(max_bytes, scope["path"])(scope, receive, send)
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                reason = f"the request body took longer than {self.settings.body_timeout_s:g} s"
                return await closing_error(408, reason, ErrorType.TIMEOUT, scope["path"])(scope, receive, send)
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nothing to answer, nothing to log
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_bytes:
                return await body_too_large(max_bytes, scope["path"])(scope, receive, send)
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


def closing_error(status_code: int, message: str, error_type: ErrorType, path: str = "") -> Response:
    """An error answered before the body was read to its end: the connection cannot carry another request."""
    return error_response(status_code, message, error_type.value, {"Connection": "close"}, path)


def body_too_large(max_bytes: int, path: str = "") -> Response:
    return closing_error(413, f"request body is larger than {max_bytes} bytes", ErrorType.TOO_LARGE, path)


def service_name(settings: ServiceSettings) -> str:
    """torch_api / onnx_api: from the settings' env prefix (TORCH_API_ -> torch_api)."""
    return str(settings.model_config.get("env_prefix", "EMBED_")).rstrip("_").lower() or "embedding_service"


def create_app(settings: ServiceSettings, embedder: Embedder, runtime_packages: tuple[str, ...] = (),
               tracer_provider=None) -> FastAPI:
    """The service's app: the request path (handling.py) behind the edge middleware, with its lifespan.

    tracer_provider: an OpenTelemetry TracerProvider to trace into (tests); by default one exporting over
    OTLP/HTTP when settings.otlp_endpoint is set, else tracing is off.
    """
    metrics = ServiceMetrics()
    trace_attributes = {"embedding.runtime": embedder.runtime, "embedding.variant": embedder.variant}
    tracing = (Tracing(tracer_provider, trace_attributes) if tracer_provider is not None else
               Tracing.from_settings(settings.otlp_endpoint, settings.otlp_service_name or service_name(settings),
                                     trace_attributes))
    model_name = (settings.served_model_name or settings.model_name
                  or public_model_name(str(embedder.info().get("model", ""))))
    service = EmbeddingService(settings, embedder, ServingState(), TokenIdReader(settings.token_ids), model_name)

    app = FastAPI(title=f"Embeddings ({embedder.runtime})", lifespan=lifespan_for(settings, service, metrics, tracing))
    choice = getattr(embedder, "choice", None)
    for candidate in choice.candidates if choice is not None else ():
        metrics.variant_candidates.labels(candidate.name, candidate.precision,
                                          candidate.verdict).set(candidate.texts_per_s or 0)
    app.state.metrics, app.state.embedder, app.state.serving = metrics, embedder, service.state
    app.state.tracing, app.state.service = tracing, service
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware, settings=settings, state=service.state, metrics=metrics, tracing=tracing)
    add_work_routes(app, service)

    def info() -> dict:
        return service.info(tracing.enabled, _versions(runtime_packages) if settings.show_versions else None)

    add_read_routes(app, service, metrics, info)
    return app
