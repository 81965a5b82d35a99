"""Shared HTTP core for both services: schemas, errors, dynamic batcher, metrics, settings, app factory.

Nothing here imports torch or onnxruntime; each service supplies an Embedder.
"""
