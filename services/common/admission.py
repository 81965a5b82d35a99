"""Admission by time: is a request admitted, when is admitted work shed, and what Retry-After does a refusal carry.

Admission asks one question: how long will the work already queued take? It prices the queue (the batcher
tells it what the queue holds and what each model call cost) with its own measured throughput (padded tokens
per second of model time, over the last model calls) and the padding the batcher's groups add, so the estimate
follows the machine, the variant and the text lengths actually served; nothing is configured. That estimate
is corrected by a high percentile of past actual / estimated waits. A request is admitted while the corrected
wait plus its own batch is within `max_queue_wait_s` (an empty queue always admits, so no request is refused
forever); otherwise `Overloaded` carries a Retry-After. Admitted work still queued well past the budget is shed
(`DeadlineExceeded`, answered 429 too).

The clock is injected (the batcher's: perf_counter, which trace spans read), so tests of the arithmetic are
exact and take no time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .metrics import ServiceMetrics

# -- Tuned constants. The reason or measurement behind each is in `git log -p services/common/batcher.py`. --
THROUGHPUT_WINDOW = 64  # model calls the cost fit reads (803fe90; no sweep recorded): recent, so it follows drift
FIT_MIN_SPREAD = 0.05  # call sizes spread less than 5% of their mean cannot separate overhead from per-token cost
WAIT_CORRECTION_QUANTILE = 0.98  # d4d8a71: above the p95 promise, as next minutes' errors match past ones only roughly
WAIT_ERROR_WINDOW = 256  # d4d8a71: over 32 requests actual/corrected swung 0.7-1.16 in 60-90 s waves (mpnet, 128 users)
WAIT_ERRORS_BEFORE_CORRECTION = 4  # bfd2465: fewer say nothing; the correction stays 1.0 until then
WAIT_CORRECTION_MIN, WAIT_CORRECTION_MAX = 0.5, 2.0  # bfd2465: a few odd waits never halve or triple admission
WAIT_ERROR_MIN_S = 0.5  # bfd2465: a shorter wait is mostly batch-fill timing, not the estimate's error
WAIT_ERROR_MIN_SHARE = 0.1  # 7b5baab: or a tenth of the budget: with one of about 1 s no wait would count
OWN_BATCH_MAX_SHARE = 0.25  # 4b6e4b7, 7b5baab: the own-batch cap, so a small budget admits more than an empty queue
DEADLINE_SLACK_SHARE, DEADLINE_SLACK_MIN_S = 0.25, 1.0  # 803fe90: room for the estimate's error before work is shed
RETRY_AFTER_DRAIN_SHARE = 0.5  # 803fe90: half the drain time: retried clients arrive while the rest still runs
RETRY_AFTER_MIN_S = 1  # Retry-After is whole seconds; 0 would invite an instant retry
MAX_RETRY_AFTER_S = 120  # 055f297: the `openai` client gives up at once above this (_constants.MAX_RETRY_AFTER_DELAY)


def retry_after_for(wait_s: float) -> int:
    """Half the current drain time, at least 1 s, at most MAX_RETRY_AFTER_S.

    By then half of the backlog is gone, so a client that obeys it is admitted while the model is still
    busy with the other half: the queue never runs dry (goodput stays at capacity), and the rejected
    clients come back a few times per backlog rather than every second.
    """
    return min(MAX_RETRY_AFTER_S, max(RETRY_AFTER_MIN_S, math.ceil(wait_s * RETRY_AFTER_DRAIN_SHARE)))


def retry_headers(retry_after_s: int) -> dict:
    """Retry-After and the `retry-after-ms` the `openai` client prefers (it reads that one first)."""
    return {"Retry-After": str(retry_after_s), "retry-after-ms": str(retry_after_s * 1000)}


class Overloaded(Exception):
    """Refused for load: come back after `retry_after_s` (`headers` carry it). Every 429 of the service is one."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict:
        return retry_headers(self.retry_after_s)


class DeadlineExceeded(Overloaded):
    """The request waited in the queue past its deadline; its texts were not run."""


def in_flight_overload(limit: int, admission: Admission | None = None) -> Overloaded:
    """More than `limit` requests in flight (the edge counts them): Retry-After from the queue's wait, if any."""
    wait = admission.estimated_wait_s() if admission is not None else 0.0
    return Overloaded(f"{limit} requests in flight", retry_after_for(wait))


class ThroughputEstimate:
    """Model time per call, fitted as `overhead + padded_tokens / rate` over the last `window` calls, and how
    many texts a call holds.

    The fixed part matters: one short sentence costs far more per token than a full batch, so a rate taken
    from full batches alone would promise small calls too much (and the other way round). The number of
    calls a backlog takes is measured too (texts per call after the batcher's length grouping), not assumed
    from max_batch_size: counting a quarter of the calls makes the estimate swing with how the fit happens to
    split the cost between overhead and tokens.
    """

    def __init__(self, window: int = THROUGHPUT_WINDOW):
        self._calls: deque[tuple[int, int, float, int]] = deque(maxlen=window)  # (padded, real, seconds, texts)
        # Texts per call of batches taken while a backlog remained: how a backlog runs. Light traffic's small
        # calls say nothing about it (counting a burst's backlog in their size over-rejects).
        self._backlog_texts: deque[int] = deque(maxlen=window)
        self._fitted: tuple[float, float] | None = None
        self._totals: tuple[float, float, float, float] | None = None

    def observe(
        self, padded_tokens: int, real_tokens: int, seconds: float, texts: int = 1, backlogged: bool = False
    ) -> None:
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
        if len(x) >= 2 and x.std() > FIT_MIN_SPREAD * x.mean():
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
            columns = list(zip(*self._calls, strict=True)) if self._calls else [()] * 4
            padded, real, seconds, texts = (float(sum(column)) for column in columns)
            self._totals = (padded, real, seconds, texts)
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


class Backlog(Protocol):
    """What admission reads of the queue (DynamicBatcher is one)."""

    queued_texts: int  # texts of live requests still queued
    queued_tokens: int  # their real tokens

    @property
    def depth(self) -> int:  # entries in the queue, dead ones not yet dropped included
        ...


@dataclass(frozen=True)
class Ticket:
    """An admitted request: when it was queued, when it is shed, and the wait admission expected."""

    enqueued_at: float
    deadline: float
    raw_wait_s: float  # before the correction from past errors
    estimated_wait_s: float


class Admission:
    """Every admission decision for one queue: admit or refuse (check, admit), shed (overdue), Retry-After.

    The batcher feeds it: model calls into `throughput`, the start and end of each batch (the calls then
    running count as queued work), and each request's actual wait when it starts (record_wait).
    """

    def __init__(
        self,
        backlog: Backlog,
        max_batch_size: int,
        max_queue_wait_s: float,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.backlog = backlog
        self.max_batch_size = max_batch_size
        self.max_queue_wait_s = max_queue_wait_s
        self.clock = clock
        self.throughput = ThroughputEstimate()
        self._metrics = metrics
        self._running_until: float | None = None  # estimated end of the model calls now running
        self._wait_errors: deque[float] = deque(maxlen=WAIT_ERROR_WINDOW)  # actual / estimated waits
        self._wait_correction = 1.0

    # -- the estimate --------------------------------------------------------------------------------------

    def raw_wait_s(self) -> float:
        """The calls now running plus the queued work, uncorrected."""
        running = max(0.0, self._running_until - self.clock()) if self._running_until is not None else 0.0
        calls = self.throughput.calls_for(self.backlog.queued_texts, self.max_batch_size)
        return running + self.throughput.seconds_for(self.backlog.queued_tokens, calls)

    def estimated_wait_s(self) -> float:
        """Seconds until a request admitted now would start: the raw wait corrected by how far past estimates
        were off (see wait_correction)."""
        return self.raw_wait_s() * self.wait_correction

    @property
    def wait_correction(self) -> float:
        """A high percentile (WAIT_CORRECTION_QUANTILE) of actual / estimated wait over recent requests.
        Admission keeps a promise (start within the budget), and near saturation every admitted request sits
        at the budget's edge: a median correction would let half of them start late. Recomputed when a wait
        is recorded, not on every admission check."""
        return self._wait_correction

    def own_batch_s(self) -> float:
        """Time of the batch an admitted request runs in: a full batch at the recent tokens per text (its
        request is answered when that batch ends), at most a quarter of the budget so that a small budget
        still admits more than an empty queue."""
        texts = self.max_batch_size
        tokens = round(texts * self.throughput.real_tokens_per_text)
        full = self.throughput.seconds_for(tokens, self.throughput.calls_for(texts, self.max_batch_size))
        return min(full, OWN_BATCH_MAX_SHARE * self.max_queue_wait_s)

    # -- what the batcher reports ----------------------------------------------------------------------------

    def batch_started(self, started: float, real_tokens: int, calls: int) -> None:
        """A batch of `real_tokens` began at `started` in `calls` model calls: until it ends, its rest is queued."""
        self._running_until = started + self.throughput.seconds_for(real_tokens, calls)

    def batch_ended(self) -> None:
        self._running_until = None

    def record_wait(self, enqueued_at: float, raw_estimate_s: float, started: float) -> None:
        """A request admitted with `raw_estimate_s` started its first batch at `started`."""
        # Only waits long enough to matter: a short one is mostly batch-fill timing, not the estimate. Relative
        # to a small budget, or with one of about a second no admitted wait would ever count again.
        if raw_estimate_s >= min(WAIT_ERROR_MIN_S, WAIT_ERROR_MIN_SHARE * self.max_queue_wait_s):
            self._wait_errors.append((started - enqueued_at) / raw_estimate_s)
            if len(self._wait_errors) >= WAIT_ERRORS_BEFORE_CORRECTION:
                quantile = float(np.quantile(self._wait_errors, WAIT_CORRECTION_QUANTILE))
                self._wait_correction = min(WAIT_CORRECTION_MAX, max(WAIT_CORRECTION_MIN, quantile))

    # -- the decisions -----------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise Overloaded when a request admitted now would not be answered within the wait budget: the
        estimated queue wait plus its own batch (before any parsing). A client whose timeout is the budget
        then gets its answer in time, and the batch's margin absorbs some of the estimate's error."""
        if not self.backlog.depth:
            return
        wait, own_batch = self.estimated_wait_s(), self.own_batch_s()
        if wait + own_batch > self.max_queue_wait_s:
            if self._metrics is not None:
                self._metrics.rejected.labels(reason="queue_wait").inc()
            raise Overloaded(
                f"estimated queue wait {wait:.1f} s plus its batch ({own_batch:.1f} s) is over the "
                f"budget of {self.max_queue_wait_s:.1f} s",
                retry_after_for(wait),
            )

    def admit(self) -> Ticket:
        """Check (raises Overloaded), then the admitted request's ticket. Its deadline leaves the estimate room
        for error (a quarter of the budget, at least 1 s) before admitted work is shed."""
        self.check()
        raw_wait = self.raw_wait_s()
        now = self.clock()
        slack = max(DEADLINE_SLACK_SHARE * self.max_queue_wait_s, DEADLINE_SLACK_MIN_S)
        return Ticket(
            enqueued_at=now,
            deadline=now + self.max_queue_wait_s + slack,
            raw_wait_s=raw_wait,
            estimated_wait_s=raw_wait * self.wait_correction,
        )

    def overdue(self, enqueued_at: float, deadline: float, now: float) -> DeadlineExceeded | None:
        """The refusal for a request still queued at `now`, past its deadline; None while it may still run."""
        if now <= deadline:
            return None
        return DeadlineExceeded(
            f"waited {now - enqueued_at:.1f} s in the queue, well over the budget of {self.max_queue_wait_s:.1f} s; "
            "not run",
            retry_after_for(self.estimated_wait_s()),
        )
