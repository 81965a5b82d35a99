"""Dynamic batching: concurrent requests are merged into padding-efficient model calls.

Requests arrive tokenized. The batcher alone decides batch shape: it takes whole requests in arrival order up to
`max_batch_size` texts and `max_batch_tokens` padded tokens (waiting at most `max_wait_ms` for a batch to fill),
sorts them by length and splits them into groups that pad little; every group is exactly one model call. Texts
whose request was cancelled (the client went away) or was shed are dropped before the model.

Whether a request is admitted, and when admitted work is shed, is admission.py's call: the batcher tells its
`Admission` what the queue holds (it is the admission's Backlog), what each model call cost and when each request
started, and asks it.
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

from runtime.batching import padding_efficient_groups

from .admission import Admission, ThroughputEstimate
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)


class ShuttingDown(Exception):
    """The service is draining: the request was not run (or was cut off at the grace deadline)."""


@dataclass(eq=False)
class Job:
    """One request's texts on their way through the queue."""

    size: int
    future: asyncio.Future
    enqueued_at: float
    deadline: float
    results: list = field(default_factory=list)
    remaining: int = 0
    started_at: float | None = None
    retired: bool = False  # dropped before its answer: the client left, its deadline passed, or the model failed
    queued_tokens: int = 0  # tokens of this job's texts still in the queue
    queued_texts: int = 0
    longest: int = 0  # tokens of its longest text
    drop_reason: str = ""  # why its texts left in the queue are dropped: disconnected, deadline, failed
    batch_texts: int = 0  # texts in the batch it (first) ran in: a trace attribute
    finished_at: float | None = None
    estimated_wait_s: float = 0.0  # what admission expected its queue wait to be
    raw_estimate_s: float = 0.0  # the same before the correction from past errors

    def __post_init__(self):
        self.results = [None] * self.size
        self.remaining = self.size

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class _Item:
    job: Job
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
    estimated_queue_ms: float = 0.0
    enqueued_at: float = 0.0  # clock times (perf_counter by default), for trace spans
    started_at: float = 0.0
    finished_at: float = 0.0
    batch_texts: int = 0


class DynamicBatcher:
    """`run_batch(ids)` runs exactly one model call on the rows it is given (padded to the longest).

    clock: every time the queue reads; perf_counter, as trace spans expect. Tests pass a fake one."""

    def __init__(
        self,
        run_batch: Callable[[list[list[int]]], np.ndarray],
        metrics: ServiceMetrics,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_queue_wait_ms: float = 30_000.0,
        clock: Callable[[], float] = time.perf_counter,
        after_call: Callable[[], None] | None = None,
    ):
        self._run_batch = run_batch
        self._after_call = after_call
        self._metrics = metrics
        self._clock = clock
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: deque[_Item] = deque()
        self.queued_tokens = 0  # real tokens of live queued texts
        self.queued_texts = 0
        self.admission = Admission(self, max_batch_size, max_queue_wait_ms / 1000.0, metrics, clock)
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._running_jobs: set[Job] = set()
        metrics.estimated_wait.set_function(self.admission.estimated_wait_s)
        metrics.wait_correction.set_function(lambda: self.admission.wait_correction)
        metrics.tokens_per_second.set_function(lambda: self.admission.throughput.padded_tokens_per_s)
        metrics.queue_depth.set_function(lambda: len(self._queue))

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def throughput(self) -> ThroughputEstimate:
        """The admission's measured model cost (read by /info and the start-up log)."""
        return self.admission.throughput

    def estimated_wait_s(self) -> float:
        """Seconds until a request admitted now would start (admission's estimate, for /info)."""
        return self.admission.estimated_wait_s()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    def calibrate(self, token_ids: list[list[int]]) -> None:
        """Time model calls of one text and of the batch outside the queue (blocking; at warm-up), so that
        admission starts from measured costs of a small and a large call."""
        for rows in (token_ids[:1], token_ids, token_ids[:1], token_ids):
            started = self._clock()
            self._run_batch(rows)
            self._observe(rows, self._clock() - started)

    async def stop(self, reason: Exception | None = None) -> None:
        """Stop the worker; every request still queued or running fails with `reason`."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        reason = reason or ShuttingDown("service is shutting down")
        for item in self._queue:
            item.job.fail(reason)
        for job in self._running_jobs:
            job.fail(reason)
        self._queue.clear()
        self.queued_tokens = self.queued_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- requests ----------------------------------------------------------------------------------------

    def submit(self, token_ids: list[list[int]]) -> Job:
        """Admit and queue one request's tokenized texts (raises Overloaded); await `wait(job)` for the result."""
        ticket = self.admission.admit()
        job = Job(
            size=len(token_ids),
            future=asyncio.get_running_loop().create_future(),
            enqueued_at=ticket.enqueued_at,
            deadline=ticket.deadline,
            estimated_wait_s=ticket.estimated_wait_s,
            raw_estimate_s=ticket.raw_wait_s,
        )
        self._queue.extend(_Item(job, i, ids) for i, ids in enumerate(token_ids))
        job.queued_tokens = sum(len(ids) for ids in token_ids)
        job.queued_texts = len(token_ids)
        job.longest = max((len(ids) for ids in token_ids), default=0)
        self.queued_tokens += job.queued_tokens
        self.queued_texts += job.queued_texts
        self._metrics.admitted.inc()
        self._wakeup.set()
        return job

    async def wait(self, job: Job) -> BatchResult:
        await job.future
        finished = self._clock()
        assert job.started_at is not None, "a finished job has started"
        return BatchResult(
            embeddings=np.stack(job.results),
            queue_ms=(job.started_at - job.enqueued_at) * 1000.0,
            inference_ms=(finished - job.started_at) * 1000.0,
            estimated_queue_ms=job.estimated_wait_s * 1000.0,
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=job.finished_at or finished,
            batch_texts=job.batch_texts,
        )

    def cancel(self, job: Job) -> None:
        """The client went away: its texts still queued are dropped before they reach the model."""
        if job.future.done() or job.retired:
            return
        self._retire(job, "disconnected")
        job.future.cancel()

    async def embed(self, token_ids: list[list[int]]) -> BatchResult:
        """submit + wait (no disconnect watching): for callers that have no client connection."""
        return await self.wait(self.submit(token_ids))

    def _retire(self, job: Job, reason: str) -> None:
        """Mark a job dead: its texts left in the queue stop counting as queued work."""
        job.retired, job.drop_reason = True, reason
        self.queued_tokens -= job.queued_tokens
        self.queued_texts -= job.queued_texts

    def _unqueue(self, item: _Item) -> None:
        item.job.queued_tokens -= item.tokens
        item.job.queued_texts -= 1
        if not item.job.retired:
            self.queued_tokens -= item.tokens
            self.queued_texts -= 1

    # -- batch shape ---------------------------------------------------------------------------------------

    def _drop_dead_items(self) -> None:
        """Drop texts at the head of the queue whose request was cancelled or that admission sheds (a request
        already running, split over batches, finishes)."""
        now = self._clock()
        while self._queue:
            job = self._queue[0].job
            if not job.retired:
                overdue = self.admission.overdue(job.enqueued_at, job.deadline, now) if job.started_at is None else None
                if overdue is None:
                    return
                job.fail(overdue)
                self._retire(job, "deadline")
            self._unqueue(self._queue.popleft())
            self._metrics.dropped_texts.labels(reason=job.drop_reason).inc()

    def _take_batch(self) -> list[_Item]:
        """Texts in arrival order under the size and padded-token budgets, whole requests only: a request
        split over two batches would take two batch times, past the latency its admission promised. Only a
        request bigger than a batch is split (it comes first in its batch)."""
        batch: list[_Item] = []
        longest = 0
        while True:
            self._drop_dead_items()
            if not self._queue or len(batch) >= self.max_batch_size:
                break
            candidate = self._queue[0]
            widest = max(longest, candidate.tokens)
            if batch and widest * (len(batch) + 1) > self.max_batch_tokens:
                break
            job = candidate.job
            if batch and job is not batch[-1].job:  # a new request starts here: take it whole or not at all
                whole = len(batch) + job.queued_texts
                if whole > self.max_batch_size or max(longest, job.longest) * whole > self.max_batch_tokens:
                    break
            batch.append(self._queue.popleft())
            self._unqueue(candidate)
            longest = widest
        return batch

    # -- the worker ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._drop_dead_items()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._let_batch_fill()
            batch = self._take_batch()
            if batch:
                await self._run_taken(batch)

    async def _let_batch_fill(self) -> None:
        """Wait for up to max_wait_ms after the oldest queued text arrived, or until a full batch is queued."""
        deadline = self._queue[0].job.enqueued_at + self.max_wait_s
        while len(self._queue) < self.max_batch_size and (delay := deadline - self._clock()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
            except TimeoutError:
                break

    async def _run_taken(self, batch: list[_Item]) -> None:
        """One taken batch: its length groups, one model call each; admission hears when each request started."""
        backlogged = bool(self._queue) or len(batch) >= self.max_batch_size
        started = self._clock()
        real_tokens = sum(item.tokens for item in batch)
        groups = padding_efficient_groups([item.tokens for item in batch])
        self.admission.batch_started(started, real_tokens, len(groups))
        self._running_jobs = {item.job for item in batch}
        for job in self._running_jobs:
            if job.started_at is None:
                job.started_at = started
                job.batch_texts = len(batch)
                self.admission.record_wait(job.enqueued_at, job.raw_estimate_s, started)
        self._metrics.batch_requests.observe(len(self._running_jobs))
        for group in groups:
            items = [batch[i] for i in group if not batch[i].job.retired]
            if items:
                await self._call(items, backlogged)
        self.admission.batch_ended()
        self._running_jobs = set()

    async def _call(self, items: list[_Item], backlogged: bool) -> None:
        """One model call in the model thread; its vectors go to their requests, or its failure fails them."""
        rows = [item.token_ids for item in items]
        call_started = self._clock()
        loop = asyncio.get_running_loop()
        try:
            vectors, model_seconds = await loop.run_in_executor(self._executor, self._timed_run, rows)
        except Exception as exc:  # a model failure fails the requests in this call, not the service
            log.exception("model call failed for a batch of %d texts", len(rows))
            for job in {item.job for item in items}:
                job.fail(exc)
                if not job.retired:
                    self._retire(job, "failed")
            return
        self._observe(rows, self._clock() - call_started, model_seconds, backlogged)
        self._metrics.texts.inc(len(rows))
        for item, vector in zip(items, vectors, strict=True):
            job = item.job
            job.results[item.index] = vector
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.finished_at = self._clock()
                assert job.started_at is not None, "a job's first batch sets started_at"
                self._metrics.queue_time.observe(job.started_at - job.enqueued_at)
                job.future.set_result(None)

    def _timed_run(self, rows: list[list[int]]) -> tuple[np.ndarray, float]:
        started = self._clock()
        vectors = self._run_batch(rows)
        seconds = self._clock() - started
        if self._after_call is not None:  # in the model thread, between calls, outside the call's timing
            self._after_call()
        return vectors, seconds

    def _observe(
        self, token_ids: list[list[int]], seconds: float, model_seconds: float | None = None, backlogged: bool = False
    ) -> None:
        """seconds: the call as the queue sees it (hand-off to the model thread and back included), what the
        wait estimate needs; model_seconds: the model alone, timed in its thread."""
        padded = len(token_ids) * max(len(row) for row in token_ids)
        self.admission.throughput.observe(
            padded, sum(len(row) for row in token_ids), seconds, len(token_ids), backlogged
        )
        model_seconds = seconds if model_seconds is None else model_seconds
        self._metrics.inference_time.observe(model_seconds)
        self._metrics.model_seconds.inc(model_seconds)
        self._metrics.batch_size.observe(len(token_ids))
        self._metrics.batch_tokens.observe(padded)
