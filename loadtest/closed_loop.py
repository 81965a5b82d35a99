"""A closed-loop HTTP load client in one asyncio process: the Ray Serve comparison and the GPU serving run use it.

`clients` workers each send a request, wait for its answer, and send the next (no think time). A 429 is
counted apart and its worker waits the Retry-After it was given, as the Locust users do; every 200 is
validated (count, dimension, unit norm). Only answers that arrive inside the measured window count.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from .validation import validate_embeddings


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int | str  # the HTTP status, "invalid: <why>", or the transport error's name
    texts: int
    server_ms: float | None  # the service's own timing header, for 200s


async def closed_loop(
    base_url: str,
    clients: int,
    duration_s: float,
    warmup_s: float,
    draw_texts: Callable[[random.Random], list[str]],
    dimension: int,
    seed: int = 0,
    server_time_header: str = "x-total-time",
    body: dict | None = None,
    sink: list[Answer] | None = None,
) -> list[Answer]:
    """Run the load for warmup_s + duration_s; return the answers received in the last duration_s.

    `body`: more fields of every request; `sink`: a list that receives every answer as it arrives (for a
    caller that watches the run while it goes)."""
    import httpx

    answers: list[Answer] = [] if sink is None else sink
    t0 = time.perf_counter()
    window = (t0 + warmup_s, t0 + warmup_s + duration_s)

    async def worker(index: int, client) -> None:
        rng = random.Random(seed + index)
        while time.perf_counter() < window[1]:
            texts = draw_texts(rng)
            started = time.perf_counter()
            try:
                response = await client.post("/embed", json={"inputs": texts, **(body or {})})
                status = response.status_code
            except Exception as exc:  # a transport failure is an outcome too
                response, status = None, type(exc).__name__
            ended = time.perf_counter()
            server_ms = None
            if status == 200:
                reason = validate_embeddings(response.json(), len(texts), dimension)
                status = 200 if reason is None else f"invalid: {reason}"
                server_ms = float(response.headers.get(server_time_header, "nan"))
            answers.append(Answer(started, ended, status, len(texts), server_ms))
            if status == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(i, client) for i in range(clients)))
    # A request that straddles the window's start counts: the loop is closed.
    return [a for a in answers if window[0] <= a.ended <= window[1]]


def summarize(answers: list[Answer], clients: int, duration_s: float) -> dict:
    """Goodput (texts in valid 200s per second), p50/p95/p99 of the 200s, 429 share, other failures, and the
    median time spent outside the service's own timing (HTTP, proxies, routing)."""
    ok = [a for a in answers if a.status == 200]
    latencies = sorted((a.ended - a.started) * 1000 for a in ok)
    timed = [a for a in ok if a.server_ms is not None and a.server_ms == a.server_ms]  # not NaN
    other = [a.status for a in answers if a.status not in (200, 429)]

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 2) if values else None

    return {
        "clients": clients,
        "answers": len(answers),
        "goodput_texts_per_s": round(sum(a.texts for a in ok) / duration_s, 1),
        "requests_per_s": round(len(ok) / duration_s, 2),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "share_429": round(sum(a.status == 429 for a in answers) / max(len(answers), 1), 4),
        "other_failures": len(other),
        "other_failure_examples": sorted({str(s) for s in other})[:5],
        "server_ms_median": median([a.server_ms for a in timed]),
        "overhead_ms_median": median([(a.ended - a.started) * 1000 - a.server_ms for a in timed]),
    }
