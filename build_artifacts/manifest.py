"""manifest.json: what was built, from what, with which tools, and how faithful each artifact is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact folder is missing, incomplete or does not match its manifest."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path, relative_paths: list[str]) -> list[dict]:
    return [
        {"path": rel, "bytes": (root / rel).stat().st_size, "sha256": sha256_of(root / rel)} for rel in relative_paths
    ]


def load_manifest(artifacts_dir: Path) -> dict:
    path = Path(artifacts_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"No {MANIFEST_FILE} in '{artifacts_dir}': run `python -m build_artifacts` first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None


def verify_artifact(artifacts_dir: Path, manifest: dict, variant: str) -> None:
    """Check every file of one artifact against the sha256 and size recorded in the manifest."""
    artifacts = manifest.get("artifacts", {})
    if variant not in artifacts:
        raise ArtifactError(f"Variant '{variant}' is not in the manifest (have: {', '.join(sorted(artifacts))}).")
    verify_files(artifacts_dir, artifacts[variant]["files"])


def verify_files(artifacts_dir: Path, entries: list[dict]) -> None:
    """Each {path, bytes, sha256} entry must exist and match (raises ArtifactError)."""
    for entry in entries:
        path = Path(artifacts_dir) / entry["path"]
        if not path.is_file():
            raise ArtifactError(f"Artifact file missing: {path}")
        if path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            raise ArtifactError(f"Artifact file is corrupt (sha256 differs from the manifest): {path}")


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
