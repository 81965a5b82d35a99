"""Fidelity: cosine similarity of pooled embeddings against a reference (numpy only)."""

from __future__ import annotations

import numpy as np

from .pooling import l2_normalize

#: the parity policy: an artifact passes when its min cosine against fp32 reaches this
PARITY_MIN_COSINE = 0.99


def rowwise_cosine(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(candidate.astype(np.float64)) * l2_normalize(reference.astype(np.float64)), axis=1)


def parity_report(candidate: np.ndarray, reference: np.ndarray) -> dict:
    cosines = rowwise_cosine(candidate, reference)
    min_cos = float(cosines.min())
    return {
        "min_cosine": round(min_cos, 6),
        "mean_cosine": round(float(cosines.mean()), 6),
        "texts": int(len(cosines)),
        "threshold": PARITY_MIN_COSINE,
        "passes_parity": bool(min_cos >= PARITY_MIN_COSINE),
    }


__all__ = ["PARITY_MIN_COSINE", "l2_normalize", "parity_report", "rowwise_cosine"]
