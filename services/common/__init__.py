"""Shared HTTP core for both services: schemas, errors, dynamic batcher, metrics, settings, app factory; the
client-compatibility pieces (token-id inputs, prompts, dimensions) and observability (tracing, JSON logs).

Nothing here imports torch or onnxruntime; each service supplies an Embedder.
"""
