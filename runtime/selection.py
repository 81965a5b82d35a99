"""Which variant a consumer serves: the most faithful of the fastest that pass the gate on a CPU like this one.

For each row of the variant table that the consumer runs on its device:
1. built? (in the manifest)
2. can this host run it? (`needs_any`: e.g. 8-bit weights only with VNNI or AMX, bf16 only with AVX512-BF16/AMX)
3. does it pass the gate? (the manifest's figures)
4. was that fidelity shown on a CPU like this one? Where this CPU differs from the build's in a feature the
   variant's numbers depend on (`fidelity_depends_on`), its fidelity is re-checked here against the fp32
   reference vectors the artifact ships (`recheck`), or the variant is refused.
5. how fast is it here? The manifest's speed figures (service-shaped batches, timed at build) where this is
   the build's CPU; otherwise timed briefly now (`time_here`).
`auto` takes the most faithful of the fastest: among equally faithful candidates the one with the most texts/s
at the service batch, and a less faithful one only where it is faster at both shapes a service sees, the batch
and one text (by SPEEDUP_FOR_FIDELITY: an approximation must earn its loss). A named variant must pass steps
1-4. The Choice lists every candidate with its figures and verdict (for /info, the log and /metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .host import HostCpu, probe_cpu
from .manifest import ArtifactError, Manifest
from .variants import VARIANTS, Variant, served_by

#: How much faster, at the service batch AND at one text, a less faithful candidate must be to be served instead
#: of a more faithful one: above the spread of repeated timings of one variant on a shared 2-core machine (the
#: same fp32 graph timed as onnx_fp32 and onnx_optimized differs by 0.2% at 32 texts and 2.3% at one).
SPEEDUP_FOR_FIDELITY = 1.05

#: (variant) -> the gate's figures measured here ({"passes_parity": bool, ...}) or None when it cannot check
Recheck = Callable[[Variant], dict | None]
#: (variant) -> its speed measured here ({"texts_per_s": float, ...})
TimeHere = Callable[[Variant], dict]


@dataclass
class Candidate:
    name: str
    engine: str
    precision: str
    verdict: str  # "chosen", "passes", or why not
    eligible: bool = False
    speed: dict | None = None  # {"texts_per_s", "batch_ms", "one_text_ms", "measured": "build"|"here"}
    fidelity: dict | None = None  # the gate's figures that count on this host

    @property
    def texts_per_s(self) -> float | None:
        return (self.speed or {}).get("texts_per_s")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "variant": self.name,
            "engine": self.engine,
            "precision": self.precision,
            "verdict": self.verdict,
        }
        if self.speed:
            out["speed"] = self.speed
        if self.fidelity:
            out["fidelity"] = self.fidelity
        return out


@dataclass
class Choice:
    variant: str
    reason: str
    host: HostCpu
    build_host: HostCpu | None
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "reason": self.reason,
            "host": self.host.to_dict(),
            "build_host": self.build_host.to_dict() if self.build_host else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def lines(self) -> list[str]:
        """The candidates as log lines."""
        out = []
        for c in self.candidates:
            measured = (c.speed or {}).get("measured")
            speed = f"{c.texts_per_s:.1f} texts/s ({measured})" if c.texts_per_s else "no speed figure"
            out.append(f"{c.name:<18} {c.precision:<26} {speed:<28} {c.verdict}")
        return out


def build_host_of(manifest: Manifest, name: str) -> HostCpu | None:
    record = manifest.artifacts[name]
    return HostCpu.from_dict(record.measured_on) or HostCpu.from_dict(manifest.build.get("host"))


def choose(
    manifest: Manifest,
    service: str,
    requested: str = "auto",
    device: str = "cpu",
    host: HostCpu | None = None,
    recheck: Recheck | None = None,
    time_here: TimeHere | None = None,
    rows: tuple[Variant, ...] = VARIANTS,
) -> Choice:
    """The variant to serve (raises ArtifactError, one line, where none or the requested one cannot be)."""
    host = host or probe_cpu()
    served = served_by(service, device, rows)
    if requested != "auto" and requested not in {v.name for v in served}:
        raise ArtifactError(
            f"Variant '{requested}' is not served by {service} on {device} "
            f"(choose from: auto, {', '.join(v.name for v in served)})."
        )
    considered = [v for v in served if requested in ("auto", v.name)]
    candidates = [_judge(manifest, v, device, host, recheck) for v in considered]
    eligible = [c for c in candidates if c.eligible]
    build_host = HostCpu.from_dict(manifest.build.get("host"))
    if requested != "auto":
        if not eligible:
            raise ArtifactError(f"Variant '{requested}' cannot be served here: {candidates[0].verdict}.")
        return _chosen(candidates, eligible[0], f"requested; {eligible[0].verdict}", host, build_host)
    if not eligible:
        why = "; ".join(f"{c.name}: {c.verdict}" for c in candidates) or "no variant of this runtime in the table"
        raise ArtifactError(f"No {service} variant can be served on this host ({why}).")
    for c in eligible:
        # One candidate needs no timing; where several do, each gets a figure from this CPU.
        c.speed = _speed(manifest, c.name, device, host, time_here if len(eligible) > 1 else None, rows)
    timed = [c for c in eligible if c.texts_per_s]
    if timed:
        best, traded = _most_faithful_of_the_fastest(timed)
        speed = best.speed or {}
        where = "measured on this CPU at build" if speed["measured"] == "build" else "timed at start-up"
        reason = (
            f"{'fastest' if best is max(timed, key=_batch_speed) else 'most faithful of the fastest'} of "
            f"{len(eligible)} that pass the gate here: {best.texts_per_s:.1f} texts/s at a batch of "
            f"{speed.get('batch_texts', '?')}, {speed.get('one_text_ms', float('nan')):.1f} ms for one text ({where})"
            + (f"; {', '.join(traded)} faster at the batch but not at one text, and less faithful" if traded else "")
        )
    else:
        best = eligible[0]
        reason = "no speed figures (an older manifest, another CPU and no timing): the first that passes"
    return _chosen(candidates, best, reason, host, build_host)


def _fidelity(c: Candidate) -> tuple[float, float]:
    figures = c.fidelity or {}
    return (figures.get("top10_agreement", 1.0), figures.get("min_cosine", 1.0))


def _batch_speed(c: Candidate) -> float:
    return c.texts_per_s or 0.0


def _faster_at_both(fast: Candidate, than: Candidate) -> bool:
    fast_speed, slow_speed = fast.speed or {}, than.speed or {}
    at_batch = _batch_speed(fast) >= SPEEDUP_FOR_FIDELITY * _batch_speed(than)
    one, other = fast_speed.get("one_text_ms"), slow_speed.get("one_text_ms")
    at_one = one is None or other is None or one * SPEEDUP_FOR_FIDELITY <= other  # no figure: the batch decides
    return at_batch and at_one


def _most_faithful_of_the_fastest(timed: list[Candidate]) -> tuple[Candidate, list[str]]:
    """Walk from the most faithful down: a less faithful candidate replaces the choice only where it is faster
    at both shapes. Equally faithful candidates: the most texts/s (ties: table order). Returns the choice and
    the faster-at-the-batch candidates it was kept over."""
    ordered = sorted(timed, key=lambda c: (_fidelity(c), _batch_speed(c)), reverse=True)
    best, traded = ordered[0], list[str]()
    for c in ordered[1:]:
        if _fidelity(c) == _fidelity(best):
            continue  # sorted: best is already the fastest of these
        if _faster_at_both(c, best):
            best, traded = c, []
        elif _batch_speed(c) > _batch_speed(best):
            traded.append(c.name)
    return best, traded


def _chosen(candidates, best, reason, host, build_host) -> Choice:
    best.verdict = "chosen"
    for c in candidates:
        if c.eligible and c is not best:
            if not c.texts_per_s:
                c.verdict = "passes"
            elif c.texts_per_s > (best.texts_per_s or 0.0):
                c.verdict = "passes; faster at the batch, not at one text, less faithful"
            else:
                c.verdict = "passes, slower"
    return Choice(best.name, reason, host, build_host, candidates)


def _judge(manifest: Manifest, row: Variant, device: str, host: HostCpu, recheck: Recheck | None) -> Candidate:
    c = Candidate(row.name, row.engine, row.precision, "")
    if row.name not in manifest.artifacts:
        c.verdict = "not built"
        return c
    record = manifest.artifacts[row.name]
    c.fidelity = _gate_figures(record.parity.to_dict(), "build")
    if device == "cpu" and not host.has_any(row.needs_any):
        c.verdict = f"refused: this CPU has none of {', '.join(row.needs_any)}"
        return c
    if not record.parity.passes_parity:
        c.verdict = f"fails the gate ({record.parity.why_failing() or 'marked failing'})"
        return c
    built_on = build_host_of(manifest, row.name)
    differs = host.differs_in(built_on, row.fidelity_depends_on) if built_on else list(row.fidelity_depends_on)
    if device == "cpu" and differs:
        where = f"this CPU differs from the build's in {', '.join(differs)}" if built_on else "no build CPU recorded"
        figures = recheck(row) if recheck else None
        if figures is None:
            c.verdict = f"refused: {where} and its fidelity could not be re-checked here"
            return c
        c.fidelity = _gate_figures(figures, "re-checked here")
        if not figures["passes_parity"]:
            c.verdict = f"refused: {where}; re-checked here it fails the gate (min cos {figures['min_cosine']:.4f})"
            return c
        c.verdict = f"passes (re-checked here: {where})"
    else:
        c.verdict = "passes"
    c.eligible = True
    return c


def _gate_figures(parity: dict, where: str) -> dict:
    keys = ("min_cosine", "top10_agreement", "top10_agreement_worst1pct", "passes_parity", "texts", "retrieval_texts")
    return {**{k: parity[k] for k in keys if parity.get(k) is not None}, "measured": where}


def _speed(
    manifest: Manifest, name: str, device: str, host: HostCpu, time_here: TimeHere | None, rows: tuple[Variant, ...]
) -> dict | None:
    record = manifest.artifacts[name]
    built_on = build_host_of(manifest, name)
    if not record.speed:
        return None  # an older manifest: no figures to compare with, and its files may predate the timing
    if device == "cpu" and built_on is not None and built_on.same_cpu(host):
        return {**record.speed, "measured": "build"}
    if time_here is None:
        return {**record.speed, "measured": f"build, on {built_on.model if built_on else 'another CPU'}"}
    return {**time_here(next(v for v in rows if v.name == name)), "measured": "here"}


__all__ = ["Candidate", "Choice", "choose"]
