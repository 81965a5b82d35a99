"""python -m services.onnx_api --artifacts DIR [--host 127.0.0.1] [--port 8002] (env ONNX_API_*)"""

import sys

from services.common.serve import serve

from .embedder import OnnxEmbedder, OnnxSettings

sys.exit(serve(OnnxSettings, OnnxEmbedder, ("onnxruntime", "openvino"), "python -m services.onnx_api"))
