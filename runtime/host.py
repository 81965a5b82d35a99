"""The host a variant runs on: the CPU model and the instruction-set features that change a variant's speed or
its numbers, and the versions of the packages installed. One probe for the build, the benchmarks and the
services; injectable (tests pretend other hosts by passing a HostCpu, or another cpuinfo file).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

#: the /proc/cpuinfo flags that decide which kernels ONNX Runtime, OpenVINO and oneDNN pick: fp32 vector
#: width, int8 dot products (VNNI: without it int8 GEMMs saturate in U8S8), bf16 dot products and AMX tiles
RELEVANT_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class HostCpu:
    model: str
    features: frozenset[str]
    cores: int = 0
    machine: str = ""

    def has_any(self, features: tuple[str, ...]) -> bool:
        return not features or any(f in self.features for f in features)

    def differs_in(self, other: HostCpu, features: tuple[str, ...]) -> list[str]:
        """Features of `features` that one host has and the other lacks."""
        return sorted(f for f in features if (f in self.features) != (f in other.features))

    def same_cpu(self, other: HostCpu) -> bool:
        """Same model and the same relevant features: figures measured on one hold on the other."""
        return self.model == other.model and self.features == other.features

    def summary(self) -> str:
        return f"{self.model} ({', '.join(sorted(self.features)) or 'no AVX2'})"

    def to_dict(self) -> dict:
        return {"model": self.model, "features": sorted(self.features), "cores": self.cores, "machine": self.machine}

    @classmethod
    def from_dict(cls, data: dict | None) -> HostCpu | None:
        if not data:
            return None
        return cls(
            str(data.get("model", "")),
            frozenset(data.get("features", ())),
            int(data.get("cores", 0)),
            str(data.get("machine", "")),
        )


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or "unknown CPU", frozenset(flags & set(RELEVANT_FEATURES))


@cache
def probe_cpu(cpuinfo: Path = CPUINFO) -> HostCpu:
    """This machine's CPU (read once per process)."""
    try:
        model, features = parse_cpuinfo(cpuinfo.read_text())
    except OSError:
        model, features = platform.processor() or "unknown CPU", frozenset()
    return HostCpu(model, features, os.cpu_count() or 0, platform.machine())


@cache
def _distributions_of(module: str) -> tuple[str, ...]:
    return tuple(metadata.packages_distributions().get(module, ()))


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    # An import name another distribution provides (onnxruntime from onnxruntime-gpu on the GPU images).
    for dist in _distributions_of(name):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_versions(names: Iterable[str], keep_missing: bool = False) -> dict[str, str | None]:
    """{"python": version, name: installed version, ...}; a package not installed is None with keep_missing,
    else left out. Names are distribution or import names. Reads metadata only: imports nothing."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        version = _version(name)
        if version is not None or keep_missing:
            versions[name] = version
    return versions


__all__ = ["RELEVANT_FEATURES", "HostCpu", "package_versions", "parse_cpuinfo", "probe_cpu"]
