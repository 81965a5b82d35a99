"""Resolve a model (Hugging Face id or local folder) and read its pooling from its config.

Pooling and normalization follow the model's sentence-transformers config (modules.json,
1_Pooling/config.json, sentence_bert_config.json); without one: mean pooling + L2 normalize.
The Hub client is imported inside the function that needs it so `--help` stays instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.pooling import POOLING_MODES, PoolingSpec

DEFAULT_MODEL = "sentence-transformers/multi-qa-mpnet-base-cos-v1"
# Files a sentence-transformers model folder needs; weights in other formats are not fetched.
_HUB_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "model.safetensors",
    "1_Pooling/*",
    "2_Normalize/*",
]


class ModelUnavailableError(RuntimeError):
    """The model is neither a local folder nor reachable on (or cached from) the Hugging Face Hub."""


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# A tokenizer.json alone is enough; otherwise transformers needs its config plus a vocabulary of some kind.
_VOCAB_FILES = ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")


def check_model_folder(folder: Path) -> None:
    """Refuse, with one message each, what would otherwise fail deep inside a library (or, worse, not fail):
    a config.json that is not JSON, no weights, a truncated safetensors file, no tokenizer files."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelUnavailableError(f"{folder}/config.json is not valid JSON ({exc}): re-download the model.") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelUnavailableError(f"{folder}/config.json has no model_type: not a transformers model config.")
    weights = [name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise ModelUnavailableError(
            f"'{folder}' holds no weights (none of {', '.join(_WEIGHT_FILES)}): copy the model's weight file into it."
        )
    if weights[0] == "model.safetensors":
        _check_safetensors(folder / "model.safetensors")
    has_tokenizer = (folder / "tokenizer.json").is_file() or (
        (folder / "tokenizer_config.json").is_file() and any((folder / name).is_file() for name in _VOCAB_FILES)
    )
    if not has_tokenizer:
        raise ModelUnavailableError(
            f"'{folder}' holds no tokenizer (tokenizer.json, or tokenizer_config.json with a "
            "vocabulary file): the build would have to guess one. Copy the model's tokenizer "
            "files into it."
        )


def _check_safetensors(path: Path) -> None:
    """The header must parse and the file must be as long as the header says (a cut download is not)."""
    import struct

    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelUnavailableError(f"{path} is not a readable safetensors file ({exc}): re-download it.") from None
    if 8 + header_len + end != size:
        raise ModelUnavailableError(
            f"{path} is truncated or padded: {size} bytes, its header says {8 + header_len + end}. Re-download it."
        )


def resolve_model_dir(model: str) -> Path:
    """Return a local folder for `model`: the folder itself, or a Hub snapshot (cached or downloaded)."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(
                f"'{model}' is a folder but holds no config.json: not a Hugging Face model folder."
            )
        check_model_folder(local)
        return local.resolve()
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(
            f"'{model}' is not a model folder and does not look like a Hugging Face id (owner/name)."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS))
    except HFValidationError as exc:
        raise ModelUnavailableError(f"'{model}' is neither a local folder nor a valid Hugging Face id: {exc}") from None
    except Exception as exc:  # network errors, missing repos, offline mode without a cache entry
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelUnavailableError(
            f"Could not load model '{model}': it is not a local folder, and the Hugging Face Hub could not provide it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).\n"
            "Offline options: pass a local model folder (--model path/to/folder); run `make models` to unpack the "
            "offline models into ./models (e.g. --model models/all-mpnet-base-v2); or pre-fill the Hugging Face "
            f"cache ({cache}) on a machine with access and set HF_HUB_OFFLINE=1."
        ) from None


def read_pooling_spec(model_dir: Path, tokenizer_max_length: int | None = None) -> PoolingSpec:
    """Read pooling/normalization from the sentence-transformers config; default to mean + normalize."""
    modules_file = model_dir / "modules.json"
    mode, normalize = "mean", True
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        normalize = any(t.endswith("Normalize") for t in types)
        pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
        if pooling is not None:
            cfg = json.loads((model_dir / pooling.get("path", "1_Pooling") / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                mode = "max"
            elif cfg.get("pooling_mode_mean_tokens", True):
                mode = "mean"
            else:
                raise ModelUnavailableError(f"Unsupported pooling config in {model_dir}: {cfg}")
    max_len = tokenizer_max_length or 512
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
    config = json.loads((model_dir / "config.json").read_text())
    positions = config.get("max_position_embeddings")
    if positions:
        # RoBERTa/MPNet reserve padding_idx + 1 positions.
        offset = 2 if config.get("model_type") in ("mpnet", "roberta", "xlm-roberta") else 0
        max_len = min(max_len, positions - offset)
    return PoolingSpec(mode=mode, normalize=normalize, max_seq_length=max_len)


__all__ = [
    "DEFAULT_MODEL",
    "POOLING_MODES",
    "ModelUnavailableError",
    "PoolingSpec",
    "read_pooling_spec",
    "resolve_model_dir",
]
