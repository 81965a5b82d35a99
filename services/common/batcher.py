"""Dynamic batching with admission by time: concurrent requests are merged into padding-efficient model calls.

Requests arrive tokenized. Admission asks one question: how long will the work already queued take?
The batcher measures its own throughput (padded tokens per second of model time, over the last model
calls) and the padding its groups add, so the estimate follows the machine, the variant and the text
lengths actually served; nothing is configured. A request is admitted while the queue's estimated wait
plus its own batch is within `max_queue_wait_s` (an empty queue always admits, so no request is refused
forever); otherwise `Overloaded` carries a Retry-After.

The batcher alone decides batch shape: it takes whole requests in arrival order up to `max_batch_size`
texts and `max_batch_tokens` padded tokens (waiting at most `max_wait_ms` for a batch to fill), sorts them by
length and splits them into groups that pad little; every group is exactly one model call. Texts whose
request was cancelled (the client went away) or whose deadline passed are dropped before the model.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from runtime.batching import padding_efficient_groups

from .metrics import ServiceMetrics

log = logging.getLogger(__name__)
# The correction covers all but one in fifty past errors (see wait_correction). The promise is that the p95
# of admitted requests starts within the budget; the errors of the next half minute are those of the last few
# minutes only roughly (a shared machine's speed drifts), so the quantile sits above the promise's.
WAIT_CORRECTION_QUANTILE = 0.98
# Requests the correction is taken over: minutes at saturation. A short memory chases the last half minute's
# errors, and as each admitted request only starts a budget later, the correction then oscillates (measured on
# all-mpnet-base-v2 at 128 clients: over 32 requests, actual / corrected wait swung 0.7-1.16 in 60-90 s waves).
WAIT_ERROR_WINDOW = 256


class Overloaded(Exception):
    """The queue's estimated wait is over budget; come back after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The service is draining: the request was not run (or was cut off at the grace deadline)."""


class DeadlineExceeded(Exception):
    """The request waited in the queue past its deadline; its texts were not run."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


# The `openai` client gives up at once on a Retry-After over 120 s (openai/_constants.py MAX_RETRY_AFTER_DELAY).
MAX_RETRY_AFTER_S = 120


def retry_after_for(wait_s: float) -> int:
    """Half the current drain time, at least 1 s, at most MAX_RETRY_AFTER_S.

    By then half of the backlog is gone, so a client that obeys it is admitted while the model is still
    busy with the other half: the queue never runs dry (goodput stays at capacity), and the rejected
    clients come back a few times per backlog rather than every second.
    """
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait_s / 2)))


def retry_headers(retry_after_s: int) -> dict:
    """Retry-After and the `retry-after-ms` the `openai` client prefers (it reads that one first)."""
    return {"Retry-After": str(retry_after_s), "retry-after-ms": str(retry_after_s * 1000)}


class ThroughputEstimate:
    """Model time per call, fitted as `overhead + padded_tokens / rate` over the last `window` calls, and how
    many texts a call holds.

    The fixed part matters: one short sentence costs far more per token than a full batch, so a rate taken
    from full batches alone would promise small calls too much (and the other way round). The number of
    calls a backlog takes is measured too (texts per call after the batcher's length grouping), not assumed
    from max_batch_size: counting a quarter of the calls makes the estimate swing with how the fit happens to
    split the cost between overhead and tokens.
    """

    def __init__(self, window: int = 64):
        self._calls: deque[tuple[int, int, float, int]] = deque(maxlen=window)  # (padded, real, seconds, texts)
        # Texts per call of batches taken while a backlog remained: how a backlog runs. Light traffic's small
        # calls say nothing about it (counting a burst's backlog in their size over-rejects).
        self._backlog_texts: deque[int] = deque(maxlen=window)
        self._fitted: tuple[float, float] | None = None
        self._totals: tuple[float, float, float, float] | None = None

    def observe(self, padded_tokens: int, real_tokens: int, seconds: float, texts: int = 1,
                backlogged: bool = False) -> None:
        if seconds > 0 and padded_tokens > 0:
            self._calls.append((padded_tokens, real_tokens, seconds, max(1, texts)))
            if backlogged:
                self._backlog_texts.append(max(1, texts))
            self._fitted = self._totals = None

    @property
    def measured(self) -> bool:
        return bool(self._calls)

    def _fit(self) -> tuple[float, float]:
        if self._fitted is None:
            self._fitted = self._least_squares()
        return self._fitted

    def _least_squares(self) -> tuple[float, float]:
        """(seconds per call, seconds per padded token), both kept >= 0."""
        if not self._calls:
            return 0.0, 0.0
        x = np.array([c[0] for c in self._calls], dtype=np.float64)
        y = np.array([c[2] for c in self._calls], dtype=np.float64)
        if len(x) >= 2 and x.std() > 0.05 * x.mean():
            slope, intercept = np.polyfit(x, y, 1)
            if slope > 0 and intercept >= 0:
                return float(intercept), float(slope)
            if slope <= 0:  # cost does not grow with tokens here: a fixed cost per call
                return float(y.mean()), 0.0
        return 0.0, float(y.sum() / x.sum())

    def _sums(self) -> tuple[float, float, float, float]:
        """(padded tokens, real tokens, seconds, texts) over the calls seen; summed once per observation, as
        admission reads them on every request."""
        if self._totals is None:
            columns = zip(*self._calls, strict=True) if self._calls else [()] * 4
            self._totals = tuple(float(sum(column)) for column in columns)
        return self._totals

    @property
    def padded_tokens_per_s(self) -> float:
        """Throughput of the calls seen (padded tokens over model seconds)."""
        padded, _, seconds, _ = self._sums()
        return padded / seconds if seconds else 0.0

    @property
    def padding_ratio(self) -> float:
        padded, real, _, _ = self._sums()
        return padded / real if real else 1.0

    @property
    def real_tokens_per_text(self) -> float:
        _, real, _, texts = self._sums()
        return real / texts if texts else 0.0

    @property
    def texts_per_call(self) -> float:
        """Mean texts per model call of backlogged batches (of all calls seen before one; 1 before any)."""
        if self._backlog_texts:
            return sum(self._backlog_texts) / len(self._backlog_texts)
        return self._sums()[3] / len(self._calls) if self._calls else 1.0

    def calls_for(self, texts: int, max_batch_size: int) -> int:
        """Model calls that `texts` queued texts will take, at the texts per call seen lately."""
        return math.ceil(texts / min(max_batch_size, max(1.0, self.texts_per_call))) if texts > 0 else 0

    def seconds_for(self, real_tokens: int, calls: int = 1) -> float:
        """Model time for `real_tokens` queued tokens run in `calls` model calls (0 before any measurement)."""
        if real_tokens <= 0:
            return 0.0
        per_call, per_token = self._fit()
        return max(1, calls) * per_call + real_tokens * self.padding_ratio * per_token


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
    cancelled: bool = False
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
    enqueued_at: float = 0.0  # perf_counter times, for trace spans
    started_at: float = 0.0
    finished_at: float = 0.0
    batch_texts: int = 0


class DynamicBatcher:
    """`run_batch(ids)` runs exactly one model call on the rows it is given (padded to the longest)."""

    def __init__(
        self,
        run_batch: Callable[[list[list[int]]], np.ndarray],
        metrics: ServiceMetrics,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_queue_wait_ms: float = 30_000.0,
    ):
        self._run_batch = run_batch
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_wait_s = max_queue_wait_ms / 1000.0
        self.throughput = ThroughputEstimate()
        self._queue: deque[_Item] = deque()
        self._queued_tokens = 0  # real tokens of live queued texts
        self._queued_texts = 0
        self._running_until: float | None = None  # estimated end of the model calls now running
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._running_jobs: set[Job] = set()
        self._wait_errors: deque[float] = deque(maxlen=WAIT_ERROR_WINDOW)  # actual / estimated waits
        self._wait_correction = 1.0
        metrics.estimated_wait.set_function(self.estimated_wait_s)
        metrics.wait_correction.set_function(lambda: self._wait_correction)
        metrics.tokens_per_second.set_function(lambda: self.throughput.padded_tokens_per_s)
        metrics.queue_depth.set_function(lambda: len(self._queue))

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    def calibrate(self, token_ids: list[list[int]]) -> None:
        """Time model calls of one text and of the batch outside the queue (blocking; at warm-up), so that
        admission starts from measured costs of a small and a large call."""
        for rows in (token_ids[:1], token_ids, token_ids[:1], token_ids):
            started = time.perf_counter()
            self._run_batch(rows)
            self._observe(rows, time.perf_counter() - started)

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
        self._queued_tokens = self._queued_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- admission ---------------------------------------------------------------------------------------

    def _raw_wait_s(self) -> float:
        running = max(0.0, self._running_until - time.perf_counter()) if self._running_until else 0.0
        calls = self.throughput.calls_for(self._queued_texts, self.max_batch_size)
        return running + self.throughput.seconds_for(self._queued_tokens, calls)

    def estimated_wait_s(self) -> float:
        """Seconds until a request admitted now would start: the calls now running plus the queued work,
        corrected by how far past estimates were off (see wait_correction)."""
        return self._raw_wait_s() * self.wait_correction

    @property
    def wait_correction(self) -> float:
        """A high percentile (WAIT_CORRECTION_QUANTILE) of actual / estimated wait over recent requests.
        Admission keeps a promise (start within the budget), and near saturation every admitted request sits
        at the budget's edge: a median correction would let half of them start late. Recomputed when a wait
        is recorded, not on every admission check."""
        return self._wait_correction

    def _record_wait_error(self, job: Job, started: float) -> None:
        # Only waits long enough to matter: a short one is mostly batch-fill timing, not the estimate. Relative
        # to a small budget, or with one of about a second no admitted wait would ever count again.
        if job.raw_estimate_s >= min(0.5, 0.1 * self.max_queue_wait_s):
            self._wait_errors.append((started - job.enqueued_at) / job.raw_estimate_s)
            if len(self._wait_errors) >= 4:
                quantile = float(np.quantile(self._wait_errors, WAIT_CORRECTION_QUANTILE))
                self._wait_correction = min(2.0, max(0.5, quantile))

    def own_batch_s(self) -> float:
        """Time of the batch an admitted request runs in: a full batch at the recent tokens per text (its
        request is answered when that batch ends), at most a quarter of the budget so that a small budget
        still admits more than an empty queue."""
        texts = self.max_batch_size
        tokens = round(texts * self.throughput.real_tokens_per_text)
        full = self.throughput.seconds_for(tokens, self.throughput.calls_for(texts, self.max_batch_size))
        return min(full, 0.25 * self.max_queue_wait_s)

    def check_admission(self) -> None:
        """Raise Overloaded when a request admitted now would not be answered within the wait budget: the
        estimated queue wait plus its own batch (before any parsing). A client whose timeout is the budget
        then gets its answer in time, and the batch's margin absorbs some of the estimate's error."""
        if not self._queue:
            return
        wait, own_batch = self.estimated_wait_s(), self.own_batch_s()
        if wait + own_batch > self.max_queue_wait_s:
            self._metrics.rejected.labels(reason="queue_wait").inc()
            raise Overloaded(
                f"estimated queue wait {wait:.1f} s plus its batch ({own_batch:.1f} s) is over the "
                f"budget of {self.max_queue_wait_s:.1f} s",
                retry_after_for(wait),
            )

    def submit(self, token_ids: list[list[int]]) -> Job:
        """Admit and queue one request's tokenized texts (raises Overloaded); await `wait(job)` for the result."""
        self.check_admission()
        raw_wait = self._raw_wait_s()
        now = time.perf_counter()
        # The deadline leaves the estimate room for error (a quarter of the budget, at least 1 s) before admitted
        # work is shed.
        slack = max(0.25 * self.max_queue_wait_s, 1.0)
        job = Job(
            size=len(token_ids),
            future=asyncio.get_running_loop().create_future(),
            enqueued_at=now,
            deadline=now + self.max_queue_wait_s + slack,
            estimated_wait_s=raw_wait * self.wait_correction,
            raw_estimate_s=raw_wait,
        )
        self._queue.extend(_Item(job, i, ids) for i, ids in enumerate(token_ids))
        job.queued_tokens = sum(len(ids) for ids in token_ids)
        job.queued_texts = len(token_ids)
        job.longest = max((len(ids) for ids in token_ids), default=0)
        self._queued_tokens += job.queued_tokens
        self._queued_texts += job.queued_texts
        self._metrics.admitted.inc()
        self._wakeup.set()
        return job

    async def wait(self, job: Job) -> BatchResult:
        await job.future
        finished = time.perf_counter()
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
        if job.future.done() or job.cancelled:
            return
        self._retire(job, "disconnected")
        job.future.cancel()

    def _retire(self, job: Job, reason: str) -> None:
        """Mark a job dead: its texts left in the queue stop counting as queued work."""
        job.cancelled, job.drop_reason = True, reason
        self._queued_tokens -= job.queued_tokens
        self._queued_texts -= job.queued_texts

    def _unqueue(self, item: _Item) -> None:
        item.job.queued_tokens -= item.tokens
        item.job.queued_texts -= 1
        if not item.job.cancelled:
            self._queued_tokens -= item.tokens
            self._queued_texts -= 1

    async def embed(self, token_ids: list[list[int]]) -> BatchResult:
        """submit + wait (no disconnect watching): for callers that have no client connection."""
        return await self.wait(self.submit(token_ids))

    # -- the worker --------------------------------------------------------------------------------------

    def _drop_dead_items(self) -> None:
        """Drop texts at the head of the queue whose request was cancelled or is past its deadline."""
        now = time.perf_counter()
        while self._queue:
            job = self._queue[0].job
            if job.cancelled:
                pass
            elif now > job.deadline and job.started_at is None:
                job.fail(
                    DeadlineExceeded(
                        f"waited {now - job.enqueued_at:.1f} s in the queue, well over the "
                        f"budget of {self.max_queue_wait_s:.1f} s; not run",
                        retry_after_for(self.estimated_wait_s()),
                    )
                )
                self._retire(job, "deadline")
            else:
                return
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

    def _observe(self, token_ids: list[list[int]], seconds: float, model_seconds: float | None = None,
                 backlogged: bool = False) -> None:
        """seconds: the call as the queue sees it (hand-off to the model thread and back included), what the
        wait estimate needs; model_seconds: the model alone, timed in its thread."""
        padded = len(token_ids) * max(len(row) for row in token_ids)
        self.throughput.observe(padded, sum(len(row) for row in token_ids), seconds, len(token_ids), backlogged)
        model_seconds = seconds if model_seconds is None else model_seconds
        self._metrics.inference_time.observe(model_seconds)
        self._metrics.model_seconds.inc(model_seconds)
        self._metrics.batch_size.observe(len(token_ids))
        self._metrics.batch_tokens.observe(padded)

    def _timed_run(self, rows: list[list[int]]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        vectors = self._run_batch(rows)
        return vectors, time.perf_counter() - started

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead_items()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Let a batch fill for up to max_wait_ms after its oldest text arrived.
            deadline = self._queue[0].job.enqueued_at + self.max_wait_s
            while len(self._queue) < self.max_batch_size and (delay := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            backlogged = bool(self._queue) or len(batch) >= self.max_batch_size
            started = time.perf_counter()
            real_tokens = sum(item.tokens for item in batch)
            groups = padding_efficient_groups([item.tokens for item in batch])
            self._running_until = started + self.throughput.seconds_for(real_tokens, len(groups))
            self._running_jobs = {item.job for item in batch}
            for job in self._running_jobs:
                if job.started_at is None:
                    job.started_at = started
                    job.batch_texts = len(batch)
                    self._record_wait_error(job, started)
            self._metrics.batch_requests.observe(len(self._running_jobs))
            for group in groups:
                items = [batch[i] for i in group if not batch[i].job.cancelled]
                if not items:
                    continue
                rows = [item.token_ids for item in items]
                call_started = time.perf_counter()
                try:
                    vectors, model_seconds = await loop.run_in_executor(self._executor, self._timed_run, rows)
                except Exception as exc:  # a model failure fails the requests in this call, not the service
                    log.exception("model call failed for a batch of %d texts", len(rows))
                    for job in {item.job for item in items}:
                        job.fail(exc)
                        if not job.cancelled:
                            self._retire(job, "failed")
                    continue
                self._observe(rows, time.perf_counter() - call_started, model_seconds, backlogged)
                self._metrics.texts.inc(len(rows))
                for item, vector in zip(items, vectors, strict=True):
                    job = item.job
                    job.results[item.index] = vector
                    job.remaining -= 1
                    if job.remaining == 0 and not job.future.done():
                        job.finished_at = time.perf_counter()
                        self._metrics.queue_time.observe(job.started_at - job.enqueued_at)
                        job.future.set_result(None)
            self._running_until = None
            self._running_jobs = set()
