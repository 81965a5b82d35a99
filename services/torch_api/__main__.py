"""python -m services.torch_api --artifacts DIR [--host 127.0.0.1] [--port 8001] (env TORCH_API_*)"""

import sys

from services.catalog import TORCH_API
from services.common.serve import serve

from .embedder import TorchEmbedder, TorchSettings

sys.exit(serve(TorchSettings, TorchEmbedder, TORCH_API.runtime_packages, f"python -m {TORCH_API.module}"))
