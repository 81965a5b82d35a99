"""OpenTelemetry tracing: one span per request, continuing an incoming `traceparent`, with child spans for
tokenization, queue wait and model time (as text-embeddings-inference's `--otlp-endpoint`).

Off unless OTLP_ENDPOINT is set (or a test passes a TracerProvider): then nothing of OpenTelemetry is imported and
each request costs one attribute lookup. Spans go out over OTLP/HTTP (protobuf) in a background batch, so a slow
or absent collector never delays an answer. Queue and model spans are written after the fact from the batcher's
timestamps: the model runs in its own thread, for several requests at once, outside any request's context.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("embedding_service")

TRACER_NAME = "embedding_service"


class NoTrace:
    """What a request carries when tracing is off: every call does nothing."""

    enabled = False

    def set(self, key: str, value) -> None:
        pass

    def child(self, name: str, started: float, ended: float, **attributes) -> None:
        pass

    def end(self, status_code: int | None) -> None:
        pass

    def activate(self) -> None:
        return None

    def deactivate(self, token) -> None:
        pass


NO_TRACE = NoTrace()


class RequestTrace:
    """The server span of one request; children are recorded with perf_counter start and end times."""

    enabled = True

    def __init__(self, tracer, span, context):
        self._tracer, self._span, self._context = tracer, span, context
        # perf_counter -> epoch nanoseconds, taken once per request (the two clocks do not drift within it)
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def _ns(self, perf_s: float) -> int:
        return int(perf_s * 1e9) + self._offset_ns

    def set(self, key: str, value) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def activate(self):
        """Make the request's span current (log lines then carry its trace id); returns the token to detach."""
        from opentelemetry import context

        return context.attach(self._context)

    def deactivate(self, token) -> None:
        from opentelemetry import context

        context.detach(token)

    def child(self, name: str, started: float, ended: float, **attributes) -> None:
        span = self._tracer.start_span(
            name,
            context=self._context,
            start_time=self._ns(started),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        span.end(end_time=self._ns(ended))

    def end(self, status_code: int | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        if status_code is not None:
            self._span.set_attribute("http.response.status_code", status_code)
            if status_code >= 500:
                self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()


class Tracing:
    """Starts request traces when enabled; `Tracing(None)` is off."""

    def __init__(self, provider=None, attributes: dict | None = None):
        self.provider = provider
        self.enabled = provider is not None
        self._attributes = attributes or {}
        if self.enabled:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            self._tracer = provider.get_tracer(TRACER_NAME)
            self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_settings(cls, endpoint: str, service_name: str, attributes: dict | None = None) -> Tracing:
        """An OTLP/HTTP exporter to `endpoint` (its /v1/traces), batched in the background; off without one."""
        if not endpoint:
            return cls(None)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        url = endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5)))
        log.info("tracing: OTLP/HTTP to %s as service %s", url, service_name)
        return cls(provider, attributes)

    def start(self, scope) -> NoTrace | RequestTrace:
        """The server span of one HTTP request (ASGI scope), child of the caller's `traceparent` if it sent one."""
        if not self.enabled:
            return NO_TRACE
        from opentelemetry.trace import SpanKind, set_span_in_context

        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(headers)
        path = scope["path"]
        span = self._tracer.start_span(
            f"{scope['method']} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": path, **self._attributes},
        )
        return RequestTrace(self._tracer, span, set_span_in_context(span))

    def shutdown(self) -> None:
        """Flush what is still batched (at shutdown)."""
        if self.enabled:
            try:
                self.provider.shutdown()
            except Exception as exc:  # a collector that went away must not fail the shutdown
                log.warning("tracing: flushing spans at shutdown failed: %s", exc)
