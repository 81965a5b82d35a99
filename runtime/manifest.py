"""manifest.json: what was built, from what, with which tools, and how faithful each artifact is.

Typed: `Manifest.load(folder)` reads the JSON into dataclasses; `to_dict()` writes the same JSON back
(format_version 1; keys a reader does not know are kept in `extra`, so older and newer folders load).
Which variant to serve is chosen in `runtime.selection` from these figures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from .pooling import PoolingSpec
from .similarity import gate_failures

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact folder is missing, incomplete or does not match its manifest."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _split(cls, data: dict) -> tuple[dict, dict]:
    """(known fields of the dataclass `cls`, the rest)."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def _dump(obj, order: tuple[str, ...]) -> dict:
    """The dataclass as JSON, keys in `order` first, None-valued optional fields left out, extra last."""
    out = {}
    for name in order:
        value = getattr(obj, name)
        if value is not None:
            out[name] = value
    out.update(obj.extra)
    return out


@dataclass(frozen=True)
class FileEntry:
    path: str
    bytes: int
    sha256: str

    @classmethod
    def from_file(cls, root: Path, relative_path: str) -> FileEntry:
        return cls(relative_path, (root / relative_path).stat().st_size, sha256_of(root / relative_path))

    def verify(self, root: Path) -> None:
        path = Path(root) / self.path
        if not path.is_file():
            raise ArtifactError(f"Artifact file missing: {path}")
        if path.stat().st_size != self.bytes or sha256_of(path) != self.sha256:
            raise ArtifactError(f"Artifact file is corrupt (sha256 differs from the manifest): {path}")

    def to_dict(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Parity:
    """Fidelity against fp32 and the gate's verdict. `passes_parity` means "passes the whole gate": min
    cosine on the parity corpus >= threshold and, in builds that measure it, mean top-10 agreement on the
    retrieval corpus >= min_top10_agreement. Older manifests have only the cosine fields (None below)."""

    min_cosine: float
    mean_cosine: float
    texts: int
    threshold: float
    passes_parity: bool
    top10_agreement: float | None = None
    top10_agreement_worst1pct: float | None = None
    spearman: float | None = None
    retrieval_texts: int | None = None
    spearman_pairs: int | None = None
    retrieval_min_cosine: float | None = None
    min_top10_agreement: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Parity:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def summary(self) -> str:
        verdict = "passes" if self.passes_parity else "FAILS"
        text = f"min cos {self.min_cosine:.4f}, mean {self.mean_cosine:.4f}"
        if self.top10_agreement is not None:
            text += (
                f", top-10 agreement {self.top10_agreement:.3f} (worst 1% {self.top10_agreement_worst1pct:.2f}),"
                f" Spearman {self.spearman:.4f}"
            )
        return f"{text}: {verdict} the gate"

    def why_failing(self) -> str:
        """The gate's failed conditions, in words ("" when it passes)."""
        if self.passes_parity:
            return ""
        return "; ".join(gate_failures(self.min_cosine, self.top10_agreement, self.threshold, self.min_top10_agreement))


@dataclass(frozen=True)
class ArtifactRecord:
    runtime: str  # "torch" | "onnx"
    precision: str
    path: str  # a folder (torch) or a file (onnx), relative to the artifact folder
    bytes: int
    files: tuple[FileEntry, ...]
    parity: Parity
    notes: str = ""
    recipe: dict | None = None  # quantization recipe actually applied (SmoothQuant variants)
    fusion: dict | None = None  # attention fusion counts (onnx_fused)
    #: service-shaped timing at build: {"texts_per_s", "batch_ms", "batch_texts", "one_text_ms", "threads"}
    speed: dict | None = None
    measured_on: dict | None = None  # the CPU (runtime.host.HostCpu) parity and speed were measured on
    extra: dict = field(default_factory=dict)

    _ORDER = (
        "runtime",
        "precision",
        "path",
        "bytes",
        "files",
        "parity",
        "speed",
        "measured_on",
        "notes",
        "recipe",
        "fusion",
    )

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactRecord:
        known, extra = _split(cls, data)
        known["files"] = tuple(FileEntry(**f) for f in known["files"])
        known["parity"] = Parity.from_dict(known["parity"])
        return cls(**known, extra=extra)

    @classmethod
    def from_files(
        cls, root: Path, rel_path: str, runtime: str, precision: str, parity: Parity, notes: str, **optional
    ) -> ArtifactRecord:
        """Record the files under root/rel_path (a file or a folder) with their sizes and sha256."""
        target = root / rel_path
        if target.is_dir():
            paths = sorted(str(p.relative_to(root)) for p in target.rglob("*") if p.is_file())
        else:
            paths = [rel_path]
        files = tuple(FileEntry.from_file(root, p) for p in paths)
        return cls(runtime, precision, rel_path, sum(f.bytes for f in files), files, parity, notes, **optional)

    def to_dict(self) -> dict:
        out = _dump(self, self._ORDER)
        out["files"] = [f.to_dict() for f in self.files]
        out["parity"] = self.parity.to_dict()
        return out

    def verify(self, root: Path) -> None:
        for entry in self.files:
            entry.verify(root)


def public_model_name(source: str) -> str:
    """The model as users know it: a hub id stays, a local folder shows only its name (no file paths)."""
    source = source.rstrip("/")
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
        return source.replace("\\", "/").rsplit("/", 1)[-1]
    return source


@dataclass(frozen=True)
class ModelInfo:
    source: str
    dimension: int
    pooling: str
    normalize: bool
    max_seq_length: int
    model_type: str | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)

    @property
    def pooling_spec(self) -> PoolingSpec:
        return PoolingSpec(mode=self.pooling, normalize=self.normalize, max_seq_length=self.max_seq_length)

    def to_dict(self) -> dict:
        return _dump(self, tuple(f.name for f in fields(self) if f.name != "extra"))


@dataclass(frozen=True)
class TokenizerInfo:
    path: str  # tokenizer.json, relative to the artifact folder
    files: tuple[FileEntry, ...]

    def to_dict(self) -> dict:
        return {"files": [f.to_dict() for f in self.files], "path": self.path}


@dataclass(frozen=True)
class Manifest:
    created_at: str
    model: ModelInfo
    tokenizer: TokenizerInfo
    artifacts: dict[str, ArtifactRecord]
    tools: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)  # threads, opset, machine, and (newer builds) the recipe
    parity: dict = field(default_factory=dict)  # how parity was measured: reference, texts, threshold
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    # ---- reading and writing ----
    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        known, extra = _split(cls, data)
        try:
            tokenizer = known["tokenizer"]
            known["model"] = ModelInfo.from_dict(known["model"])
            known["tokenizer"] = TokenizerInfo(tokenizer["path"], tuple(FileEntry(**f) for f in tokenizer["files"]))
            known["artifacts"] = {k: ArtifactRecord.from_dict(v) for k, v in known["artifacts"].items()}
            return cls(**known, extra=extra)
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"manifest.json lacks or mistypes a field ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, artifacts_dir: Path) -> Manifest:
        path = Path(artifacts_dir) / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(f"No {MANIFEST_FILE} in '{artifacts_dir}': run `python -m build_artifacts` first.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} is not a manifest (a JSON object): rebuild with `python -m build_artifacts`.")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        out = {
            "format_version": self.format_version,
            "created_at": self.created_at,
            "model": self.model.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "tools": self.tools,
            "build": self.build,
            "parity": self.parity,
            "artifacts": {name: record.to_dict() for name, record in self.artifacts.items()},
        }
        out.update(self.extra)
        return out

    def write(self, artifacts_dir: Path) -> None:
        write_json_atomic(Path(artifacts_dir) / MANIFEST_FILE, self.to_dict())

    # ---- checks ----
    def record(self, variant: str) -> ArtifactRecord:
        if variant not in self.artifacts:
            have = ", ".join(sorted(self.artifacts))
            raise ArtifactError(f"Variant '{variant}' is not in the manifest (have: {have}).")
        return self.artifacts[variant]

    def path_of(self, artifacts_dir: Path, variant: str) -> Path:
        return Path(artifacts_dir) / self.record(variant).path

    def verify(self, artifacts_dir: Path, variant: str) -> None:
        """sha256 and size of every file of one variant, and of the tokenizer (raises ArtifactError)."""
        self.record(variant).verify(artifacts_dir)
        for entry in self.tokenizer.files:
            entry.verify(artifacts_dir)

    # ---- the gate's verdicts (which variant to serve: runtime.selection) ----
    def passing(self) -> list[str]:
        """Variants that pass the gate, in manifest order."""
        return [name for name, record in self.artifacts.items() if record.parity.passes_parity]

    def failing(self) -> list[str]:
        return [name for name, record in self.artifacts.items() if not record.parity.passes_parity]


def load_manifest(artifacts_dir: Path) -> Manifest:
    return Manifest.load(artifacts_dir)


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
