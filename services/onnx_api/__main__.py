"""python -m services.onnx_api --artifacts DIR [--host 127.0.0.1] [--port 8002] (env ONNX_API_*)"""

import sys

from services.catalog import ONNX_API
from services.common.serve import serve

from .embedder import OnnxEmbedder, OnnxSettings

sys.exit(serve(OnnxSettings, OnnxEmbedder, ONNX_API.runtime_packages, f"python -m {ONNX_API.module}"))
