"""Start and stop: the lifespan (queue up, load + warm-up in the background so /health can answer 503 until
done), and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from runtime.memory import resident_mb

from .batcher import DynamicBatcher, ShuttingDown
from .handling import EmbeddingService, ServingState
from .metrics import ServiceMetrics
from .settings import ServiceSettings
from .tracing import Tracing

log = logging.getLogger("embedding_service")

# A typical mixed batch for the throughput measurement at warm-up (short questions to a paragraph).
CALIBRATION_TEXTS = [
    "How do I reset my password?",
    "The quarterly report shows revenue growth in every region except the north-east, where sales fell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Which trains run from the airport to the city centre after midnight, and how often do they leave?",
] * 4


def lifespan_for(settings: ServiceSettings, service: EmbeddingService, metrics: ServiceMetrics, tracing: Tracing):
    """The app's lifespan: the queue runs from start to stop; the model loads beside it (the server listens at
    once, and /health answers 503 until warm)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = DynamicBatcher(
            service.embedder.run_batch,
            metrics,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue_wait_ms=settings.max_queue_wait_ms,
            after_call=service.embedder.release_memory,
        )
        service.state.batcher = app.state.batcher = batcher
        batcher.start()
        loader = asyncio.create_task(load_and_warm_up(app, service, batcher))
        yield
        loader.cancel()
        await batcher.stop()
        await asyncio.to_thread(tracing.shutdown)

    return lifespan


async def load_and_warm_up(app: FastAPI, service: EmbeddingService, batcher: DynamicBatcher) -> None:
    """Load, warm up, time one typical batch (so admission has a measured throughput from the first request),
    then mark the service ready; a failure is reported through /health and the on_load_failure hook."""
    embedder, state = service.embedder, service.state
    try:
        started = time.perf_counter()
        await asyncio.to_thread(embedder.load)
        await asyncio.to_thread(service.token_ids.load)
        loaded = time.perf_counter()
        await asyncio.to_thread(embedder.warmup)
        await asyncio.to_thread(batcher.calibrate, embedder.tokenize(CALIBRATION_TEXTS))
        service.bare_tokens = len(embedder.tokenize([""])[0])
        embedder.release_memory()
        state.rss_after_warmup_mb = resident_mb()
        warm = time.perf_counter()
        state.ready = True
        log.info(
            "model loaded in %.1f s, warmed up in %.1f s: serving %s / %s (dim %d, max %d tokens, "
            "%.0f padded tokens/s measured; RSS %s MB)",
            loaded - started,
            warm - loaded,
            embedder.runtime,
            embedder.variant,
            embedder.dimension,
            embedder.max_tokens,
            batcher.throughput.padded_tokens_per_s,
            state.rss_after_warmup_mb,
        )
    except Exception as exc:  # reported through /health and the exit code
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load: %s; the service stays unhealthy", state.load_error)
        on_failure = getattr(app.state, "on_load_failure", None)
        if on_failure:
            on_failure()


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
