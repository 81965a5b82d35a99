"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self, prefix: str = "embed"):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{prefix}_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_duration = Histogram(f"{prefix}_request_duration_seconds", "Total time per embedding request",
                                          ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(f"{prefix}_queue_time_seconds", "Time a request waited before its batch ran",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram(f"{prefix}_inference_time_seconds", "Model time per batch (tokenize + forward)",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{prefix}_batch_size", "Texts per model call", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(f"{prefix}_batch_requests", "Requests merged into one model call",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram(f"{prefix}_batch_padded_tokens", "Padded tokens per model call",
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536), registry=r)
        self.queue_depth = Gauge(f"{prefix}_queue_depth", "Texts waiting for a model call", registry=r)
        self.texts = Counter(f"{prefix}_texts", "Texts embedded", registry=r)
        self.rejected = Counter(f"{prefix}_rejected", "Requests rejected because the queue was full", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
