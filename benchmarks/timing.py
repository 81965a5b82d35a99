"""Timing loop and statistics (torch only inside dynamo_graph_count)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    runs: int
    mean_ms: float
    median_ms: float
    p95_ms: float
    min_ms: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples_ms: list[float]) -> Timing:
    return Timing(
        runs=len(samples_ms),
        mean_ms=statistics.fmean(samples_ms),
        median_ms=statistics.median(samples_ms),
        p95_ms=percentile(samples_ms, 0.95),
        min_ms=min(samples_ms),
    )


def time_calls(
    fn: Callable[[], object],
    runs: int,
    warmup: int,
    budget_s: float | None = None,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Call fn `warmup` times untimed, then up to `runs` timed calls (fewer if budget_s runs out, min 2)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if budget_s is not None and len(samples) >= 2 and time.perf_counter() - started > budget_s:
            break
    return summarize(samples)


def dynamo_graph_count() -> int:
    """Graphs torch.compile has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
