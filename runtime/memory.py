"""Bounded memory under traffic of many shapes: the engines' per-shape caches capped, freed heap handed back.

Measured on MPNet-base (benchmarks/reference/zen4/memory): every distinct (batch, length) a model call sees adds
kernels to per-shape caches that hold hundreds of shapes by default: OpenVINO's CPU runtime cache (5,000 entries),
oneDNN's primitive cache (1,024, in OpenVINO's and in torch's oneDNN alike) and ideep's (torch, 1,024). Each new
shape cost about 0.9 MB, so RSS climbed for as long as new shapes came. Capped caches stop that climb; what is left
is glibc keeping freed activation buffers in its heap (torch bf16: +1.3 GB at a plateau), which `malloc_trim`
hands back to the system. Capacity 0 (no cache) cost 15% of throughput, a fixed mmap threshold 35%; 256 entries
and a trim at most once a second cost nothing measurable on fixed shapes nor in OpenVINO under many shapes, but
11-19% of torch's throughput under many shapes (its primitives are costly to remake: a larger capacity buys that
back for memory). jemalloc aborted in OpenVINO (double free).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from dataclasses import dataclass

#: entries per engine cache of compiled kernels; enough for the shapes of a busy minute, not for every shape seen
DEFAULT_CACHE_CAPACITY = 256
#: seconds between two hand-backs of freed heap at most (0: never)
DEFAULT_TRIM_INTERVAL_S = 1.0
#: oneDNN (in torch and in OpenVINO) and ideep (torch) read their capacities from the environment when their first
#: kernel is made: they are set before any engine runs
CACHE_ENVIRONMENT = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

_capacity = DEFAULT_CACHE_CAPACITY


@dataclass(frozen=True)
class MemoryBounds:
    """How a process keeps its memory bounded: cache capacity per engine and the trim interval."""

    cache_capacity: int = DEFAULT_CACHE_CAPACITY
    trim_interval_s: float = DEFAULT_TRIM_INTERVAL_S

    def apply(self) -> None:
        """Cap the engines' caches for this process; call before a model is loaded (a later call changes what
        OpenVINO compiles from then on, but oneDNN keeps the capacity it read first)."""
        global _capacity
        _capacity = self.cache_capacity
        for name in CACHE_ENVIRONMENT:
            os.environ[name] = str(self.cache_capacity)

    def to_dict(self) -> dict:
        return {"engine_cache_capacity": self.cache_capacity, "malloc_trim_interval_s": self.trim_interval_s}


def cache_capacity() -> int:
    """The capacity the engines' runners compile with (OpenVINO's CPU_RUNTIME_CACHE_CAPACITY)."""
    return _capacity


class HeapTrimmer:
    """glibc's malloc_trim(0) at most once every `interval_s`, from the thread that runs the model, between calls
    (where no kernel allocates). A no-op where the C library has no malloc_trim (musl) or interval_s is 0."""

    def __init__(self, interval_s: float = DEFAULT_TRIM_INTERVAL_S, clock=time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self.trims = 0
        self._trim = _malloc_trim() if interval_s > 0 else None

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed since the last trim; True when it did."""
        if self._trim is None:
            return False
        now = self._clock()
        with self._lock:
            if now - self._last < self.interval_s:
                return False
            self._last = now
        self._trim(0)
        self.trims += 1
        return True


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def resident_mb() -> float | None:
    """This process's resident memory in MB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
