"""python -m build_artifacts --model M --out DIR: every deployable artifact plus manifest.json with parity.

The build happens in a temp folder beside DIR that is renamed into place only when every step has
succeeded; a failed or interrupted build removes it, so DIR is never half-written.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .corpus import calibration_sentences, parity_sentences
from .manifest import MANIFEST_FILE, describe_files, write_json_atomic
from .model_loading import DEFAULT_MODEL, ModelUnavailableError, PoolingSpec, read_pooling_spec, resolve_model_dir
from .similarity import PARITY_MIN_COSINE, parity_report

# Sentence-transformers files copied next to the fp32 weights so the folder loads anywhere.
_ST_FILES = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"]
_TOOLS = ["torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "safetensors"]
PARITY_BATCH = 8
FUSION_MIN_COSINE = 0.9999  # fused fp32 graph vs fp32 torch: a rewrite, not an approximation


class BuildError(RuntimeError):
    """A user-facing problem with the requested build (bad destination, unusable model)."""


class Progress:
    def __init__(self, total: int):
        self.total, self.step, self.started = total, 0, time.perf_counter()

    def begin(self, label: str) -> None:
        self.step += 1
        self._t0 = time.perf_counter()
        print(f"[{self.step}/{self.total}] {label} ...", end="", flush=True, file=sys.stderr)

    def end(self, detail: str = "") -> None:
        took = time.perf_counter() - self._t0
        print(f" done in {took:.1f} s{(' (' + detail + ')') if detail else ''}", flush=True, file=sys.stderr)


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_destination(out: Path, model_dir: Path, force: bool) -> None:
    out_abs, model_abs = out.resolve(), model_dir.resolve()
    if out_abs == model_abs or model_abs in out_abs.parents:
        raise BuildError(f"Refusing to write artifacts into the model's own folder ({model_abs}). Choose another --out.")
    if out_abs.exists() and not force:
        raise BuildError(f"'{out}' already exists. Pass --force to replace it.")
    if out_abs.exists() and not out_abs.is_dir():
        raise BuildError(f"'{out}' exists and is not a folder.")


def embed_in_batches(run, tokenizer, texts: list[str]):
    import numpy as np

    rows = []
    for start in range(0, len(texts), PARITY_BATCH):
        batch = tokenizer.encode(texts[start : start + PARITY_BATCH])
        rows.append(run(batch.input_ids, batch.attention_mask))
    return np.concatenate(rows, axis=0)


def build(model: str, out: Path, force: bool = False, threads: int | None = None, opset: int = 17) -> dict:
    model_dir = resolve_model_dir(model)
    check_destination(out, model_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        manifest = _build_into(model, model_dir, staging, threads, opset)
        _swap_into_place(staging, out)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(retired / "old")
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)


def _build_into(model: str, model_dir: Path, staging: Path, threads: int | None, opset: int) -> dict:
    from transformers import AutoTokenizer

    from . import torch_runtime
    from .onnx_runner import OnnxSentenceRunner, session_options
    from .tokenization import TextTokenizer

    progress = Progress(total=10)
    torch_runtime.quiet_libraries()
    torch_runtime.set_threads(threads)
    texts = parity_sentences()
    artifacts: dict[str, dict] = {}

    progress.begin(f"loading {model} (fp32)")
    hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    pooling = read_pooling_spec(model_dir, hf_tokenizer.model_max_length if hf_tokenizer.model_max_length < 100_000 else None)
    encoder = torch_runtime.load_fp32(model_dir, pooling)
    hf_tokenizer.save_pretrained(str(staging / "tokenizer"))
    tokenizer = TextTokenizer(staging / "tokenizer" / "tokenizer.json", pooling.max_seq_length)
    reference = embed_in_batches(lambda i, m: torch_runtime.embed(encoder, i, m), tokenizer, texts)
    dimension = int(reference.shape[1])
    progress.end(f"{pooling.mode} pooling, normalize={pooling.normalize}, dim={dimension}, max {pooling.max_seq_length} tokens")

    progress.begin("saving compile-ready fp32 weights (safetensors)")
    fp32_dir = staging / "fp32"
    encoder.transformer.save_pretrained(str(fp32_dir), safe_serialization=True)
    hf_tokenizer.save_pretrained(str(fp32_dir))
    for rel in _ST_FILES:
        if (model_dir / rel).is_file():
            (fp32_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_dir / rel, fp32_dir / rel)

    def record_torch(rel_path: str, precision: str, load, notes: str) -> dict:
        """Reload what was saved (proves it loads), embed the parity texts, record it."""
        model = load(staging / rel_path, pooling)
        embeddings = embed_in_batches(lambda i, m: torch_runtime.embed(model, i, m), tokenizer, texts)
        return _record(staging, rel_path, "torch", precision, texts, reference, embeddings, notes=notes)

    artifacts["torch_fp32"] = record_torch(
        "fp32", "fp32", torch_runtime.load_fp32,
        "Hugging Face folder (safetensors); load with AutoModel, eval(), inference_mode(), optional torch.compile.")
    progress.end(_parity_text(artifacts["torch_fp32"]))

    progress.begin("dynamic int8 quantization (torch.ao quantize_dynamic, nn.Linear, qint8)")
    quantized = torch_runtime.quantize_dynamic_int8(torch_runtime.load_fp32(model_dir, pooling))
    torch_runtime.save_quantized(quantized, staging / "torch_int8", model_dir)
    del quantized
    artifacts["torch_int8"] = record_torch(
        "torch_int8", "int8-dynamic", torch_runtime.load_quantized,
        "state_dict of the quantized encoder; load with torch.load(weights_only=True) into a quantized skeleton.")
    progress.end(_parity_text(artifacts["torch_int8"]))

    progress.begin("SmoothQuant int8 torch (calibrated on other sentences; FFN output layers kept fp32)")
    from . import torch_smooth

    calibration = [calibration_sentences()[i : i + PARITY_BATCH] for i in range(0, len(calibration_sentences()), PARITY_BATCH)]

    def calibration_batches():
        return ((b.input_ids, b.attention_mask) for b in map(tokenizer.encode, calibration))

    smooth_torch, torch_recipe = torch_smooth.smooth_and_quantize(torch_runtime.load_fp32(model_dir, pooling),
                                                                  calibration_batches())
    torch_smooth.save(smooth_torch, torch_recipe, staging / "torch_int8_smooth", model_dir)
    del smooth_torch
    artifacts["torch_int8_smooth"] = record_torch(
        "torch_int8_smooth", "int8-dynamic-smoothquant", torch_smooth.load,
        f"SmoothQuant alpha {torch_recipe['alpha']} on {len(torch_recipe['smoothed_modules'])} Linear layers "
        f"(qint8 per-channel weights), {torch_recipe['kept_fp32']} FFN output layers fp32; state_dict loaded "
        "with torch.load(weights_only=True) into a rebuilt skeleton (quantization.json lists the layers).")
    artifacts["torch_int8_smooth"]["recipe"] = {k: v for k, v in torch_recipe.items() if k != "smoothed_modules"}
    progress.end(_parity_text(artifacts["torch_int8_smooth"]))

    progress.begin(f"exporting ONNX (opset {opset}, dynamic batch and sequence axes)")
    onnx_dir = staging / "onnx"
    onnx_dir.mkdir()
    sample = tokenizer.encode(texts[:2])
    torch_runtime.export_onnx(encoder, sample.input_ids, sample.attention_mask, onnx_dir / "model.onnx", opset)

    def record_onnx(rel_path: str, precision: str, optimize: bool, notes: str) -> dict:
        runner = OnnxSentenceRunner(staging / rel_path, threads=threads, optimize=optimize)
        embeddings = embed_in_batches(runner.run, tokenizer, texts)
        return _record(staging, rel_path, "onnx", precision, texts, reference, embeddings, notes=notes)

    artifacts["onnx_fp32"] = record_onnx("onnx/model.onnx", "fp32", True,
                                         "Plain export; ONNX Runtime optimizes it online at session creation.")
    progress.end(_parity_text(artifacts["onnx_fp32"]))

    progress.begin("ONNX Runtime offline optimization (optimized_model_filepath)")
    import onnxruntime as ort

    ort.InferenceSession(
        str(onnx_dir / "model.onnx"),
        sess_options=session_options(threads, optimize=True, optimized_model_path=onnx_dir / "model.optimized.onnx"),
        providers=["CPUExecutionProvider"],
    )
    artifacts["onnx_optimized"] = record_onnx(
        "onnx/model.optimized.onnx", "fp32", False,
        "Saved after ORT_ENABLE_EXTENDED optimization on CPUExecutionProvider; load with optimizations off.")
    progress.end(_parity_text(artifacts["onnx_optimized"]))

    progress.begin("fusing self-attention into com.microsoft.MultiHeadAttention (relative position bias kept)")
    from .attention_fusion import FusionError, fuse_file

    try:
        fusion = fuse_file(onnx_dir / "model.onnx", onnx_dir / "model.fused.onnx")
    except FusionError as exc:
        fusion = {"fused_attention_blocks": 0, "reason": str(exc)}
        progress.end(f"not fused: {exc}")
    else:
        artifacts["onnx_fused"] = record_onnx(
            "onnx/model.fused.onnx", "fp32", True,
            f"{fusion['fused_attention_blocks']} attention blocks fused into {fusion['op']} (packed QKV MatMul, "
            "position bias as attention_bias); ONNX Runtime only; optimized online at session creation.")
        artifacts["onnx_fused"]["fusion"] = fusion
        progress.end(f"{fusion['fused_attention_blocks']} blocks, {fusion['nodes_before']} -> {fusion['nodes_after']} "
                     f"nodes; {_parity_text(artifacts['onnx_fused'])}")
    # The int8 recipe starts from the fused graph only where fusion kept the numbers (a pattern that
    # matched but meant something else, e.g. a causal mask, would show here).
    fused_ok = "onnx_fused" in artifacts and artifacts["onnx_fused"]["parity"]["min_cosine"] >= FUSION_MIN_COSINE
    int8_source = onnx_dir / ("model.fused.onnx" if fused_ok else "model.onnx")

    progress.begin("int8 ONNX (onnxruntime.quantization.quantize_dynamic, QInt8 per-channel weights)")
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" hint on the root logger

    quantize_dynamic(
        str(onnx_dir / "model.onnx"), str(onnx_dir / "model.int8.onnx"), weight_type=QuantType.QInt8, per_channel=True
    )
    artifacts["onnx_int8"] = record_onnx(
        "onnx/model.int8.onnx", "int8-dynamic", True,
        "Dynamic int8 MatMul weights (per-channel), activations quantized per batch at run time.")
    progress.end(_parity_text(artifacts["onnx_int8"]))

    progress.begin("SmoothQuant int8 ONNX (calibrated on other sentences; FFN outlier channels split off in fp32)")
    from .int8_smooth import build_smooth_int8

    recipe = build_smooth_int8(int8_source, onnx_dir / "model.int8_smooth.onnx", calibration_batches(),
                               threads=threads)
    recipe["source_graph"] = int8_source.name
    recipe["fused_attention_blocks"] = fusion["fused_attention_blocks"] if fused_ok else 0
    artifacts["onnx_int8_smooth"] = record_onnx(
        "onnx/model.int8_smooth.onnx", "int8-dynamic-smoothquant", True,
        f"Every linear layer int8 ({recipe['weights']}; {recipe['activations']}): SmoothQuant alpha "
        f"{recipe['alpha']} on {recipe['smoothed']}, and {recipe['outlier_split_layers']} FFN output layers with their "
        f"{recipe['outlier_channels']} largest input channels split off in fp32; built from {int8_source.name} "
        f"({recipe['fused_attention_blocks']} fused attention blocks).")
    artifacts["onnx_int8_smooth"]["recipe"] = recipe
    progress.end(_parity_text(artifacts["onnx_int8_smooth"]))

    progress.begin("writing manifest.json")
    tokenizer_files = sorted(str(p.relative_to(staging)) for p in (staging / "tokenizer").rglob("*") if p.is_file())
    manifest = {
        "format_version": 1,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "source": model,
            "dimension": dimension,
            "pooling": pooling.mode,
            "normalize": pooling.normalize,
            "max_seq_length": pooling.max_seq_length,
            **torch_runtime.config_summary(model_dir),
        },
        "tokenizer": {"files": describe_files(staging, tokenizer_files), "path": "tokenizer/tokenizer.json"},
        "tools": tool_versions(),
        "build": {"threads": threads or os.cpu_count(), "onnx_opset": opset, "machine": platform.machine()},
        "parity": {
            "reference": "fp32 PyTorch eager (the source weights), pooled and normalized",
            "texts": len(texts),
            "calibration_texts": len(calibration_sentences()),
            "min_cosine_threshold": PARITY_MIN_COSINE,
        },
        "artifacts": artifacts,
    }
    write_json_atomic(staging / MANIFEST_FILE, manifest)
    failing = [name for name, a in artifacts.items() if not a["parity"]["passes_parity"]]
    progress.end(f"failing parity: {', '.join(failing) if failing else 'none'}")
    return manifest


def _record(staging, rel_path, runtime, precision, texts, reference, embeddings, notes) -> dict:
    root = staging / rel_path
    if root.is_dir():
        files = sorted(str(p.relative_to(staging)) for p in root.rglob("*") if p.is_file())
    else:
        files = [rel_path]
    described = describe_files(staging, files)
    return {
        "runtime": runtime,
        "precision": precision,
        "path": rel_path,
        "bytes": sum(f["bytes"] for f in described),
        "files": described,
        "parity": parity_report(embeddings, reference),
        "notes": notes,
    }


def _parity_text(record: dict) -> str:
    p = record["parity"]
    verdict = "passes" if p["passes_parity"] else "FAILS"
    return f"min cos {p['min_cosine']:.4f}, mean {p['mean_cosine']:.4f}: {verdict} parity"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m build_artifacts",
        description="Build deployable artifacts (fp32, int8 torch, ONNX, optimized ONNX, fused-attention ONNX, "
                    "int8 ONNX) and a manifest with parity.",
    )
    parser.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL),
                        help="Hugging Face id or local model folder (env MODEL; default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--skip-existing", action="store_true",
                        help="exit 0 without building when --out already holds a manifest for this --model")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    args = parser.parse_args(argv)
    if args.opset < 17:
        parser.error("--opset must be >= 17")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.skip_existing and (args.out / MANIFEST_FILE).is_file():
        from .manifest import load_manifest

        existing = load_manifest(args.out)
        if existing.get("model", {}).get("source") == args.model:
            print(f"{args.out} already holds artifacts for {args.model}: nothing to do")
            return 0
        if not args.force:
            print(f"error: {args.out} holds artifacts for {existing.get('model', {}).get('source')}, not {args.model}; "
                  "pass --force to rebuild", file=sys.stderr)
            return 2
    try:
        manifest = build(args.model, args.out, force=args.force, threads=args.threads, opset=args.opset)
    except (ModelUnavailableError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"\nArtifacts in {args.out}:")
    print(f"{'variant':<16} {'MB':>8} {'min cos':>9} {'mean cos':>9}  parity")
    for name, record in manifest["artifacts"].items():
        p = record["parity"]
        print(f"{name:<16} {record['bytes'] / 1e6:8.1f} {p['min_cosine']:9.4f} {p['mean_cosine']:9.4f}  "
              f"{'pass' if p['passes_parity'] else 'FAIL'}")
    return 0
