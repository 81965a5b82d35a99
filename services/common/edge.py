"""What is decided before a route runs, cheapest first, as pure ASGI (nothing is parsed for a rejection)."""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi.responses import Response

from .admission import Overloaded, in_flight_overload
from .errors import ApiError, ErrorType
from .handling import ServingState, overloaded
from .metrics import ServiceMetrics
from .settings import ServiceSettings
from .tracing import NO_TRACE, NoTrace, RequestTrace, Tracing

# POST routes that embed (POST / is /embed, as text-embeddings-inference answers it for an embedding model).
EMBED_ROUTES = ("/embed", "/v1/embeddings", "/")
# Routes behind admission (draining, requests in flight, the queue's wait): tokenizing competes with the model
# for the same cores, so it is shed with the embedding work.
WORK_ROUTES = (*EMBED_ROUTES, "/tokenize", "/decode")
METRIC_ROUTES = (*WORK_ROUTES, "/health", "/info", "/metrics", "/v1/models")
OPEN_ROUTES = ("/health",)  # answered without an API key: probes of orchestrators and load balancers


class EdgeMiddleware:
    """Everything decided before a route runs, cheapest first (pure ASGI, so nothing is parsed on rejection).

    API key (401) -> draining (503) -> requests in flight (429) -> the queue's estimated wait (429, before the
    body is read) -> the body, read with a size limit (413) and a time limit (408). It also counts requests.
    """

    def __init__(self, app, settings: ServiceSettings, state: ServingState, metrics: ServiceMetrics, tracing: Tracing):
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
            return ApiError(
                ErrorType.UNAUTHORIZED,
                "missing or wrong API key: send Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            ).response(path)
        if not embedding:
            return None
        if self.state.draining:
            return ApiError(
                ErrorType.UNHEALTHY,
                "the service is shutting down; retry on another replica",
                {"Retry-After": "1", "Connection": "close"},
            ).response(path)
        admission = self.state.batcher.admission if self.state.batcher is not None else None
        try:
            if self.state.in_flight > self.settings.max_concurrent_requests:
                self.metrics.rejected.labels(reason="concurrency").inc()
                raise in_flight_overload(self.settings.max_concurrent_requests, admission)
            if self.state.ready and admission is not None:
                admission.check()
        except Overloaded as exc:
            return overloaded(exc).response(path)
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
                return await closing_error(ErrorType.TIMEOUT, reason, scope["path"])(scope, receive, send)
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


def closing_error(error_type: ErrorType, message: str, path: str = "") -> Response:
    """An error answered before the body was read to its end: the connection cannot carry another request."""
    return ApiError(error_type, message, {"Connection": "close"}).response(path)


def body_too_large(max_bytes: int, path: str = "") -> Response:
    return closing_error(ErrorType.TOO_LARGE, f"request body is larger than {max_bytes} bytes", path)
