"""Dynamic batching: concurrent requests are merged into one model call.

Requests arrive tokenized; their texts are queued one by one (a request may span several model
calls). The worker takes texts in arrival order up to `max_batch_size` texts and `max_batch_tokens`
padded tokens, waiting at most `max_wait_ms` for a batch to fill, and hands them to the embedder in a
single worker thread so the event loop stays free (the embedder sorts by length and groups to cut
padding). A full queue rejects at once (429).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .metrics import ServiceMetrics

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    pass


@dataclass
class _Job:
    size: int
    future: asyncio.Future
    enqueued_at: float
    results: list = field(default_factory=list)
    remaining: int = 0
    started_at: float | None = None

    def __post_init__(self):
        self.results = [None] * self.size
        self.remaining = self.size


@dataclass
class _Item:
    job: _Job
    index: int
    token_ids: list[int]

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class BatchResult:
    embeddings: np.ndarray
    queue_ms: float
    inference_ms: float


class DynamicBatcher:
    def __init__(self, embed_fn: Callable[[list[list[int]]], np.ndarray], metrics: ServiceMetrics, max_batch_size: int = 32,
                 max_batch_tokens: int = 16384, max_wait_ms: float = 5.0, queue_limit: int = 128):
        self._embed_fn = embed_fn
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_limit = queue_limit
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._queue:
            if not item.job.future.done():
                item.job.future.set_exception(RuntimeError("service is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, token_ids: list[list[int]]) -> BatchResult:
        """Queue one request's tokenized texts; resolves when all of them are embedded."""
        if len(self._queue) + len(token_ids) > self.queue_limit:
            self._metrics.rejected.inc()
            raise QueueFullError(f"queue is full ({len(self._queue)} texts waiting, limit {self.queue_limit})")
        job = _Job(size=len(token_ids), future=asyncio.get_running_loop().create_future(), enqueued_at=time.perf_counter())
        self._queue.extend(_Item(job, i, ids) for i, ids in enumerate(token_ids))
        self._metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        await job.future
        finished = time.perf_counter()
        return BatchResult(
            embeddings=np.stack(job.results),
            queue_ms=(job.started_at - job.enqueued_at) * 1000.0,
            inference_ms=(finished - job.started_at) * 1000.0,
        )

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        longest = 0
        while self._queue and len(batch) < self.max_batch_size:
            candidate = self._queue[0]
            widest = max(longest, candidate.tokens)
            if batch and widest * (len(batch) + 1) > self.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
            longest = widest
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Let a batch fill for up to max_wait_ms after its oldest text arrived.
            deadline = self._queue[0].job.enqueued_at + self.max_wait_s
            while len(self._queue) < self.max_batch_size and (delay := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                except TimeoutError:
                    break
            batch = self._take_batch()
            self._metrics.queue_depth.set(len(self._queue))
            started = time.perf_counter()
            for item in batch:
                if item.job.started_at is None:
                    item.job.started_at = started
            try:
                vectors = await loop.run_in_executor(self._executor, self._embed_fn, [item.token_ids for item in batch])
            except Exception as exc:  # a model failure fails the requests in this batch, not the service
                log.exception("model call failed for a batch of %d texts", len(batch))
                for item in batch:
                    if not item.job.future.done():
                        item.job.future.set_exception(exc)
                continue
            self._metrics.inference_time.observe(time.perf_counter() - started)
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_requests.observe(len({id(item.job) for item in batch}))
            self._metrics.batch_tokens.observe(len(batch) * max(item.tokens for item in batch))
            self._metrics.texts.inc(len(batch))
            for item, vector in zip(batch, vectors):
                job = item.job
                job.results[item.index] = vector
                job.remaining -= 1
                if job.remaining == 0 and not job.future.done():
                    self._metrics.queue_time.observe(job.started_at - job.enqueued_at)
                    job.future.set_result(None)
