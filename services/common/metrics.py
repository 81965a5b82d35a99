"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric a service exports, by what it describes: requests, the model's batches, admission."""

    def __init__(self, prefix: str = "embed"):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory: load reports read
        self._request_metrics(prefix, self.registry)
        self._batch_metrics(prefix, self.registry)
        self._admission_metrics(prefix, self.registry)

    def _request_metrics(self, prefix: str, r: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{prefix}_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            f"{prefix}_request_duration_seconds",
            "Total time per embedding request",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            f"{prefix}_queue_time_seconds",
            "Time a request waited before its batch ran",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(f"{prefix}_requests_in_flight", "Embedding requests being handled", registry=r)

    def _batch_metrics(self, prefix: str, r: CollectorRegistry) -> None:
        self.inference_time = Histogram(
            f"{prefix}_inference_time_seconds",
            "Model time per batch (forward and pooling: texts are tokenized before they queue)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Counter(
            f"{prefix}_model_seconds",
            "Seconds the model ran, timed in its own thread (busy share: its rate)",
            registry=r,
        )
        self.batch_size = Histogram(f"{prefix}_batch_size", "Texts per model call", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            f"{prefix}_batch_requests", "Requests merged into one model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            f"{prefix}_batch_padded_tokens",
            "Padded tokens per model call",
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        self.texts = Counter(f"{prefix}_texts", "Texts embedded", registry=r)
        self.tokens_per_second = Gauge(
            f"{prefix}_measured_padded_tokens_per_second",
            "Padded tokens per second of model time, over the last model calls",
            registry=r,
        )
        self.variant_candidates = Gauge(
            f"{prefix}_variant_candidate_texts_per_second",
            "Variants considered at start-up: texts/s at the service batch (0 where none was measured), with "
            "their verdict (chosen, passes, or why not)",
            ["variant", "precision", "verdict"],
            registry=r,
        )

    def _admission_metrics(self, prefix: str, r: CollectorRegistry) -> None:
        self.queue_depth = Gauge(f"{prefix}_queue_depth", "Texts waiting for a model call", registry=r)
        self.admitted = Counter(f"{prefix}_admitted", "Embedding requests admitted to the queue", registry=r)
        self.rejected = Counter(
            f"{prefix}_rejected",
            "Embedding requests answered 429, by reason "
            "(queue_wait: the estimated wait is over max_queue_wait_ms; concurrency: "
            "max_concurrent_requests in flight)",
            ["reason"],
            registry=r,
        )
        self.dropped_texts = Counter(
            f"{prefix}_dropped_texts",
            "Queued texts dropped before the model, by reason "
            "(disconnected client, deadline passed, model call failed)",
            ["reason"],
            registry=r,
        )
        self.estimated_wait = Gauge(
            f"{prefix}_estimated_queue_wait_seconds",
            "Estimated wait before a request admitted now would start",
            registry=r,
        )
        self.wait_correction = Gauge(
            f"{prefix}_wait_correction",
            "Factor on the raw queue-wait estimate: a high percentile of actual / estimated waits of past requests",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
