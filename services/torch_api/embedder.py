"""Torch embedder: the fp32 weights (eval, inference_mode, optional torch.compile) or the int8 state_dict,
on the CPU or on a CUDA GPU (fp16 / bf16 weights checked against fp32 at start-up, shape buckets, pinned
host memory)."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from runtime.manifest import ArtifactError
from runtime.similarity import PARITY_MIN_COSINE, parity_report
from services.catalog import TORCH_API
from services.common.embedder import WARMUP_TEXTS, ArtifactEmbedder
from services.common.settings import GPU_MAX_BATCH_SIZE, ServiceSettings, SettingsConfigDict, SettingsError

from .buckets import batch_buckets, pad_to_bucket, parse_buckets, warmup_shapes

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

#: texts for the start-up precision check (fp16/bf16 against fp32 on the same device): short to long
PRECISION_CHECK_TEXTS = [
    "Hi.",
    "Dinner is ready.",
    "Please turn off the lights when you leave the room.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen.",
    "Der schnelle braune Fuchs springt über den faulen Hund. 東京は日本の首都です。",
    "Error 0x80070005: access denied while writing C:/Users/admin/AppData/Local/Temp/setup.log",
    " ".join(
        [
            "The central bank raised interest rates by a quarter of a percentage point on Wednesday, citing",
            "persistent inflation in services and a labour market that remains tighter than policymakers had",
            "expected. Officials signalled that further increases were possible if price pressures did not ease,",
            "although several members of the committee argued that the effects of earlier rises had yet to be",
            "felt fully across the economy. Markets reacted calmly: government bond yields edged up, the currency",
            "strengthened slightly against the dollar, and equity indices closed little changed after a volatile",
            "session in which technology shares initially fell before recovering in the afternoon.",
        ]
    )
    * 3,
]


class TorchSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=TORCH_API.env_prefix, extra="ignore")

    port: int = Field(TORCH_API.port, ge=1, le=65535, description="port to bind")
    compile: bool = Field(True, description="torch.compile the fp32 model at start-up (warm-up compiles it)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where the model runs; cuda: the first GPU")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="weight precision (auto: fp16 on cuda, fp32 on cpu); fp16/bf16 are checked "
        "against fp32 on the same device at start-up",
    )
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "auto", description="torch.compile mode (auto: reduce-overhead = CUDA graphs on cuda, default on cpu)"
    )
    seq_buckets: str = Field(
        "auto",
        description="pad lengths to these (comma list, capped at the model's limit; 'default' = "
        "16,32,64,128,256,512; 'none' = pad to the longest row) and batches to powers of two, so compile "
        "sees a bounded set of shapes, all run at warm-up (auto: default on cuda, none on cpu)",
    )
    precision_min_cosine: float = Field(
        PARITY_MIN_COSINE, gt=0, le=1, description="start-up check: least cosine of fp16/bf16 against fp32"
    )

    @model_validator(mode="after")
    def _device_defaults(self):
        if self.device == "cuda":
            self.use_gpu_batch_sizes()
        if self.variant not in ("auto", "torch_fp32") and (self.device == "cuda" or self.dtype in ("fp16", "bf16")):
            raise ValueError(
                f"variant {self.variant} is a CPU variant of its own precision: with device "
                f"{self.device} and dtype {self.dtype} use variant auto or torch_fp32"
            )
        try:
            parse_buckets(self.seq_buckets if self.seq_buckets != "auto" else "none", 512)
        except ValueError:
            raise ValueError(
                f"seq_buckets {self.seq_buckets!r}: give auto, default, none or a comma list of positive lengths"
            ) from None
        return self

    @property
    def resolved_dtype(self) -> str:
        return self.dtype if self.dtype != "auto" else ("fp16" if self.device == "cuda" else "fp32")

    @property
    def resolved_compile_mode(self) -> str:
        if self.compile_mode != "auto":
            return self.compile_mode
        # CUDA graphs remove the per-kernel launch cost that dominates one sentence on a GPU; max-autotune
        # adds little at batch for minutes of autotuning (benchmarks/reference/gpu-h200).
        return "reduce-overhead" if self.device == "cuda" else "default"

    @property
    def resolved_seq_buckets(self) -> str:
        return self.seq_buckets if self.seq_buckets != "auto" else ("default" if self.device == "cuda" else "none")


def require_cuda() -> None:
    """Raise SettingsError (one line: exit 2) where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise SettingsError(
            f"device (--device / env TORCH_API_DEVICE) = 'cuda': no CUDA device here "
            f"(torch {torch.__version__}, {build}; torch.cuda.is_available() is false)"
        )


def dynamo_graphs_compiled() -> int:
    """Graphs torch.compile has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class TorchEmbedder(ArtifactEmbedder):
    service = TORCH_API.name

    def __init__(self, settings: TorchSettings):
        self.device = settings.device
        self.dtype = settings.resolved_dtype
        if self.device == "cuda":
            require_cuda()
        # A dtype cast at load (fp16/bf16 on cuda, checked at start-up) starts from the fp32 weights.
        allowed = ("torch_fp32",) if self.device == "cuda" or self.dtype != "fp32" else None
        super().__init__(
            settings.artifacts_dir,
            settings.variant,
            settings.threads,
            self.device,
            allowed,
            memory=settings.memory_bounds(),
        )
        self.compile = settings.compile and self.variant == "torch_fp32"
        self.compile_mode = settings.resolved_compile_mode
        self.seq_buckets = parse_buckets(settings.resolved_seq_buckets, self.max_tokens)
        self.batch_buckets = batch_buckets(settings.max_batch_size) if self.seq_buckets else ()
        self.warmup_shapes = warmup_shapes(self.seq_buckets, self.batch_buckets, settings.max_batch_tokens)
        self.precision_min_cosine = settings.precision_min_cosine
        self.precision_parity: dict | None = None  # fp16/bf16 eager vs fp32, same device, at load
        self.served_parity: dict | None = None  # the served path (buckets, compiled) vs fp32, after warm-up
        self.shapes_run: set[tuple[int, int]] = set()
        self.graphs_compiled: int | None = None
        self.warmup_s: float | None = None
        self._reference: np.ndarray | None = None
        self._pinned: Any = None  # torch tensors and module: typed Any so this module imports no torch
        self._model: Any = None

    # --- load -----------------------------------------------------------------------------------------
    def verify(self) -> None:
        """sha256 as always; with fp16/bf16 also the precision check, before the service listens (a failure
        is a one-line exit 2, as a variant that fails parity in the manifest)."""
        super().verify()
        if self.dtype != "fp32":
            self.load()

    def load(self) -> None:
        if self._model is None:
            super().load()

    def _load_model(self) -> None:
        import torch

        from runtime import torch_encoder

        torch_encoder.quiet_libraries()
        if self.threads:
            torch.set_num_threads(self.threads)
        model = torch_encoder.load_variant(self.artifacts_dir, self.manifest, self.variant).eval()
        device = torch.device(self.device)
        model = model.to(device)
        if self.dtype != "fp32":
            model = self._checked_precision(model)
        if self.device == "cuda":
            # One pinned buffer for every batch (ids and mask, the largest bucket): host-to-device copies
            # run asynchronously from page-locked memory; pinning per call would cost more than it saves.
            rows = max(self.batch_buckets or (GPU_MAX_BATCH_SIZE,))
            self._pinned = torch.empty(2 * rows * self.max_tokens, dtype=torch.int64).pin_memory()
        if self.compile and self.seq_buckets and self.device == "cuda":
            import torch._inductor.config as inductor_config

            # One CUDA graph per bucket shape is the plan, not a warning.
            inductor_config.triton.cudagraph_dynamic_shape_warn_limit = None
        # dynamic=True: one graph for every batch size and length (batch 1 still gets its own); with CUDA
        # graphs, one recording per bucket shape, all made at warm-up.
        mode = None if self.compile_mode == "default" else self.compile_mode
        self._model = torch.compile(model, dynamic=True, mode=mode) if self.compile else model

    def _checked_precision(self, model):
        """fp32 reference on this device, then the weights cast to self.dtype: refuse below the threshold."""
        import torch

        batch = self.tokenizer.encode(PRECISION_CHECK_TEXTS)
        ids, mask = (torch.from_numpy(a).to(self.device) for a in (batch.input_ids, batch.attention_mask))
        with torch.inference_mode():
            self._reference = model(ids, mask).float().cpu().numpy()
            model = model.to(getattr(torch, DTYPES[self.dtype]))
            candidate = model(ids, mask).float().cpu().numpy()
        self.precision_parity = self._parity(candidate, "eager")
        return model

    def _parity(self, candidate: np.ndarray, what: str) -> dict:
        assert self._reference is not None, "the fp32 reference is taken before any parity check"
        report = parity_report(candidate, self._reference, self.precision_min_cosine)
        if not report["passes_parity"]:
            raise ArtifactError(
                f"{self.dtype} on {self.device} ({what}) fails parity against fp32 on the same device (min cosine "
                f"{report['min_cosine']:.4f} < {self.precision_min_cosine} on {report['texts']} texts): "
                f"refusing to serve it; use --dtype fp32 or another dtype"
            )
        return report

    def warmup(self) -> None:
        started = time.perf_counter()
        if self.seq_buckets:
            # Every shape the batcher can produce, so no request waits for a compile or a graph recording.
            longest = self.tokenizer.token_ids([" ".join(WARMUP_TEXTS * 64)], truncate=False)[0]
            for rows, width in self.warmup_shapes:
                self.run_batch([self.tokenizer.truncate(longest, width)] * rows)
        else:
            super().warmup()
        if self._reference is not None:  # the path requests take (buckets, compiled) against fp32
            self.served_parity = self._parity(self.embed(PRECISION_CHECK_TEXTS), "served path")
        self.warmup_s = round(time.perf_counter() - started, 2)
        if self.compile:
            self.graphs_compiled = dynamo_graphs_compiled()

    # --- run ------------------------------------------------------------------------------------------
    def run_batch(self, ids: list[list[int]]) -> np.ndarray:
        """One model call: rows padded to the longest of them, then (with buckets) to the bucket shape."""
        batch = self.tokenizer.pad(ids)
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        if self.seq_buckets:
            input_ids, attention_mask = pad_to_bucket(
                input_ids, attention_mask, self.tokenizer.pad_id, self.seq_buckets, self.batch_buckets
            )
        self.shapes_run.add(input_ids.shape)
        return self._forward(input_ids, attention_mask)[: len(ids)]

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        if self.device == "cuda":
            ids, mask = self._to_device(ids, mask)
        # Compiled graphs run under no_grad; eager under inference_mode (the lab's fastest eager mode).
        context = torch.no_grad() if self.compile else torch.inference_mode()
        with context:
            out = self._model(ids, mask)
        return out.float().cpu().numpy()

    def _to_device(self, ids, mask):
        size = ids.numel()
        if self._pinned is not None and 2 * size <= self._pinned.numel():
            staged = self._pinned[: 2 * size].view(2, *ids.shape)
            staged[0].copy_(ids)
            staged[1].copy_(mask)
            # Safe to reuse next call: .cpu() on the output waits for this stream, the copy included.
            on_device = staged.to(self.device, non_blocking=True)
            return on_device[0], on_device[1]
        return ids.to(self.device), mask.to(self.device)

    def info(self) -> dict:
        out = {**super().info(), "torch_compile": self.compile, "device": self.device, "dtype": self.dtype}
        if self.compile:
            out.update(compile_mode=self.compile_mode, graphs_compiled=self.graphs_compiled)
        if self.seq_buckets:
            out.update(
                seq_buckets=list(self.seq_buckets),
                batch_buckets=list(self.batch_buckets),
                warmup_shapes=len(self.warmup_shapes),
            )
        if self.precision_parity is not None:
            out.update(precision_parity=self.precision_parity, served_parity=self.served_parity)
        if self.device == "cuda":
            import torch

            out.update(gpu=torch.cuda.get_device_name(0), pinned_host_memory=self._pinned is not None)
        out["warmup_s"] = self.warmup_s
        return out
