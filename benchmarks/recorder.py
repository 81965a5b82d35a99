"""Records of a benchmark run: one row per (exercise, variant, input), speedups, progress with an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime.similarity import rowwise_cosine

from .inputs import InputCase
from .timing import Timing

BASELINE_VARIANT = "no_optimizations"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Recorder:
    device: str
    #: measurements this run will time (for progress and the estimate of the time left); 0: unknown
    planned: int = 0
    records: list[dict] = field(default_factory=list)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    done: int = 0

    def progress(self) -> str:
        """'[done/planned, elapsed, ~left]': the time left assumes the rest cost what the done ones did."""
        elapsed = time.perf_counter() - self.started
        if not self.planned:
            return f"[{self.done}, {_duration(elapsed)}]"
        left = elapsed / max(self.done, 1) * max(self.planned - self.done, 0)
        return f"[{self.done}/{self.planned}, {_duration(elapsed)} elapsed, ~{_duration(left)} left]"

    def add(
        self,
        exercise: str,
        variant: str,
        case: InputCase,
        timing: Timing | None,
        embeddings=None,
        device: str | None = None,
        skipped: str | None = None,
        note: str | None = None,
    ) -> dict:
        min_cos = None
        if embeddings is not None and case.name in self.references:
            cosines = rowwise_cosine(np.asarray(embeddings, dtype=np.float32), self.references[case.name])
            min_cos = round(float(cosines.min()), 6)
        record = {
            "exercise": exercise,
            "variant": variant,
            "device": device or self.device,
            "input": case.name,
            "batch_size": case.batch_size,
            "seq_len": case.seq_len,
            "runs": timing.runs if timing else 0,
            "mean_ms": round(timing.mean_ms, 3) if timing else None,
            "median_ms": round(timing.median_ms, 3) if timing else None,
            "p95_ms": round(timing.p95_ms, 3) if timing else None,
            "speedup": None,
            "min_cosine": min_cos,
            "skipped": skipped,
        }
        if note:
            record["note"] = note
        self.records.append(record)
        label = f"{exercise:<4} {variant:<34} {case.name:<10}"
        if not skipped:  # skipped groups print their reason once, where they are skipped
            self.done += 1
            cos = f"{min_cos:.4f}" if min_cos is not None else "   -  "
            print(
                f"  {label} median {timing.median_ms:9.2f} ms  p95 {timing.p95_ms:9.2f}  min cos {cos}  "
                f"runs {timing.runs:>3}  {self.progress()}",
                flush=True,
            )
        return record

    def fill_speedups(self) -> None:
        baselines = {
            (r["input"], r["device"]): r["median_ms"]
            for r in self.records
            if r["variant"] == BASELINE_VARIANT and r["median_ms"]
        }
        cpu_baselines = {
            r["input"]: r["median_ms"]
            for r in self.records
            if r["variant"] == BASELINE_VARIANT and r["device"] == "cpu" and r["median_ms"]
        }
        for r in self.records:
            if r["variant"].endswith(("_first_call", "_cold_start")):
                continue  # one-off costs, not comparable to a steady-state call
            base = baselines.get((r["input"], r["device"])) or cpu_baselines.get(r["input"])
            if base and r["median_ms"]:
                r["speedup"] = round(base / r["median_ms"], 3)
