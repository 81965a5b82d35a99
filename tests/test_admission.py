"""Admission by time, Retry-After, batch shape, cancellation, deadlines (fast lane).

The admission arithmetic is tested on `Admission` alone, with a fake queue and a clock that moves only when told
(exact, instant); the batcher with a fake model, gated, tests what it tells admission and the batches it shapes."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.common.admission import (
    WAIT_CORRECTION_QUANTILE,
    Admission,
    DeadlineExceeded,
    Overloaded,
    ThroughputEstimate,
    retry_after_for,
)
from services.common.app import create_app
from services.common.batcher import DynamicBatcher, Job
from services.common.metrics import ServiceMetrics
from services.common.settings import ServiceSettings

from .fakes import FakeEmbedder


class FakeClock:
    """Stands still until advanced."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeQueue:
    """The Backlog admission reads: what the batcher's queue holds."""

    depth: int = 0
    queued_texts: int = 0
    queued_tokens: int = 0

    def add(self, texts: int, tokens: int) -> None:
        self.depth += texts
        self.queued_texts += texts
        self.queued_tokens += tokens


class GatedModel:
    """run_batch that records every call and blocks while the gate is closed; each call costs `cost_s`."""

    def __init__(self, cost_s: float = 0.0):
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[list[list[int]]] = []
        self.cost_s = cost_s

    def __call__(self, rows: list[list[int]]) -> np.ndarray:
        self.calls.append(rows)
        assert self.gate.wait(timeout=10)
        if self.cost_s:
            time.sleep(self.cost_s)
        return np.ones((len(rows), 4), dtype=np.float32)


async def _occupied(batcher: DynamicBatcher, model: GatedModel) -> Job:
    """Start the batcher with its model call held at the gate by one 1-text request; returns that request."""
    batcher.start()
    model.gate.clear()
    blocker = batcher.submit([[1]])
    await asyncio.sleep(0.05)
    return blocker


def _metric(metrics: ServiceMetrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def test_throughput_estimate_is_measured_not_configured():
    estimate = ThroughputEstimate()
    assert not estimate.measured and estimate.seconds_for(1000) == 0.0
    estimate.observe(padded_tokens=1000, real_tokens=800, seconds=0.5)
    estimate.observe(padded_tokens=3000, real_tokens=2400, seconds=1.5)
    assert estimate.padded_tokens_per_s == pytest.approx(2000.0)
    assert estimate.padding_ratio == pytest.approx(1.25)
    # 800 queued real tokens -> 1000 padded -> 0.5 s
    assert estimate.seconds_for(800) == pytest.approx(0.5)


def test_retry_after_is_half_the_drain_time_and_at_least_one_second():
    assert retry_after_for(0.0) == 1
    assert retry_after_for(1.5) == 1
    assert retry_after_for(30.0) == 15
    assert retry_after_for(61.0) == 31


def test_admission_rejects_by_estimated_wait_and_an_empty_queue_always_admits():
    async def scenario():
        metrics = ServiceMetrics()
        model = GatedModel()
        clock = FakeClock()  # stands still: the running call's rest stays whole
        batcher = DynamicBatcher(model, metrics, max_batch_size=4, max_wait_ms=0, max_queue_wait_ms=1000, clock=clock)
        batcher.throughput.observe(padded_tokens=100, real_tokens=100, seconds=1.0)  # 100 tokens/s
        batcher.start()
        model.gate.clear()
        # A request of 500 tokens (5 s of work) is larger than the budget but the queue is empty: admitted.
        first = batcher.submit([[1] * 100] * 5)
        await asyncio.sleep(0.05)  # the worker takes its first batch (4 rows) and blocks on the gate
        # 1 row (1 s) queued + the running call (4 s): over the 1 s budget, so the next request is turned away.
        assert batcher.estimated_wait_s() == pytest.approx(5.0)
        with pytest.raises(Overloaded) as rejected:
            batcher.submit([[1] * 10])
        assert rejected.value.retry_after_s == retry_after_for(5.0) == 3
        assert _metric(metrics, "embed_rejected_total", reason="queue_wait") == 1
        model.gate.set()
        result = await batcher.wait(first)
        assert result.embeddings.shape == (5, 4)
        # Drained: admitted again.
        assert (await batcher.embed([[1] * 10])).embeddings.shape == (1, 4)
        assert _metric(metrics, "embed_admitted_total") == 2
        await batcher.stop()

    asyncio.run(scenario())


def test_the_running_batch_counts_as_queued_work_until_it_ends():
    clock, queue = FakeClock(), FakeQueue()
    admission = Admission(queue, max_batch_size=4, max_queue_wait_s=10.0, clock=clock)
    admission.throughput.observe(padded_tokens=100, real_tokens=100, seconds=1.0)  # 100 tokens/s
    admission.batch_started(clock(), real_tokens=300, calls=1)  # 3 s of model time from now
    clock.advance(1.0)
    assert admission.estimated_wait_s() == pytest.approx(2.0)
    queue.add(texts=1, tokens=100)
    assert admission.estimated_wait_s() == pytest.approx(3.0)
    clock.advance(5.0)  # running past its estimate: only the queue counts, never a negative rest
    assert admission.estimated_wait_s() == pytest.approx(1.0)
    admission.batch_started(clock(), real_tokens=300, calls=1)
    admission.batch_ended()
    assert admission.estimated_wait_s() == pytest.approx(1.0)


def test_batcher_owns_batch_shape_length_sorted_groups_within_the_token_budget():
    async def scenario():
        model = GatedModel()
        batcher = DynamicBatcher(model, ServiceMetrics(), max_batch_size=32, max_batch_tokens=400, max_wait_ms=20)
        batcher.start()
        lengths = [5, 90, 6, 7, 88, 5, 40, 6]
        result = await batcher.embed([[7] * n for n in lengths])
        assert result.embeddings.shape == (8, 4)
        for rows in model.calls:
            widths = [len(r) for r in rows]
            assert len(rows) * max(widths) <= 400  # every model call fits the padded-token budget
            assert max(widths) <= 1.3 * sum(widths) / len(widths) + 16  # and pads little
        assert sorted(len(r) for rows in model.calls for r in rows) == sorted(lengths)
        assert len(model.calls) >= 2  # short and long texts were not padded together
        await batcher.stop()

    asyncio.run(scenario())


def test_admission_leaves_room_for_the_requests_own_batch():
    """Admitted means answered within the budget: the queue's wait plus the batch the request will run in."""
    queue = FakeQueue()
    admission = Admission(queue, max_batch_size=4, max_queue_wait_s=1.1, clock=FakeClock())
    admission.throughput.observe(padded_tokens=40, real_tokens=40, seconds=0.2, texts=4)  # 0.2 s per 4 texts
    assert admission.own_batch_s() == pytest.approx(0.2)
    for _ in range(5):
        admission.admit()  # up to 0.8 s queued + 0.2 s own batch fits 1.1 s
        queue.add(texts=4, tokens=40)
    assert admission.estimated_wait_s() == pytest.approx(1.0)  # the wait estimate is within the budget alone
    with pytest.raises(Overloaded, match="plus its batch"):
        admission.check()  # but 1.0 s + its own 0.2 s batch is not


def test_the_own_batch_margin_is_at_most_a_quarter_of_the_budget():
    # A full batch (4 texts at 1 s each) is longer than the 2 s budget: a quarter of it stands in, so a
    # request still joins a short queue instead of waiting for an empty one.
    admission = Admission(FakeQueue(), max_batch_size=4, max_queue_wait_s=2.0)
    admission.throughput.observe(padded_tokens=40, real_tokens=40, seconds=4.0, texts=4)
    assert admission.own_batch_s() == pytest.approx(0.5)


def test_a_batch_takes_whole_requests_so_none_waits_for_two_batches():
    async def scenario():
        model = GatedModel()
        batcher = DynamicBatcher(model, ServiceMetrics(), max_batch_size=12, max_wait_ms=0)
        blocker = await _occupied(batcher, model)
        jobs = [batcher.submit([[2, 3]] * 8) for _ in range(3)] + [batcher.submit([[4, 5]] * 20)]
        model.gate.set()
        await batcher.wait(blocker)
        for job in jobs:
            await batcher.wait(job)
        # 8 + 8 texts would overflow 12: each 8-text request runs whole in its own call; only the request larger
        # than a batch is split, and it starts its batch.
        assert [len(rows) for rows in model.calls] == [1, 8, 8, 8, 12, 8]
        await batcher.stop()

    asyncio.run(scenario())


def test_a_request_that_would_overflow_the_token_budget_waits_for_the_next_batch_whole():
    async def scenario():
        model = GatedModel()
        batcher = DynamicBatcher(model, ServiceMetrics(), max_batch_size=32, max_batch_tokens=100, max_wait_ms=0)
        blocker = await _occupied(batcher, model)
        short = batcher.submit([[2] * 10] * 4)  # 4 x 10 tokens
        wide = batcher.submit([[3] * 5, [3] * 20])  # with the short ones: 6 rows x 20 = 120 > 100 tokens
        model.gate.set()
        for job in (blocker, short, wide):
            await batcher.wait(job)
        rows_by_call = [sorted({row[0] for row in rows}) for rows in model.calls]
        assert rows_by_call[1:] == [[2], [3]] or rows_by_call[1:] == [[2], [3], [3]], rows_by_call
        await batcher.stop()

    asyncio.run(scenario())


def test_the_backlog_is_counted_in_the_calls_it_will_really_take():
    """The batcher's length grouping runs a 32-text batch in several calls: the estimate counts the calls seen."""
    estimate = ThroughputEstimate()
    for _ in range(4):
        estimate.observe(padded_tokens=400, real_tokens=380, seconds=0.5, texts=8, backlogged=True)
    assert estimate.texts_per_call == pytest.approx(8.0)
    assert estimate.calls_for(64, max_batch_size=32) == 8
    assert estimate.calls_for(0, max_batch_size=32) == 0
    assert ThroughputEstimate().calls_for(5, max_batch_size=32) == 5  # nothing seen yet: a call per text
    # Light traffic's small calls do not count once backlogged batches have been seen.
    for _ in range(60):
        estimate.observe(padded_tokens=50, real_tokens=50, seconds=0.1, texts=1)
    assert estimate.texts_per_call == pytest.approx(8.0)


def test_cancelled_request_texts_never_reach_the_model():
    async def scenario():
        metrics = ServiceMetrics()
        model = GatedModel()
        batcher = DynamicBatcher(model, metrics, max_batch_size=2, max_wait_ms=0)
        batcher.start()
        model.gate.clear()
        running = batcher.submit([[1, 2], [1, 3]])
        await asyncio.sleep(0.05)
        abandoned = batcher.submit([[9, 9, 9]] * 6)
        assert batcher.estimated_wait_s() >= 0
        batcher.cancel(abandoned)
        model.gate.set()
        await batcher.wait(running)
        await asyncio.sleep(0.05)
        assert all(row != [9, 9, 9] for rows in model.calls for row in rows)
        assert _metric(metrics, "embed_dropped_texts_total", reason="disconnected") == 6
        assert batcher.depth == 0 and batcher.estimated_wait_s() == pytest.approx(0.0, abs=1e-6)
        await batcher.stop()

    asyncio.run(scenario())


def test_texts_past_their_deadline_are_dropped_with_a_retry_after():
    async def scenario():
        metrics = ServiceMetrics()
        model = GatedModel()
        clock = FakeClock()
        batcher = DynamicBatcher(model, metrics, max_batch_size=1, max_wait_ms=0, max_queue_wait_ms=100, clock=clock)
        batcher.start()
        model.gate.clear()
        running = batcher.submit([[1]])
        await asyncio.sleep(0.02)
        late = batcher.submit([[2]])
        clock.advance(1.2)  # past the 100 ms budget and its 1 s slack while the model is busy
        model.gate.set()
        await batcher.wait(running)
        with pytest.raises(DeadlineExceeded) as expired:
            await batcher.wait(late)
        assert expired.value.retry_after_s >= 1
        assert _metric(metrics, "embed_dropped_texts_total", reason="deadline") == 1
        assert [rows for rows in model.calls] == [[[1]]]
        await batcher.stop()

    asyncio.run(scenario())


def test_admitted_work_is_shed_a_quarter_of_the_budget_past_it_and_at_least_a_second():
    clock = FakeClock()
    admission = Admission(FakeQueue(), max_batch_size=4, max_queue_wait_s=8.0, clock=clock)
    ticket = admission.admit()
    assert ticket.enqueued_at == clock() and ticket.deadline == pytest.approx(clock() + 8.0 + 2.0)
    assert admission.overdue(ticket.enqueued_at, ticket.deadline, ticket.deadline) is None
    late = admission.overdue(ticket.enqueued_at, ticket.deadline, ticket.deadline + 0.1)
    assert isinstance(late, DeadlineExceeded) and isinstance(late, Overloaded)  # answered as a 429
    assert late.retry_after_s == 1 and "waited 10.1 s" in str(late)
    assert late.headers == {"Retry-After": "1", "retry-after-ms": "1000"}
    small = Admission(FakeQueue(), max_batch_size=4, max_queue_wait_s=0.1, clock=clock).admit()
    assert small.deadline == pytest.approx(clock() + 0.1 + 1.0)


def _ready(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_http_overload_answers_429_with_retry_after_from_the_estimate_and_keeps_serving():
    # Each model call costs 50 ms; the budget is 300 ms: a burst of 40 requests cannot all wait that little.
    settings = ServiceSettings(max_queue_wait_ms=300, max_batch_size=4, max_wait_ms=1)
    embedder = FakeEmbedder(delay_s=0.05)
    with TestClient(create_app(settings, embedder)) as client:
        _ready(client)

        def post(_):
            return client.post("/embed", json={"inputs": ["some words here"] * 4})

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(40) as pool:
            responses = list(pool.map(post, range(40)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 4 and statuses.count(429) >= 1
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.json()["error_type"] == "overloaded"
        assert int(rejected.headers["retry-after"]) >= 1
        metrics = client.get("/metrics").text
        assert "embed_estimated_queue_wait_seconds" in metrics and "embed_measured_padded_tokens_per_second" in metrics
        assert client.post("/embed", json={"inputs": "calm again"}).status_code == 200


def test_no_429_when_the_backlog_fits_the_budget():
    # 32 clients x 8 texts, 20 ms per call of up to 32 texts: about 0.2 s of backlog against a 30 s budget.
    settings = ServiceSettings(max_batch_size=32, max_wait_ms=2)
    with TestClient(create_app(settings, FakeEmbedder(delay_s=0.02))) as client:
        _ready(client)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(32) as pool:
            statuses = list(
                pool.map(lambda _: client.post("/embed", json={"inputs": ["a b c"] * 8}).status_code, range(96))
            )
        assert statuses == [200] * 96


def test_too_many_requests_in_flight_get_429():
    settings = ServiceSettings(max_concurrent_requests=2, max_batch_size=1, max_wait_ms=0)
    embedder = FakeEmbedder(delay_s=0.2)
    with TestClient(create_app(settings, embedder)) as client:
        _ready(client)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: client.post("/embed", json={"inputs": "x y"}).status_code, range(6)))
        assert statuses.count(429) >= 1 and statuses.count(200) >= 2
        assert 'embed_rejected_total{reason="concurrency"}' in client.get("/metrics").text


def test_the_wait_estimate_corrects_itself_by_its_measured_error():
    admission = Admission(
        FakeQueue(depth=6, queued_texts=6, queued_tokens=6), max_batch_size=1, max_queue_wait_s=30.0, clock=FakeClock()
    )
    admission.throughput.observe(padded_tokens=100, real_tokens=100, seconds=1.0)  # claims 1 s per 100 tokens
    assert admission.wait_correction == 1.0
    for count in range(6):  # requests that were estimated to wait 2 s and actually waited 3 s
        admission.record_wait(enqueued_at=100.0, raw_estimate_s=2.0, started=103.0)
        assert admission.wait_correction == (1.0 if count < 3 else pytest.approx(1.5))  # 4 errors before it moves
    assert admission.raw_wait_s() > 0
    assert admission.estimated_wait_s() == pytest.approx(1.5 * admission.raw_wait_s())


def test_only_waits_long_enough_to_matter_correct_the_estimate_and_within_bounds():
    # The threshold is min(0.5 s, a tenth of the budget): with a 1 s budget an estimate of 0.1 s counts.
    admission = Admission(FakeQueue(), max_batch_size=1, max_queue_wait_s=1.0)
    for _ in range(4):
        admission.record_wait(enqueued_at=0.0, raw_estimate_s=0.09, started=0.135)
    assert admission.wait_correction == 1.0
    for _ in range(4):
        admission.record_wait(enqueued_at=0.0, raw_estimate_s=0.1, started=0.15)
    assert admission.wait_correction == pytest.approx(1.5)
    large = Admission(FakeQueue(), max_batch_size=1, max_queue_wait_s=30.0)  # 0.5 s, not 3 s
    for _ in range(4):
        large.record_wait(enqueued_at=0.0, raw_estimate_s=0.4, started=0.6)
    assert large.wait_correction == 1.0
    for _ in range(4):
        large.record_wait(enqueued_at=0.0, raw_estimate_s=0.5, started=5.0)  # 10x late: the correction stops at 2
    assert large.wait_correction == 2.0


def test_the_wait_correction_covers_nearly_all_past_errors_not_half():
    """Near saturation each admitted request waits about the budget: a median correction would let half of
    them start past it, so the correction is a high percentile of actual / estimated waits."""
    admission = Admission(FakeQueue(), max_batch_size=1, max_queue_wait_s=30.0, clock=FakeClock())
    ratios = [0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.1, 1.2, 1.3, 1.4]
    for ratio in ratios:
        admission.record_wait(enqueued_at=100.0 - 2.0 * ratio, raw_estimate_s=2.0, started=100.0)
    assert admission.wait_correction == pytest.approx(np.quantile(ratios, WAIT_CORRECTION_QUANTILE))
    assert sum(r <= admission.wait_correction for r in ratios) >= 9 > sum(r <= np.median(ratios) for r in ratios)
