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
from pathlib import Path

from runtime import measure_here
from runtime.batching import padding_efficient_groups
from runtime.host import HostCpu, package_versions, probe_cpu
from runtime.manifest import MANIFEST_FILE, ArtifactRecord, FileEntry, Manifest, Parity, TokenizerInfo
from runtime.similarity import PARITY_MIN_COSINE, fidelity_report, gate_failures, rowwise_cosine
from runtime.variants import VARIANTS, Variant, default_build

from .corpus import calibration_sentences, parity_texts, retrieval_texts
from .model_loading import DEFAULT_MODEL, ModelUnavailableError, read_pooling_spec, resolve_model_dir
from .recipe import DEFAULT_RECIPE, Recipe

# Sentence-transformers files copied next to the fp32 weights so the folder loads anywhere.
_ST_FILES = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"]
_TOOLS = ["torch", "transformers", "tokenizers", "onnx", "onnxruntime", "openvino", "numpy", "safetensors"]
#: texts of the start-up re-check shipped with the artifacts: every RECHECK_STRIDE-th text of the retrieval corpus
RECHECK_STRIDE = 4
SPEED_ONE_TEXT = "How do I reset my password on this website?"
#: exact rewrites of the fp32 graph are verified on every 3rd parity text (132 of 395, short to long)
EXACT_CHECK_STRIDE = 3


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
    """The build's tools as the manifest records them (None: not installed)."""
    return package_versions(_TOOLS, keep_missing=True)


def check_destination(out: Path, model_dir: Path, force: bool) -> None:
    out_abs, model_abs = out.resolve(), model_dir.resolve()
    if out_abs == model_abs or model_abs in out_abs.parents:
        raise BuildError(
            f"Refusing to write artifacts into the model's own folder ({model_abs}). Choose another --out."
        )
    if out_abs.exists() and not force:
        raise BuildError(f"'{out}' already exists. Pass --force to replace it.")
    if out_abs.exists() and not out_abs.is_dir():
        raise BuildError(f"'{out}' exists and is not a folder.")


def embed_in_service_batches(run, tokenizer, texts: list[str], recipe: Recipe = DEFAULT_RECIPE):
    """Embeddings in text order, computed in the groups a service forms (runtime.measure_here)."""
    return measure_here.embed_in_service_batches(run, tokenizer, texts, recipe.service_batch, recipe.service_window)


def embed_length_sorted(run, tokenizer, texts: list[str], batch: int = 32):
    """fp32 reference embeddings in length-sorted batches: fp32 output does not depend on batch mates (padding
    is masked), so the reference pads little; the variants are measured in service batches."""
    groups = padding_efficient_groups([len(t) for t in texts], max_padding=None, max_size=batch)
    return measure_here.embed_in_groups(run, tokenizer, texts, groups)


def build(
    model: str,
    out: Path,
    force: bool = False,
    threads: int | None = None,
    opset: int = 17,
    recipe: Recipe | None = None,
    variants: tuple[str, ...] | None = None,
) -> Manifest:
    """variants: the table rows to build (default: those `built_by_default`); a row's build step may read an
    earlier row's files (the ONNX rows read onnx_fp32's export), so those come along."""
    recipe = replace(recipe or DEFAULT_RECIPE, onnx_opset=opset)
    variants = resolve_variants(variants)
    model_dir = resolve_model_dir(model)
    check_destination(out, model_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        manifest = _build_into(model, model_dir, staging, threads, recipe, variants)
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
    host: HostCpu = field(default_factory=probe_cpu)

    @property
    def onnx_dir(self) -> Path:
        return self.staging / "onnx"

    def calibration_batches(self):
        texts, size = calibration_sentences(), self.recipe.parity_batch
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        return ((b.input_ids, b.attention_mask) for b in map(self.tokenizer.encode, batches))

    def parity(self, run, row: Variant) -> Parity:
        """The gate on this variant.

        An exact rewrite of the fp32 graph (export, offline optimization, fusion, another fp32 engine): on every
        EXACT_CHECK_STRIDE-th parity text, short to long (a wrong rewrite shows at once; the figures say how
        many texts they cover). An approximation: on the parity texts first, stopping at the first batch
        where a text falls below the gate's min cosine (more texts can only lower a minimum: the verdict is
        settled, and the figures say how many texts they cover); where all pass, on the whole retrieval
        corpus. Batches are the ones a service forms where batch mates change the numbers (per-batch
        activation scales), length-sorted ones (that pad little) where they do not."""
        import numpy as np

        n = len(self.texts)
        if row.exact:
            picks = list(range(0, n, EXACT_CHECK_STRIDE))
            embeddings = embed_length_sorted(run, self.tokenizer, [self.texts[i] for i in picks])
            return Parity.from_dict(
                fidelity_report(
                    embeddings, self.reference[picks], len(picks), min_top10=self.recipe.min_top10_agreement
                )
            )
        embeddings, done = self.embed_until_failing(run, self.batches(self.texts, row))
        rest = self.retrieval[n:]
        if len(done) == n and rest:
            vectors = measure_here.embed_in_groups(run, self.tokenizer, rest, self.batches(rest, row))
            embeddings, done = np.concatenate([embeddings, vectors]), np.arange(len(self.retrieval))
        return Parity.from_dict(
            fidelity_report(
                embeddings[done], self.reference[done], min(len(done), n), min_top10=self.recipe.min_top10_agreement
            )
        )

    def batches(self, texts: list[str], row: Variant) -> list[list[int]]:
        """Index groups: as a service forms them where batch mates matter, else sorted by length."""
        from runtime.similarity import service_batches

        counts = self.tokenizer.count_tokens(texts)
        if row.batch_mates_matter:
            return service_batches(counts, self.recipe.service_batch, self.recipe.service_window)
        return padding_efficient_groups(counts, max_padding=None, max_size=self.recipe.service_batch)

    def embed_until_failing(self, run, groups: list[list[int]]):
        """The parity texts, group by group, until one falls below the gate's min cosine:
        (embeddings in text order, indices of the texts embedded)."""
        import numpy as np

        embeddings, done = None, []
        for group in groups:
            batch = self.tokenizer.encode([self.texts[i] for i in group])
            vectors = run(batch.input_ids, batch.attention_mask)
            if embeddings is None:
                embeddings = np.zeros((len(self.texts), vectors.shape[1]), dtype=np.float32)
            embeddings[group] = vectors
            done += group
            # at least one window, so that the figures' top-10 neighbours have a corpus to be found in
            if len(done) >= self.recipe.service_window and gate_failures(
                float(rowwise_cosine(embeddings[done], self.reference[done]).min())
            ):
                break
        return embeddings, np.array(sorted(done))

    def speed(self, run) -> dict:
        texts = list(calibration_sentences())[: measure_here.SPEED_BATCH_TEXTS]
        return {
            **measure_here.service_speed(run, self.tokenizer, texts, SPEED_ONE_TEXT),
            "threads": self.threads or os.cpu_count(),
        }

    def record(self, row: Variant, notes: str, **extra) -> str:
        """Reload what was saved through the variant's own loader (proves it loads), measure its fidelity and
        its speed on service-shaped batches on this CPU, record it."""
        runner = row.load_path(self.staging / row.path, self.pooling, self.threads)
        parity = self.parity(runner.run, row)
        speed = self.speed(runner.run)
        del runner
        runtime = {"onnxruntime": "onnx"}.get(row.engine, row.engine)
        self.artifacts[row.name] = ArtifactRecord.from_files(
            self.staging,
            row.path,
            runtime,
            row.precision,
            parity,
            notes,
            speed=speed,
            measured_on=self.host.to_dict(),
            **extra,
        )
        return (
            f"{parity.summary()}; {speed['texts_per_s']:.1f} texts/s at {speed['batch_texts']}, "
            f"{speed['one_text_ms']:.1f} ms for one"
        )


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
    state.reference = embed_length_sorted(
        lambda i, m: torch_encoder.embed(state.encoder, i, m), state.tokenizer, state.retrieval
    )
    state.dimension = int(state.reference.shape[1])
    write_check_files(state)
    return (
        f"{len(state.retrieval)} texts; {pooling.mode} pooling, normalize={pooling.normalize}, "
        f"dim={state.dimension}, max {pooling.max_seq_length} tokens"
    )


def write_check_files(state: BuildState) -> None:
    """What a service on another CPU re-checks a variant against: a sample of the retrieval corpus and its fp32
    vectors, plus the texts the speed figures are timed on."""
    import json

    import numpy as np

    picks = list(range(0, len(state.retrieval), RECHECK_STRIDE))
    texts = {
        "recheck": [state.retrieval[i] for i in picks],
        "speed_one": SPEED_ONE_TEXT,
        "speed_batch": list(calibration_sentences())[: measure_here.SPEED_BATCH_TEXTS],
    }
    folder = state.staging / "fidelity"
    folder.mkdir()
    (state.staging / measure_here.CHECK_TEXTS_FILE).write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    np.save(state.staging / measure_here.CHECK_VECTORS_FILE, state.reference[picks].astype(np.float32))


def torch_fp32(state: BuildState, row: Variant) -> str:
    fp32_dir = state.staging / "fp32"
    state.encoder.transformer.save_pretrained(str(fp32_dir), safe_serialization=True)
    state.hf_tokenizer.save_pretrained(str(fp32_dir))
    for rel in _ST_FILES:
        if (state.model_dir / rel).is_file():
            (fp32_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.model_dir / rel, fp32_dir / rel)
    return state.record(
        row, "Hugging Face folder (safetensors); load with AutoModel, eval(), inference_mode(), optional compile."
    )


def torch_int8(state: BuildState, row: Variant) -> str:
    from runtime import torch_encoder

    from . import torch_steps

    quantized = torch_encoder.quantize_dynamic_int8(torch_encoder.load_fp32(state.model_dir, state.pooling))
    torch_steps.save_quantized(quantized, state.staging / "torch_int8", state.model_dir)
    del quantized
    return state.record(
        row, "state_dict of the quantized encoder; load with torch.load(weights_only=True) into a quantized skeleton."
    )


def torch_int8_smooth(state: BuildState, row: Variant) -> str:
    from runtime import torch_encoder

    from . import torch_steps

    r = state.recipe
    smooth, recipe = torch_steps.smooth_and_quantize(
        torch_encoder.load_fp32(state.model_dir, state.pooling),
        state.calibration_batches(),
        r.torch_smooth_alpha,
        r.torch_keep_fp32_modules,
    )
    torch_steps.save_smooth(smooth, recipe, state.staging / "torch_int8_smooth", state.model_dir)
    del smooth
    return state.record(
        row,
        f"SmoothQuant alpha {recipe['alpha']} on {len(recipe['smoothed_modules'])} Linear layers "
        f"(qint8 per-channel weights), {recipe['kept_fp32']} FFN output layers fp32; state_dict loaded "
        "with torch.load(weights_only=True) into a rebuilt skeleton (quantization.json lists the layers).",
        recipe={k: v for k, v in recipe.items() if k != "smoothed_modules"},
    )


def onnx_fp32(state: BuildState, row: Variant) -> str:
    from . import torch_steps

    state.onnx_dir.mkdir()
    sample = state.tokenizer.encode(state.texts[:2])
    torch_steps.export_onnx(
        state.encoder, sample.input_ids, sample.attention_mask, state.onnx_dir / "model.onnx", state.recipe.onnx_opset
    )
    return state.record(row, "Plain export; ONNX Runtime optimizes it online at session creation.")


def onnx_optimized(state: BuildState, row: Variant) -> str:
    import onnxruntime as ort

    from runtime.onnx_runner import session_options

    ort.InferenceSession(
        str(state.onnx_dir / "model.onnx"),
        sess_options=session_options(
            state.threads, optimize=True, optimized_model_path=state.onnx_dir / "model.optimized.onnx"
        ),
        providers=["CPUExecutionProvider"],
    )
    return state.record(
        row, "Saved after ORT_ENABLE_EXTENDED optimization on CPUExecutionProvider; load with optimizations off."
    )


def onnx_fused(state: BuildState, row: Variant) -> str:
    from . import attention_fusion

    try:
        fusion = attention_fusion.fuse_file(state.onnx_dir / "model.onnx", state.onnx_dir / "model.fused.onnx")
    except attention_fusion.FusionError as exc:
        state.fusion = {"fused_attention_blocks": 0, "reason": str(exc)}
        return f"not fused: {exc}"
    state.fusion = fusion
    parity = state.record(
        row,
        f"{fusion['fused_attention_blocks']} attention blocks fused into {fusion['op']} (packed QKV MatMul, "
        "position bias as attention_bias); ONNX Runtime only; optimized online at session creation.",
        fusion=fusion,
    )
    return (
        f"{fusion['fused_attention_blocks']} blocks, {fusion['nodes_before']} -> {fusion['nodes_after']} nodes; "
        f"{parity}"
    )


def onnx_int8(state: BuildState, row: Variant) -> str:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" hint on the root logger
    quantize_dynamic(
        str(state.onnx_dir / "model.onnx"),
        str(state.onnx_dir / "model.int8.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return state.record(row, "Dynamic int8 MatMul weights (per-channel), activations quantized per batch at run time.")


def onnx_int8_smooth(state: BuildState, row: Variant) -> str:
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
    build_with = partial(
        build_smooth_int8,
        source,
        out,
        None,
        threads=state.threads,
        alpha=r.onnx_smooth_alpha,
        split_patterns=r.onnx_ffn_output_patterns,
        activation_max=maxima,
        keep_fp32=r.onnx_keep_fp32_patterns,
    )
    candidates = tuple(r.onnx_outlier_channel_candidates) or (r.onnx_outlier_channels,)
    tried = {}
    if len(candidates) > 1:
        # Outlier-channel count chosen by the gate's measure on the calibration texts (never the parity or
        # retrieval texts): the most top-10 agreement with the fp32 source graph, the fewest channels on a tie.
        calibration = list(calibration_sentences())
        reference = embed_in_service_batches(
            OnnxSentenceRunner(source, threads=state.threads).run, state.tokenizer, calibration, r
        )
        for count in candidates:
            build_with(outlier_channels=count)
            vectors = embed_in_service_batches(
                OnnxSentenceRunner(out, threads=state.threads).run, state.tokenizer, calibration, r
            )
            report = fidelity_report(vectors, reference, len(calibration), min_top10=r.min_top10_agreement)
            tried[count] = {k: report[k] for k in ("min_cosine", "top10_agreement", "spearman")}
    chosen = (
        max(candidates, key=lambda c: (tried[c]["top10_agreement"], tried[c]["min_cosine"], -c))
        if tried
        else candidates[0]
    )
    recipe = build_with(outlier_channels=chosen)
    recipe["source_graph"] = source.name
    recipe["fused_attention_blocks"] = state.fusion["fused_attention_blocks"] if fused_ok else 0
    recipe["calibration_texts"] = len(calibration_sentences())
    if tried:
        recipe["outlier_channels_tried_on_calibration_texts"] = {str(k): v for k, v in tried.items()}
    return state.record(
        row,
        f"Linear layers int8 ({recipe['weights']}; {recipe['activations']}): SmoothQuant alpha "
        f"{recipe['alpha']} on {recipe['smoothed']}, {recipe['outlier_split_layers']} FFN output layers with their "
        f"{recipe['outlier_channels']} largest input channels split off in fp32, {recipe['fp32_layers']} left "
        f"fp32; built from {source.name} "
        f"({recipe['fused_attention_blocks']} fused attention blocks).",
        recipe=recipe,
    )


def torch_bf16(state: BuildState, row: Variant) -> str:
    """No files of its own: the fp32 folder, cast to bfloat16 when it loads."""
    return state.record(
        row,
        "The fp32 folder cast to bfloat16 at load (runtime.torch_encoder.load_bf16); oneDNN "
        "runs its matmuls on AVX512-BF16 or AMX-BF16.",
    )


def openvino_variant(state: BuildState, row: Variant) -> str:
    """No files of its own: OpenVINO compiles the plain ONNX export at load, at the row's precision."""
    return state.record(
        row,
        f"OpenVINO reads onnx/model.onnx and compiles it at load with inference precision "
        f"{row.precision} (runtime.openvino_runner).",
    )


def openvino_int8(state: BuildState, row: Variant) -> str:
    from .openvino_steps import build_int8_ir

    recipe = build_int8_ir(state.onnx_dir / "model.onnx", state.staging / row.path)
    return state.record(
        row,
        f"OpenVINO IR of onnx/model.onnx with {recipe['linear_layers_int8']} linear layers' "
        f"weights in 8 bits per channel; activations quantized per token at run time "
        f"(runtime.openvino_runner); no calibration data.",
        recipe=recipe,
    )


def manifest_of(state: BuildState) -> Manifest:
    from .torch_steps import config_summary

    tokenizer_files = sorted(
        str(p.relative_to(state.staging)) for p in (state.staging / "tokenizer").rglob("*") if p.is_file()
    )
    summary = config_summary(state.model_dir)
    return Manifest.from_dict(
        {
            "format_version": 1,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": {
                "source": state.model,
                "dimension": state.dimension,
                "pooling": state.pooling.mode,
                "normalize": state.pooling.normalize,
                "max_seq_length": state.pooling.max_seq_length,
                **summary,
            },
            "tokenizer": TokenizerInfo(
                "tokenizer/tokenizer.json", tuple(FileEntry.from_file(state.staging, f) for f in tokenizer_files)
            ).to_dict(),
            "tools": tool_versions(),
            "build": {
                "threads": state.threads or os.cpu_count(),
                "onnx_opset": state.recipe.onnx_opset,
                "machine": platform.machine(),
                "host": state.host.to_dict(),
                "recipe": state.recipe.to_dict(),
            },
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
                "exact_variants": f"rewrites of the fp32 graph (export, offline optimization, fusion, another fp32 "
                f"engine) are verified on every {EXACT_CHECK_STRIDE}th parity text; approximations on "
                f"the retrieval corpus, or, where a parity text already falls below the min cosine, "
                f"on the parity texts embedded until then (texts and retrieval_texts say how many)",
                "check": {
                    "texts": measure_here.CHECK_TEXTS_FILE,
                    "vectors": measure_here.CHECK_VECTORS_FILE,
                    "recheck_texts": len(range(0, len(state.retrieval), RECHECK_STRIDE)),
                    "files": [
                        FileEntry.from_file(state.staging, f).to_dict()
                        for f in (measure_here.CHECK_TEXTS_FILE, measure_here.CHECK_VECTORS_FILE)
                    ],
                },
            },
            "artifacts": {name: record.to_dict() for name, record in state.artifacts.items()},
        }
    )


#: every variant's build step, by the name its table row gives (runtime.variants.Variant.build_step)
BUILD_STEPS = {
    f.__name__: f
    for f in (
        torch_fp32,
        torch_bf16,
        torch_int8,
        torch_int8_smooth,
        onnx_fp32,
        onnx_optimized,
        onnx_fused,
        onnx_int8,
        onnx_int8_smooth,
        openvino_variant,
        openvino_int8,
    )
}
#: rows built even where this CPU lacks what they need to be served: the lab measures dynamic int8 everywhere
BUILT_ANYWHERE = frozenset({"torch_int8", "torch_int8_smooth", "onnx_int8", "onnx_int8_smooth"})


#: rows whose files later steps read: ONNX and OpenVINO steps start from the plain export, SmoothQuant from the
#: fused graph where fusion kept the numbers
NEEDED_BY = {
    "onnx_fp32": (
        "onnx_optimized",
        "onnx_fused",
        "onnx_int8",
        "onnx_int8_smooth",
        "openvino_fp32",
        "openvino_bf16",
        "openvino_int8",
    ),
    "onnx_fused": ("onnx_int8_smooth",),
    "torch_fp32": ("torch_bf16",),
}


ON_REQUEST = tuple(row.name for row in VARIANTS if not row.built_by_default)


def resolve_variants(requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """Names to build, in table order, with the rows their steps read; raises BuildError on an unknown name."""
    if requested is None:
        wanted = set(default_build())
    elif tuple(requested) == ("all",):
        wanted = {row.name for row in VARIANTS}
    else:
        unknown = [name for name in requested if name not in {row.name for row in VARIANTS}]
        if unknown:
            raise BuildError(
                f"Unknown variant(s) {', '.join(unknown)} (have: all, {', '.join(row.name for row in VARIANTS)})."
            )
        wanted = set(requested)
    wanted |= {source for source, readers in NEEDED_BY.items() if wanted & set(readers)}
    return tuple(row.name for row in VARIANTS if row.name in wanted)


def _build_into(
    model: str, model_dir: Path, staging: Path, threads: int | None, recipe: Recipe, variants: tuple[str, ...]
) -> Manifest:
    from runtime import torch_encoder

    rows = [row for row in VARIANTS if "cpu" in row.devices and row.name in variants]
    progress = Progress(total=len(rows) + 2)
    torch_encoder.quiet_libraries()
    torch_encoder.set_threads(threads)
    state = BuildState(model, model_dir, staging, threads, recipe)
    progress.begin(f"loading {model} and embedding the fidelity corpus with the fp32 reference (torch eager)")
    progress.end(load_reference(state))
    for row in rows:
        progress.begin(f"{row.name}: {row.label}")
        if not state.host.has_any(row.needs_any) and row.name not in BUILT_ANYWHERE:
            progress.end(f"skipped: this CPU has none of {', '.join(row.needs_any)}")
            continue
        progress.end(BUILD_STEPS[row.build_step](state, row))
    progress.begin("writing manifest.json")
    manifest = manifest_of(state)
    manifest.write(staging)
    failing = manifest.failing()
    progress.end(f"failing the gate: {', '.join(failing) if failing else 'none'}")
    return manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m build_artifacts",
        description="Build deployable artifacts (fp32, int8 torch, ONNX, optimized ONNX, fused-attention ONNX, "
        "int8 ONNX) and a manifest with parity.",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL", DEFAULT_MODEL),
        help="Hugging Face id or local model folder (env MODEL; default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="exit 0 without building when --out already holds a manifest for this --model",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated rows of runtime/variants.py to build, or 'all' (default: every row "
        f"but the on-request ones: {', '.join(ON_REQUEST)})",
    )
    parser.add_argument(
        "--min-top10-agreement",
        type=float,
        default=DEFAULT_RECIPE.min_top10_agreement,
        help="the gate's retrieval half: mean share of each text's fp32 top-10 neighbours a variant "
        "keeps in its top 10 (default: %(default)s); recorded in the manifest",
    )
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
            print(
                f"error: {args.out} holds artifacts for {source}, not {args.model}; pass --force to rebuild",
                file=sys.stderr,
            )
            return 2
    try:
        manifest = build(
            args.model,
            args.out,
            force=args.force,
            threads=args.threads,
            opset=args.opset,
            recipe=replace(DEFAULT_RECIPE, min_top10_agreement=args.min_top10_agreement),
            variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None,
        )
    except (ModelUnavailableError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"\nArtifacts in {args.out}:")
    print(
        f"{'variant':<18} {'MB':>8} {'min cos':>9} {'mean cos':>9} {'top-10':>7} {'worst1%':>7} {'Spearman':>8}  gate"
    )
    for name, record in manifest.artifacts.items():
        p = record.parity
        print(
            f"{name:<18} {record.bytes / 1e6:8.1f} {p.min_cosine:9.4f} {p.mean_cosine:9.4f} "
            f"{p.top10_agreement:7.3f} {p.top10_agreement_worst1pct:7.2f} {p.spearman:8.4f}  "
            f"{'pass' if p.passes_parity else 'FAIL'}"
        )
    return 0
