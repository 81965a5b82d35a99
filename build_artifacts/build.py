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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path

from runtime.manifest import MANIFEST_FILE, ArtifactRecord, FileEntry, Manifest, Parity, TokenizerInfo
from runtime.similarity import PARITY_MIN_COSINE, fidelity_report, service_batches

from .corpus import calibration_sentences, parity_texts, retrieval_texts
from .model_loading import DEFAULT_MODEL, ModelUnavailableError, read_pooling_spec, resolve_model_dir
from .recipe import DEFAULT_RECIPE, Recipe

# Sentence-transformers files copied next to the fp32 weights so the folder loads anywhere.
_ST_FILES = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"]
_TOOLS = ["torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "safetensors"]


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
        raise BuildError(f"Refusing to write artifacts into the model's own folder ({model_abs}). "
                         "Choose another --out.")
    if out_abs.exists() and not force:
        raise BuildError(f"'{out}' already exists. Pass --force to replace it.")
    if out_abs.exists() and not out_abs.is_dir():
        raise BuildError(f"'{out}' exists and is not a folder.")


def embed_in_service_batches(run, tokenizer, texts: list[str], recipe: Recipe = DEFAULT_RECIPE):
    """Embeddings in text order, computed in the groups a service forms (runtime.similarity.service_batches):
    mixed lengths and batch mates, as dynamic int8 meets them when served."""
    import numpy as np

    groups = service_batches(tokenizer.count_tokens(texts), recipe.service_batch, recipe.service_window)
    out = None
    for group in groups:
        batch = tokenizer.encode([texts[i] for i in group])
        vectors = run(batch.input_ids, batch.attention_mask)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[group] = vectors
    return out


def build(model: str, out: Path, force: bool = False, threads: int | None = None, opset: int = 17,
          recipe: Recipe | None = None) -> Manifest:
    recipe = replace(recipe or DEFAULT_RECIPE, onnx_opset=opset)
    model_dir = resolve_model_dir(model)
    check_destination(out, model_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        manifest = _build_into(model, model_dir, staging, threads, recipe)
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


@dataclass
class BuildState:
    """What the steps share: the model, the staging folder, the fp32 reference, and the records so far."""

    model: str
    model_dir: Path
    staging: Path
    threads: int | None
    recipe: Recipe
    texts: list[str] = field(default_factory=parity_texts)  # the parity corpus: rows [:len(texts)] of ...
    retrieval: list[str] = field(default_factory=retrieval_texts)  # ... the retrieval corpus
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    fusion: dict = field(default_factory=dict)
    hf_tokenizer: object = None
    tokenizer: object = None  # runtime.tokenization.TextTokenizer
    pooling: object = None  # runtime.pooling.PoolingSpec
    encoder: object = None  # fp32 SentenceEncoder
    reference: object = None  # fp32 embeddings of the retrieval texts (parity texts first)
    dimension: int = 0

    @property
    def onnx_dir(self) -> Path:
        return self.staging / "onnx"

    def calibration_batches(self):
        texts, size = calibration_sentences(), self.recipe.parity_batch
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        return ((b.input_ids, b.attention_mask) for b in map(self.tokenizer.encode, batches))

    def parity(self, run) -> Parity:
        embeddings = embed_in_service_batches(run, self.tokenizer, self.retrieval, self.recipe)
        return Parity.from_dict(fidelity_report(embeddings, self.reference, len(self.texts),
                                                min_top10=self.recipe.min_top10_agreement))

    def record_torch(self, variant: str, rel_path: str, precision: str, notes: str, **extra) -> str:
        """Reload what was saved through the runtime's loader (proves it loads), embed the parity texts, record it."""
        from runtime import torch_encoder

        model = torch_encoder.LOADERS[variant](self.staging / rel_path, self.pooling)
        parity = self.parity(lambda i, m: torch_encoder.embed(model, i, m))
        return self._record(variant, rel_path, "torch", precision, parity, notes, extra)

    def record_onnx(self, variant: str, rel_path: str, precision: str, notes: str, **extra) -> str:
        from runtime.onnx_runner import OnnxSentenceRunner, optimize_at_load

        runner = OnnxSentenceRunner(self.staging / rel_path, threads=self.threads, optimize=optimize_at_load(variant))
        return self._record(variant, rel_path, "onnx", precision, self.parity(runner.run), notes, extra)

    def _record(self, variant, rel_path, runtime, precision, parity, notes, extra) -> str:
        self.artifacts[variant] = ArtifactRecord.describe(self.staging, rel_path, runtime, precision, parity, notes,
                                                          **extra)
        return parity.describe()


def load_reference(state: BuildState) -> str:
    from transformers import AutoTokenizer

    from runtime import torch_encoder
    from runtime.tokenization import TextTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(str(state.model_dir), use_fast=True)
    max_length = hf_tokenizer.model_max_length if hf_tokenizer.model_max_length < 100_000 else None
    state.pooling = pooling = read_pooling_spec(state.model_dir, max_length)
    state.encoder = torch_encoder.load_fp32(state.model_dir, pooling)
    hf_tokenizer.save_pretrained(str(state.staging / "tokenizer"))
    state.hf_tokenizer = hf_tokenizer
    state.tokenizer = TextTokenizer(state.staging / "tokenizer" / "tokenizer.json", pooling.max_seq_length)
    assert state.retrieval[: len(state.texts)] == state.texts, "the retrieval corpus starts with the parity texts"
    state.reference = embed_in_service_batches(lambda i, m: torch_encoder.embed(state.encoder, i, m),
                                               state.tokenizer, state.retrieval, state.recipe)
    state.dimension = int(state.reference.shape[1])
    return (f"{pooling.mode} pooling, normalize={pooling.normalize}, dim={state.dimension}, "
            f"max {pooling.max_seq_length} tokens")


def torch_fp32(state: BuildState) -> str:
    fp32_dir = state.staging / "fp32"
    state.encoder.transformer.save_pretrained(str(fp32_dir), safe_serialization=True)
    state.hf_tokenizer.save_pretrained(str(fp32_dir))
    for rel in _ST_FILES:
        if (state.model_dir / rel).is_file():
            (fp32_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.model_dir / rel, fp32_dir / rel)
    return state.record_torch(
        "torch_fp32", "fp32", "fp32",
        "Hugging Face folder (safetensors); load with AutoModel, eval(), inference_mode(), optional torch.compile.")


def torch_int8(state: BuildState) -> str:
    from runtime import torch_encoder

    from . import torch_steps

    quantized = torch_encoder.quantize_dynamic_int8(torch_encoder.load_fp32(state.model_dir, state.pooling))
    torch_steps.save_quantized(quantized, state.staging / "torch_int8", state.model_dir)
    del quantized
    return state.record_torch(
        "torch_int8", "torch_int8", "int8-dynamic",
        "state_dict of the quantized encoder; load with torch.load(weights_only=True) into a quantized skeleton.")


def torch_int8_smooth(state: BuildState) -> str:
    from runtime import torch_encoder

    from . import torch_steps

    r = state.recipe
    smooth, recipe = torch_steps.smooth_and_quantize(torch_encoder.load_fp32(state.model_dir, state.pooling),
                                                     state.calibration_batches(), r.torch_smooth_alpha,
                                                     r.torch_keep_fp32_modules)
    torch_steps.save_smooth(smooth, recipe, state.staging / "torch_int8_smooth", state.model_dir)
    del smooth
    return state.record_torch(
        "torch_int8_smooth", "torch_int8_smooth", "int8-dynamic-smoothquant",
        f"SmoothQuant alpha {recipe['alpha']} on {len(recipe['smoothed_modules'])} Linear layers "
        f"(qint8 per-channel weights), {recipe['kept_fp32']} FFN output layers fp32; state_dict loaded "
        "with torch.load(weights_only=True) into a rebuilt skeleton (quantization.json lists the layers).",
        recipe={k: v for k, v in recipe.items() if k != "smoothed_modules"})


def onnx_fp32(state: BuildState) -> str:
    from . import torch_steps

    state.onnx_dir.mkdir()
    sample = state.tokenizer.encode(state.texts[:2])
    torch_steps.export_onnx(state.encoder, sample.input_ids, sample.attention_mask, state.onnx_dir / "model.onnx",
                            state.recipe.onnx_opset)
    return state.record_onnx("onnx_fp32", "onnx/model.onnx", "fp32",
                             "Plain export; ONNX Runtime optimizes it online at session creation.")


def onnx_optimized(state: BuildState) -> str:
    import onnxruntime as ort

    from runtime.onnx_runner import session_options

    ort.InferenceSession(
        str(state.onnx_dir / "model.onnx"),
        sess_options=session_options(state.threads, optimize=True,
                                     optimized_model_path=state.onnx_dir / "model.optimized.onnx"),
        providers=["CPUExecutionProvider"],
    )
    return state.record_onnx(
        "onnx_optimized", "onnx/model.optimized.onnx", "fp32",
        "Saved after ORT_ENABLE_EXTENDED optimization on CPUExecutionProvider; load with optimizations off.")


def onnx_fused(state: BuildState) -> str:
    from . import attention_fusion

    try:
        fusion = attention_fusion.fuse_file(state.onnx_dir / "model.onnx", state.onnx_dir / "model.fused.onnx")
    except attention_fusion.FusionError as exc:
        state.fusion = {"fused_attention_blocks": 0, "reason": str(exc)}
        return f"not fused: {exc}"
    state.fusion = fusion
    parity = state.record_onnx(
        "onnx_fused", "onnx/model.fused.onnx", "fp32",
        f"{fusion['fused_attention_blocks']} attention blocks fused into {fusion['op']} (packed QKV MatMul, "
        "position bias as attention_bias); ONNX Runtime only; optimized online at session creation.",
        fusion=fusion)
    return (f"{fusion['fused_attention_blocks']} blocks, {fusion['nodes_before']} -> {fusion['nodes_after']} nodes; "
            f"{parity}")


def onnx_int8(state: BuildState) -> str:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" hint on the root logger
    quantize_dynamic(str(state.onnx_dir / "model.onnx"), str(state.onnx_dir / "model.int8.onnx"),
                     weight_type=QuantType.QInt8, per_channel=True)
    return state.record_onnx("onnx_int8", "onnx/model.int8.onnx", "int8-dynamic",
                             "Dynamic int8 MatMul weights (per-channel), activations quantized per batch at run time.")


def onnx_int8_smooth(state: BuildState) -> str:
    from runtime.onnx_runner import OnnxSentenceRunner

    from .int8_smooth import build_smooth_int8, collect_activation_max

    # The int8 recipe starts from the fused graph only where fusion kept the numbers (a pattern that
    # matched but meant something else, e.g. a causal mask, would show here).
    fused = state.artifacts.get("onnx_fused")
    fused_ok = fused is not None and fused.parity.min_cosine >= state.recipe.fusion_min_cosine
    source = state.onnx_dir / ("model.fused.onnx" if fused_ok else "model.onnx")
    out = state.onnx_dir / "model.int8_smooth.onnx"
    r = state.recipe
    maxima = collect_activation_max(source, state.calibration_batches(), state.threads)
    build_with = partial(build_smooth_int8, source, out, None, threads=state.threads, alpha=r.onnx_smooth_alpha,
                         split_patterns=r.onnx_ffn_output_patterns, activation_max=maxima,
                         keep_fp32=r.onnx_keep_fp32_patterns)
    candidates = tuple(r.onnx_outlier_channel_candidates) or (r.onnx_outlier_channels,)
    tried = {}
    if len(candidates) > 1:
        # Outlier-channel count chosen by the gate's measure on the calibration texts (never the parity or
        # retrieval texts): the most top-10 agreement with the fp32 source graph, the fewest channels on a tie.
        calibration = list(calibration_sentences())
        reference = embed_in_service_batches(OnnxSentenceRunner(source, threads=state.threads).run, state.tokenizer,
                                             calibration, r)
        for count in candidates:
            build_with(outlier_channels=count)
            vectors = embed_in_service_batches(OnnxSentenceRunner(out, threads=state.threads).run, state.tokenizer,
                                               calibration, r)
            report = fidelity_report(vectors, reference, len(calibration), min_top10=r.min_top10_agreement)
            tried[count] = {k: report[k] for k in ("min_cosine", "top10_agreement", "spearman")}
    chosen = max(candidates, key=lambda c: (tried[c]["top10_agreement"], tried[c]["min_cosine"], -c)) \
        if tried else candidates[0]
    recipe = build_with(outlier_channels=chosen)
    recipe["source_graph"] = source.name
    recipe["fused_attention_blocks"] = state.fusion["fused_attention_blocks"] if fused_ok else 0
    recipe["calibration_texts"] = len(calibration_sentences())
    if tried:
        recipe["outlier_channels_tried_on_calibration_texts"] = {str(k): v for k, v in tried.items()}
    return state.record_onnx(
        "onnx_int8_smooth", "onnx/model.int8_smooth.onnx", "int8-dynamic-smoothquant",
        f"Linear layers int8 ({recipe['weights']}; {recipe['activations']}): SmoothQuant alpha "
        f"{recipe['alpha']} on {recipe['smoothed']}, {recipe['outlier_split_layers']} FFN output layers with their "
        f"{recipe['outlier_channels']} largest input channels split off in fp32, {recipe['fp32_layers']} left "
        f"fp32; built from {source.name} "
        f"({recipe['fused_attention_blocks']} fused attention blocks).",
        recipe=recipe)


def manifest_of(state: BuildState) -> Manifest:
    from .torch_steps import config_summary

    tokenizer_files = sorted(str(p.relative_to(state.staging)) for p in (state.staging / "tokenizer").rglob("*")
                             if p.is_file())
    summary = config_summary(state.model_dir)
    return Manifest.from_dict({
        "format_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"source": state.model, "dimension": state.dimension, "pooling": state.pooling.mode,
                  "normalize": state.pooling.normalize, "max_seq_length": state.pooling.max_seq_length, **summary},
        "tokenizer": TokenizerInfo("tokenizer/tokenizer.json",
                                   tuple(FileEntry.describe(state.staging, f) for f in tokenizer_files)).to_dict(),
        "tools": tool_versions(),
        "build": {"threads": state.threads or os.cpu_count(), "onnx_opset": state.recipe.onnx_opset,
                  "machine": platform.machine(), "recipe": state.recipe.to_dict()},
        "parity": {
            "reference": "fp32 PyTorch eager (the source weights), pooled and normalized",
            "texts": len(state.texts),
            "retrieval_texts": len(state.retrieval),
            "calibration_texts": len(calibration_sentences()),
            "corpus": "build_artifacts/data/fidelity (parity.jsonl; retrieval = parity + retrieval.jsonl)",
            "batching": f"service-like: random arrival order, windows of {state.recipe.service_window} sorted by "
                        f"length, groups of up to {state.recipe.service_batch}",
            "gate": "passes_parity = min cosine on the parity texts >= min_cosine_threshold and mean top-10 "
                    "agreement on the retrieval texts >= min_top10_agreement",
            "min_cosine_threshold": PARITY_MIN_COSINE,
            "min_top10_agreement": state.recipe.min_top10_agreement,
        },
        "artifacts": {name: record.to_dict() for name, record in state.artifacts.items()},
    })


#: (progress label, step): one step per variant, in build order (later steps read earlier files)
STEPS = (
    ("loading {model} (fp32)", load_reference),
    ("saving compile-ready fp32 weights (safetensors)", torch_fp32),
    ("dynamic int8 quantization (torch.ao quantize_dynamic, nn.Linear, qint8)", torch_int8),
    ("SmoothQuant int8 torch (calibrated on other sentences; FFN output layers kept fp32)", torch_int8_smooth),
    ("exporting ONNX (opset {opset}, dynamic batch and sequence axes)", onnx_fp32),
    ("ONNX Runtime offline optimization (optimized_model_filepath)", onnx_optimized),
    ("fusing self-attention into com.microsoft.MultiHeadAttention (relative position bias kept)", onnx_fused),
    ("int8 ONNX (onnxruntime.quantization.quantize_dynamic, QInt8 per-channel weights)", onnx_int8),
    ("SmoothQuant int8 ONNX (calibrated on other sentences; FFN outlier channels split off in fp32)", onnx_int8_smooth),
)


def _build_into(model: str, model_dir: Path, staging: Path, threads: int | None, recipe: Recipe) -> Manifest:
    from runtime import torch_encoder

    progress = Progress(total=len(STEPS) + 1)
    torch_encoder.quiet_libraries()
    torch_encoder.set_threads(threads)
    state = BuildState(model, model_dir, staging, threads, recipe)
    for label, step in STEPS:
        progress.begin(label.format(model=model, opset=recipe.onnx_opset))
        progress.end(step(state))
    progress.begin("writing manifest.json")
    manifest = manifest_of(state)
    manifest.write(staging)
    failing = manifest.failing()
    progress.end(f"failing parity: {', '.join(failing) if failing else 'none'}")
    return manifest


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
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and ONNX Runtime (default: all)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--min-top10-agreement", type=float, default=DEFAULT_RECIPE.min_top10_agreement,
                        help="the gate's retrieval half: mean share of each text's fp32 top-10 neighbours a variant "
                             "keeps in its top 10 (default: %(default)s); recorded in the manifest")
    args = parser.parse_args(argv)
    if args.opset < 17:
        parser.error("--opset must be >= 17")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.skip_existing and (args.out / MANIFEST_FILE).is_file():
        import json

        source = json.loads((args.out / MANIFEST_FILE).read_text()).get("model", {}).get("source")
        if source == args.model:
            print(f"{args.out} already holds artifacts for {args.model}: nothing to do")
            return 0
        if not args.force:
            print(f"error: {args.out} holds artifacts for {source}, not {args.model}; "
                  "pass --force to rebuild", file=sys.stderr)
            return 2
    try:
        manifest = build(args.model, args.out, force=args.force, threads=args.threads, opset=args.opset,
                         recipe=replace(DEFAULT_RECIPE, min_top10_agreement=args.min_top10_agreement))
    except (ModelUnavailableError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"\nArtifacts in {args.out}:")
    print(f"{'variant':<18} {'MB':>8} {'min cos':>9} {'mean cos':>9} {'top-10':>7} {'worst1%':>7} "
          f"{'Spearman':>8}  gate")
    for name, record in manifest.artifacts.items():
        p = record.parity
        print(f"{name:<18} {record.bytes / 1e6:8.1f} {p.min_cosine:9.4f} {p.mean_cosine:9.4f} "
              f"{p.top10_agreement:7.3f} {p.top10_agreement_worst1pct:7.2f} {p.spearman:8.4f}  "
              f"{'pass' if p.passes_parity else 'FAIL'}")
    return 0
