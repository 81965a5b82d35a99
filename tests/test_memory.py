"""Bounded memory (runtime/memory.py) and the soak's arithmetic (loadtest/soak.py): fast lane, no weights."""

from __future__ import annotations

import os
import random

import pytest

from loadtest.soak import LONGEST_CHARS, MOST_TEXTS, SHORTEST_CHARS, memory_summary, slope_mb_per_min, text_drawer
from runtime import memory
from runtime.memory import CACHE_ENVIRONMENT, HeapTrimmer, MemoryBounds, resident_mb
from services.onnx_api.embedder import OnnxSettings


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_heap_is_trimmed_at_most_once_an_interval():
    clock = Clock()
    trimmer = HeapTrimmer(1.0, clock=clock)
    calls = []
    trimmer._trim = calls.append  # glibc's malloc_trim stands in for a recorder: the interval logic is tested
    assert not trimmer.maybe_trim()  # no interval has passed since it was made
    clock.now += 1.0
    assert trimmer.maybe_trim() and calls == [0]
    clock.now += 0.5
    assert not trimmer.maybe_trim()
    clock.now += 0.6
    assert trimmer.maybe_trim() and trimmer.trims == 2


def test_interval_zero_never_trims_and_glibc_trim_is_found_here():
    clock = Clock()
    off = HeapTrimmer(0, clock=clock)
    clock.now += 10
    assert not off.maybe_trim() and off.trims == 0
    real = HeapTrimmer(0.001)  # the real malloc_trim of this glibc
    real._last -= 1
    assert real.maybe_trim() and real.trims == 1


def test_bounds_set_the_engines_cache_capacities(monkeypatch):
    for name in CACHE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(memory, "_capacity", memory.DEFAULT_CACHE_CAPACITY)
    MemoryBounds(cache_capacity=64, trim_interval_s=2).apply()
    assert memory.cache_capacity() == 64
    assert all(os.environ[name] == "64" for name in CACHE_ENVIRONMENT)


def test_settings_carry_the_bounds_and_refuse_negative_values(tmp_path):
    settings = OnnxSettings(engine_cache_capacity=32, malloc_trim_interval_s=0.5)
    assert settings.memory_bounds() == MemoryBounds(32, 0.5)
    with pytest.raises(ValueError, match="engine_cache_capacity"):
        OnnxSettings(engine_cache_capacity=-1)


def test_resident_memory_is_read_from_proc():
    rss = resident_mb()
    assert rss is not None and 10 < rss < 100_000


def samples(rss_by_minute: list[float]) -> list[dict]:
    return [{"t_s": 60.0 * i, "rss_mb": rss} for i, rss in enumerate(rss_by_minute)]


def test_slope_and_summary_of_a_climbing_then_flat_curve():
    climbing = samples([500 + 50 * i for i in range(11)])
    assert slope_mb_per_min(climbing) == pytest.approx(50)
    flat_after_climb = samples([500, 700, 800, 820, 820, 821, 820, 821, 820, 821, 820])
    summary = memory_summary(flat_after_climb, duration_s=600)
    assert summary["rss_after_warmup_mb"] == 500 and summary["rss_peak_mb"] == 821
    assert abs(summary["slope_second_half_mb_per_min"]) < 0.5
    assert summary["rss_steady_mb"] == 820.5 and summary["steady_above_warmup_mb"] == 320.5
    assert summary["rss_at_mb"] == {"1 min": 700, "2 min": 800, "4 min": 820, "8 min": 820}


def test_soak_texts_have_many_lengths_within_their_bounds():
    draw = text_drawer("word " * 5000)
    rng = random.Random(1)
    requests = [draw(rng) for _ in range(200)]
    assert all(1 <= len(texts) <= MOST_TEXTS for texts in requests)
    lengths = {len(text) for texts in requests for text in texts}
    assert min(lengths) >= SHORTEST_CHARS - 5 and max(lengths) <= LONGEST_CHARS and len(lengths) > 300
