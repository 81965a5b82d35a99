"""A real uvicorn process serving the fake embedder: drain, slow-client and start-up tests without weights.

python -m tests.fake_service [--port N] [every service flag]   (env FAKE_API_*; FAKE_MODEL_DELAY_S: seconds
per model call)
"""

import os
import sys

from pydantic_settings import SettingsConfigDict

from services.common.serve import serve
from services.common.settings import ServiceSettings

from .fakes import FakeEmbedder


class FakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FAKE_API_", extra="ignore")


def make_embedder(settings: FakeSettings) -> FakeEmbedder:
    return FakeEmbedder(delay_s=float(os.environ.get("FAKE_MODEL_DELAY_S", "0")))


if __name__ == "__main__":
    sys.exit(serve(FakeSettings, make_embedder, (), "python -m tests.fake_service"))
