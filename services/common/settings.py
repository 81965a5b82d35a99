"""Settings from flags and environment variables (pydantic-settings), one env prefix per service."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore")

    artifacts_dir: Path = Field(Path("artifacts/all-mpnet-base-v2"), description="artifact folder from build_artifacts")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=1, le=65535, description="port to bind")
    threads: int | None = Field(None, ge=1, description="CPU threads for the model (default: all cores)")
    variant: str = Field("auto", description="artifact variant; auto = fastest that passes parity")
    max_client_batch_size: int = Field(64, ge=1, description="most inputs one request may carry (413 above)")
    max_batch_size: int = Field(32, ge=1, description="most texts per model call")
    max_batch_tokens: int = Field(16384, ge=1, description="most padded tokens per model call")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch may wait to fill")
    # Bounded so that a full queue means seconds of backlog on a CPU, not minutes.
    queue_limit: int = Field(128, ge=1, description="most texts waiting; more get 429")
    max_payload_bytes: int = Field(2_000_000, ge=1024, description="largest request body (413 above)")
    log_level: str = Field("info", description="uvicorn / service log level")


def parse_settings(settings_cls: type[ServiceSettings], argv: list[str] | None, prog: str) -> ServiceSettings:
    """Every field is a flag (--max-wait-ms) and an env var (PREFIX_MAX_WAIT_MS); flags win."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    parser = argparse.ArgumentParser(prog=prog, description=f"Embedding service. Every flag is also an env var {prefix}<NAME>.")
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
    return settings_cls(**overrides)
