"""Response checks used by the Locust users (kept free of locust/gevent so tests can import them)."""

from __future__ import annotations

import math


def validate_embeddings(payload, expected_count: int, dimension: int | None) -> str | None:
    """Return why a /embed response is wrong, or None when it is right."""
    if not isinstance(payload, list) or len(payload) != expected_count:
        got = len(payload) if isinstance(payload, list) else type(payload).__name__
        return f"expected {expected_count} vectors, got {got}"
    for vector in payload:
        if not isinstance(vector, list) or (dimension is not None and len(vector) != dimension):
            return f"expected dimension {dimension}, got {len(vector) if isinstance(vector, list) else '?'}"
        norm = math.sqrt(sum(v * v for v in vector))
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-3:
            return f"vector is not unit-norm (norm {norm:.4f})"
    return None
