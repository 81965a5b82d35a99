"""The typed manifest: old folders still load, the JSON round-trips, the parity policy, sha256 checks (no weights)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from build_artifacts.recipe import DEFAULT_RECIPE, Recipe
from runtime.manifest import (
    ArtifactError,
    ArtifactRecord,
    FileEntry,
    Manifest,
    Parity,
    TokenizerInfo,
    public_model_name,
)

from .conftest import REPO

REFERENCE = REPO / "benchmarks" / "reference" / "manifest.json"  # built by the code before the runtime package


def _parity(min_cosine: float) -> Parity:
    return Parity(min_cosine, min(1.0, min_cosine + 0.01), 42, 0.99, min_cosine >= 0.99)


@pytest.fixture
def folder(tmp_path):
    """A fake artifact folder: two ONNX 'graphs' (one failing parity) and a tokenizer, with a real manifest."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "tokenizer").mkdir()
    for rel, data in (("onnx/a.onnx", b"a" * 100), ("onnx/b.onnx", b"b" * 50), ("tokenizer/tokenizer.json", b"{}")):
        (tmp_path / rel).write_bytes(data)
    artifacts = {
        "onnx_int8": ArtifactRecord.from_files(tmp_path, "onnx/b.onnx", "onnx", "int8", _parity(0.5), "fails"),
        "onnx_optimized": ArtifactRecord.from_files(tmp_path, "onnx/a.onnx", "onnx", "fp32", _parity(0.9999), "ok"),
    }
    manifest = Manifest.from_dict(
        {
            "created_at": "2026-01-01T00:00:00+00:00",
            "model": {"source": "m", "dimension": 4, "pooling": "mean", "normalize": True, "max_seq_length": 16},
            "tokenizer": TokenizerInfo(
                "tokenizer/tokenizer.json", (FileEntry.from_file(tmp_path, "tokenizer/tokenizer.json"),)
            ).to_dict(),
            "build": {"recipe": DEFAULT_RECIPE.to_dict()},
            "artifacts": {k: v.to_dict() for k, v in artifacts.items()},
        }
    )
    manifest.write(tmp_path)
    return tmp_path


def test_a_manifest_written_by_the_old_code_loads_and_round_trips_byte_for_byte():
    text = REFERENCE.read_text()
    manifest = Manifest.from_dict(json.loads(text))
    assert manifest.model.dimension == 768 and manifest.model.pooling_spec.max_seq_length == 384
    assert manifest.artifacts["onnx_int8_smooth"].recipe["alpha"] == 0.5
    assert manifest.artifacts["onnx_fused"].fusion["fused_attention_blocks"] == 12
    assert json.dumps(manifest.to_dict(), indent=2) + "\n" == text


def test_unknown_keys_survive_a_round_trip():
    data = json.loads(REFERENCE.read_text())
    data["future_field"] = {"x": 1}
    data["artifacts"]["onnx_int8"]["calibration"] = "new"
    data["model"]["revision"] = "abc"
    assert Manifest.from_dict(data).to_dict() == data


def test_passing_and_failing_read_the_gate(folder):
    manifest = Manifest.load(folder)
    assert manifest.passing() == ["onnx_optimized"] and manifest.failing() == ["onnx_int8"]


def test_verify_detects_corrupt_and_missing_files(folder):
    manifest = Manifest.load(folder)
    manifest.verify(folder, "onnx_optimized")
    (folder / "onnx" / "a.onnx").write_bytes(b"a" * 99 + b"x")
    with pytest.raises(ArtifactError, match="corrupt"):
        manifest.verify(folder, "onnx_optimized")
    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        manifest.verify(folder, "onnx_int8")
    with pytest.raises(ArtifactError, match="not in the manifest"):
        manifest.verify(folder, "onnx_fused")


def test_missing_or_broken_manifest_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="No manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match="lacks"):
        Manifest.load(tmp_path)


def test_recipe_is_written_into_the_manifest(folder):
    recipe = Manifest.load(folder).build["recipe"]
    assert recipe == DEFAULT_RECIPE.to_dict() and recipe["onnx_outlier_channels"] == 16
    assert Recipe.from_dict(recipe) == DEFAULT_RECIPE
    assert replace(DEFAULT_RECIPE, onnx_opset=18).to_dict()["onnx_opset"] == 18


def test_public_model_name_keeps_hub_ids_and_hides_paths():
    assert public_model_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    for local in ("/models/all-MiniLM-L6-v2/", "./all-MiniLM-L6-v2", "a/b/all-MiniLM-L6-v2", "C:\\m\\all-MiniLM-L6-v2"):
        assert public_model_name(local) == "all-MiniLM-L6-v2", local
