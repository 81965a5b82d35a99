"""Fidelity against a reference (numpy only): cosine of single vectors, and agreement of search results.

Cosine of one vector at a time is not what users feel; they feel changed search results. So next to the
cosine there is a label-free retrieval measure over a corpus (>= 1,000 texts):
- top-k agreement: for each text, the share of its k nearest neighbours under the reference (fp32) that the
  candidate also ranks in its own top k (self excluded); reported as the mean over texts and as the worst 1%
  (the 1st percentile: 99% of texts keep at least that share);
- Spearman correlation of the pairwise cosine similarities of a fixed random sample of pairs.
Dynamic int8 scales activations per batch, so a text's vector depends on its batch mates: `service_batches`
groups a corpus the way the services do (texts arrive in random order, each window is sorted by length and
cut into groups of up to 32, so a group mixes lengths), and both sides are embedded in those groups.
The gate's verdict (`gate_failures`) is decided here only; reports and the manifest carry it.
"""

from __future__ import annotations

import numpy as np

from .batching import padding_efficient_groups
from .pooling import l2_normalize

#: the gate: an artifact passes when its min cosine against fp32 on the parity corpus reaches this ...
PARITY_MIN_COSINE = 0.99
#: ... and its mean top-10 agreement with fp32 on the retrieval corpus reaches this
MIN_TOP10_AGREEMENT = 0.95
TOP_K = 10
#: pairs sampled (fixed seed) for the Spearman correlation of pairwise similarities
SPEARMAN_PAIRS = 20_000


def rowwise_cosine(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(candidate.astype(np.float64)) * l2_normalize(reference.astype(np.float64)), axis=1)


def gate_failures(
    min_cosine: float,
    top10_agreement: float | None = None,
    threshold: float = PARITY_MIN_COSINE,
    min_top10: float | None = MIN_TOP10_AGREEMENT,
) -> list[str]:
    """The gate's failed conditions, in words (none: it passes): min cosine >= threshold and, where both are
    known (not in older manifests or cosine-only checks), mean top-10 agreement >= min_top10."""
    reasons = []
    if min_cosine < threshold:
        reasons.append(f"min cosine {min_cosine:.4f} < {threshold}")
    if top10_agreement is not None and min_top10 is not None and top10_agreement < min_top10:
        reasons.append(f"top-10 agreement {top10_agreement:.3f} < {min_top10}")
    return reasons


def parity_report(candidate: np.ndarray, reference: np.ndarray, threshold: float = PARITY_MIN_COSINE) -> dict:
    """The cosine half of the gate (what a start-up precision check needs)."""
    cosines = rowwise_cosine(candidate, reference)
    min_cos = float(cosines.min())
    return {
        "min_cosine": round(min_cos, 6),
        "mean_cosine": round(float(cosines.mean()), 6),
        "texts": int(len(cosines)),
        "threshold": threshold,
        "passes_parity": not gate_failures(min_cos, threshold=threshold),
    }


def service_batches(token_counts, max_batch: int = 32, window: int = 64, seed: int = 0) -> list[list[int]]:
    """Index groups as a service forms them: arrival order shuffled (fixed seed), each window of `window`
    texts sorted by length and split into groups of up to `max_batch` (so groups mix nearby lengths and
    every text has batch mates: no padding cut here, the harder case for per-batch int8 scales)."""
    order = np.random.default_rng(seed).permutation(len(token_counts)).tolist()
    groups = []
    for start in range(0, len(order), window):
        arrived = order[start : start + window]
        cut = padding_efficient_groups([token_counts[i] for i in arrived], max_padding=None, max_size=max_batch)
        groups += [[arrived[i] for i in group] for group in cut]
    return groups


def top_k_neighbours(embeddings: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """[n, k] indices of each row's k most similar other rows (cosine; self excluded), unordered."""
    unit = l2_normalize(embeddings.astype(np.float32))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k, axis=1)[:, :k]


def top_k_agreement(candidate: np.ndarray, reference: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per text: the share of its reference top-k neighbours that the candidate also ranks top-k."""
    ref, cand = top_k_neighbours(reference, k), top_k_neighbours(candidate, k)
    return np.array([len(np.intersect1d(r, c, assume_unique=True)) / k for r, c in zip(ref, cand, strict=True)])


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values), dtype=np.float64)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order: similarities of real texts are continuous)."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def sample_pairs(n: int, pairs: int = SPEARMAN_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, n, size=(2, pairs))
    keep = first != second
    return first[keep], second[keep]


def retrieval_report(candidate: np.ndarray, reference: np.ndarray, k: int = TOP_K, pairs: int = SPEARMAN_PAIRS) -> dict:
    """Label-free retrieval agreement of `candidate` with `reference` (same texts, same row order)."""
    agreement = top_k_agreement(candidate, reference, k)
    first, second = sample_pairs(len(reference), pairs)
    cand, ref = l2_normalize(candidate.astype(np.float64)), l2_normalize(reference.astype(np.float64))
    rho = spearman(np.sum(cand[first] * cand[second], axis=1), np.sum(ref[first] * ref[second], axis=1))
    return {
        f"top{k}_agreement": round(float(agreement.mean()), 6),
        f"top{k}_agreement_worst1pct": round(float(np.quantile(agreement, 0.01, method="lower")), 6),
        "spearman": round(rho, 6),
        "retrieval_texts": int(len(reference)),
        "spearman_pairs": int(len(first)),
    }


def fidelity_report(
    candidate: np.ndarray,
    reference: np.ndarray,
    parity_rows: int,
    min_cosine: float = PARITY_MIN_COSINE,
    min_top10: float = MIN_TOP10_AGREEMENT,
) -> dict:
    """The whole gate. Rows [:parity_rows] are the parity corpus, all rows the retrieval corpus (both
    embedded in service batches). `passes_parity` means: min cosine on the parity corpus >= min_cosine
    and mean top-10 agreement >= min_top10."""
    report = parity_report(candidate[:parity_rows], reference[:parity_rows], min_cosine)
    retrieval = retrieval_report(candidate, reference)
    corpus_cosines = rowwise_cosine(candidate, reference)
    report.update(retrieval, retrieval_min_cosine=round(float(corpus_cosines.min()), 6), min_top10_agreement=min_top10)
    report["passes_parity"] = not gate_failures(
        report["min_cosine"], retrieval["top10_agreement"], min_cosine, min_top10
    )
    return report


__all__ = [
    "MIN_TOP10_AGREEMENT",
    "PARITY_MIN_COSINE",
    "fidelity_report",
    "gate_failures",
    "l2_normalize",
    "parity_report",
    "retrieval_report",
    "rowwise_cosine",
    "service_batches",
    "spearman",
    "top_k_agreement",
]
