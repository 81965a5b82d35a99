"""build_artifacts refuses broken model folders with exit 2 and one line, and writes nothing (fast lane)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _model_copy(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir()
    for item in source.iterdir():
        if item.name in skip:
            continue
        (target / item.name).symlink_to(item)  # the 91 MB weights are linked, not copied
    return target


def _build(model: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "build_artifacts", "--model", str(model), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )


def _break_config(folder: Path) -> None:
    (folder / "config.json").unlink()
    (folder / "config.json").write_text('{"model_type": "bert", ')


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _truncated_weights(folder: Path) -> None:
    source = (folder / "model.safetensors").resolve()
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").write_bytes(source.read_bytes()[:5_000_000])


def _no_tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            (folder / name).unlink()


@pytest.mark.parametrize(
    ("breakage", "says"),
    [
        (_break_config, "config.json is not valid JSON"),
        (_no_weights, "holds no weights"),
        (_truncated_weights, "truncated"),
        (_no_tokenizer, "holds no tokenizer"),
    ],
)
def test_broken_model_folder_exits_2_with_one_line_and_writes_nothing(minilm_dir, tmp_path, breakage, says):
    folder = _model_copy(minilm_dir, tmp_path / "model")
    breakage(folder)
    out = tmp_path / "out"
    result = _build(folder, out)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_manifest_that_is_not_an_object_or_lacks_the_tokenizer_stops_the_service_with_one_line(tmp_path):
    for content in ("[]", json.dumps({"format_version": 1, "model": {}, "artifacts": {}})):
        (tmp_path / "manifest.json").write_text(content)
        result = subprocess.run(
            [sys.executable, "-m", "services.onnx_api", "--artifacts", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot start:") and "manifest" in lines[0], result.stderr
