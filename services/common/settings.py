"""Settings from flags and environment variables (pydantic-settings), one env prefix per service."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.memory import DEFAULT_CACHE_CAPACITY, DEFAULT_TRIM_INTERVAL_S, MemoryBounds

# A GPU wants bigger calls than a CPU: on an H200, MPNet-base fp16 runs b32 in ~6.5 ms and b128 in ~29 ms
# (benchmarks/reference/gpu-h200), so up to 128 texts / 64k padded tokens (128 x 512) per call.
GPU_MAX_BATCH_SIZE = 128
GPU_MAX_BATCH_TOKENS = 65536


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore")

    artifacts_dir: Path = Field(Path("artifacts/all-mpnet-base-v2"), description="artifact folder from build_artifacts")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=1, le=65535, description="port to bind")
    threads: int | None = Field(None, ge=1, description="CPU threads for the model (default: all cores)")
    variant: str = Field(
        "auto",
        description="artifact variant; auto = the most faithful of the fastest passing the gate (docs/artifacts.md)",
    )
    max_client_batch_size: int = Field(64, ge=1, description="most inputs one request may carry (413 above)")
    max_batch_size: int = Field(32, ge=1, description="most texts per model call")
    max_batch_tokens: int = Field(16384, ge=1, description="most padded tokens per model call")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch may wait to fill")
    # Admission by time: a typical client timeout. A request that would wait longer is told at once (429 with
    # Retry-After) instead of timing out after the server spent its CPU on it.
    max_queue_wait_ms: float = Field(
        30_000.0,
        gt=0,
        description="most estimated queue wait a request is admitted into; more get 429 with Retry-After",
    )
    max_concurrent_requests: int = Field(
        512, ge=1, description="most embedding requests in flight (429 above), as text-embeddings-inference"
    )
    engine_cache_capacity: int = Field(
        DEFAULT_CACHE_CAPACITY,
        ge=0,
        description="entries in each engine's cache of per-shape kernels (OpenVINO's CPU runtime cache, oneDNN's "
        "primitive cache, ideep's): bounds memory under traffic of many shapes; 0 caches nothing (slower)",
    )
    malloc_trim_interval_s: float = Field(
        DEFAULT_TRIM_INTERVAL_S,
        ge=0,
        description="hand freed heap back to the system (glibc malloc_trim) at most this often, between model "
        "calls; 0: never",
    )
    max_payload_bytes: int = Field(2_000_000, ge=1024, description="largest request body (413 above)")
    shutdown_grace_s: float = Field(
        25.0,
        ge=0,
        description="on SIGTERM, how long admitted requests may take to "
        "finish (fits Kubernetes' 30 s); later ones get 503",
    )
    drain_delay_s: float = Field(
        0.0, ge=0, description="on SIGTERM, keep answering (health 503) at least this long so load balancers notice"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="close a connection whose request headers take longer")
    body_timeout_s: float = Field(30.0, gt=0, description="answer 408 to a request whose body takes longer")
    keep_alive_s: int = Field(5, ge=1, description="close idle keep-alive connections after this long")
    max_connections: int = Field(2048, ge=1, description="most open connections; requests on more get 503")
    api_keys: str = Field(
        "", description="comma-separated API keys; when set, every route but /health needs Authorization: Bearer <key>"
    )
    model_name: str = Field(
        "",
        description="model name shown in /info and /v1/embeddings (default: the model id "
        "the artifacts were built from, never a file path)",
    )
    served_model_name: str = Field(
        "",
        description="name the model is served under in /v1/models and answers (as text-embeddings-inference's "
        "--served-model-name; default: --model-name, else the model id)",
    )
    auto_truncate: bool = Field(
        True,
        description="/embed's truncate default when a request omits it (text-embeddings-inference's "
        "--auto-truncate; its default is false)",
    )
    default_prompt_name: str = Field(
        "",
        description="prompt (from the model's sentence-transformers config) put before every text that names "
        "none (default: the config's own default_prompt_name)",
    )
    token_ids: Literal["tiktoken", "model", "reject"] = Field(
        "tiktoken",
        description="what token-id inputs on /v1/embeddings mean: tiktoken = OpenAI cl100k_base ids (LangChain's "
        "default), decoded to text; model = ids of the served model's tokenizer; reject = 400",
    )
    otlp_endpoint: str = Field(
        "",
        description="OTLP/HTTP collector URL (e.g. http://otel-collector:4318) to send traces to; empty: no tracing",
    )
    otlp_service_name: str = Field("", description="service.name of the traces (default: the service's name)")
    json_output: bool = Field(False, description="log one JSON object per line")
    show_versions: bool = Field(False, description="list library versions in /info")
    debug: bool = Field(False, description="print tracebacks for start-up failures")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="uvicorn / service log level"
    )

    @field_validator("log_level", "token_ids", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of an OTLP/HTTP collector (e.g. http://host:4318)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_wait_ms >= self.max_queue_wait_ms:
            raise ValueError(
                f"max_wait_ms ({self.max_wait_ms}) must be below max_queue_wait_ms ({self.max_queue_wait_ms})"
            )
        return self

    def use_gpu_batch_sizes(self) -> None:
        """GPU-sized calls, except where a batch limit was given (flag or env var)."""
        if "max_batch_size" not in self.model_fields_set:
            self.max_batch_size = GPU_MAX_BATCH_SIZE
        if "max_batch_tokens" not in self.model_fields_set:
            self.max_batch_tokens = GPU_MAX_BATCH_TOKENS

    def memory_bounds(self) -> MemoryBounds:
        return MemoryBounds(self.engine_cache_capacity, self.malloc_trim_interval_s)

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]


class SettingsError(Exception):
    """A setting a user gave is invalid: one line that names it, where it came from, and what is wrong."""


def parse_settings(settings_cls: type[ServiceSettings], argv: list[str] | None, prog: str) -> ServiceSettings:
    """Every field is a flag (--max-wait-ms) and an env var (PREFIX_MAX_WAIT_MS); flags win."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Embedding service. Every flag is also an env var {prefix}<NAME>."
    )
    for name, field in settings_cls.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"]
        if name == "artifacts_dir":
            flags.insert(0, "--artifacts")
        help_text = f"{field.description} (env {prefix}{name.upper()}; default {field.default})"
        if field.annotation is bool:
            parser.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(*flags, dest=name, default=None, help=help_text)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc, prefix, overrides)) from None


def describe_settings_error(exc: ValidationError, prefix: str, flags: dict) -> str:
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err.get("loc", ()))
        if not name:  # a check across settings
            parts.append(str(err.get("msg", "")).removeprefix("Value error, "))
            continue
        source = f"--{name.replace('_', '-')}" if name in flags else f"env {prefix}{name.upper()}"
        parts.append(f"{name} ({source}) = {err.get('input')!r}: {err.get('msg')}")
    return "invalid setting: " + "; ".join(parts)
