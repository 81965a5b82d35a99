"""ONNX Runtime embedding service: no torch, no transformers (onnxruntime, tokenizers, numpy)."""
