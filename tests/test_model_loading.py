import json
import os
import subprocess
import sys

import pytest

from build_artifacts.model_loading import ModelUnavailableError, read_pooling_spec, resolve_model_dir

from .conftest import REPO


def test_local_folder_resolves_and_pooling_follows_sentence_transformers_config(minilm_dir):
    folder = resolve_model_dir(str(minilm_dir))
    spec = read_pooling_spec(folder)
    assert folder == minilm_dir.resolve()
    assert (spec.mode, spec.normalize, spec.max_seq_length) == ("mean", True, 256)


def test_cls_pooling_and_no_normalize_are_read(tmp_path, minilm_dir):
    import shutil

    shutil.copytree(minilm_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "m" / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    spec = read_pooling_spec(tmp_path / "m")
    assert (spec.mode, spec.normalize) == ("cls", False)


def test_without_sentence_transformers_config_defaults_to_mean_and_normalize(tiny_mpnet_dir):
    spec = read_pooling_spec(tiny_mpnet_dir)
    assert (spec.mode, spec.normalize) == ("mean", True)
    assert spec.max_seq_length == 128  # 130 positions minus MPNet's padding offset


def test_unreachable_hub_id_raises_with_offline_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="Offline options"):
        resolve_model_dir("sentence-transformers/definitely-not-cached-model")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        resolve_model_dir(str(tmp_path))


@pytest.mark.parametrize("module", ["build_artifacts", "benchmarks"])
def test_bad_model_exits_nonzero_with_one_clear_message(tmp_path, module):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", module, "--model", "nobody/no-such-model", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Could not load model 'nobody/no-such-model'" in result.stderr
    assert "make models" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or module == "benchmarks"
