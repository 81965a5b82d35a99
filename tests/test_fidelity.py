"""The fidelity measure and gate: top-10 agreement, Spearman, service-like batches, corpora, old manifests."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from build_artifacts.corpus import calibration_sentences, fidelity_records, parity_texts, retrieval_texts
from runtime.manifest import Manifest, Parity
from runtime.similarity import (
    MIN_TOP10_AGREEMENT,
    PARITY_MIN_COSINE,
    fidelity_report,
    gate_failures,
    retrieval_report,
    rowwise_cosine,
    service_batches,
    spearman,
    top_k_agreement,
)

from .conftest import REPO


def _clustered(n: int = 1200, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors in loose clusters, so every text has a few near neighbours (like real corpora)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 20, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _perturbed(x: np.ndarray, cosine: float, seed: int = 1) -> np.ndarray:
    """Each row moved by random noise to (about) the given cosine with its original."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=x.shape)
    noise -= np.sum(noise * x, axis=1, keepdims=True) * x  # orthogonal to each row
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosine * x + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def test_identical_vectors_agree_fully():
    x = _clustered()
    report = retrieval_report(x, x)
    assert report["top10_agreement"] == report["top10_agreement_worst1pct"] == 1.0
    assert report["spearman"] == pytest.approx(1.0) and report["retrieval_texts"] == len(x)
    assert fidelity_report(x, x, parity_rows=400)["passes_parity"]


def test_agreement_counts_shared_neighbours_and_ignores_self():
    x = np.array([[1, 0], [0.9, 0.44], [0, 1], [0.3, 0.95]], dtype=np.float32)  # pairs (0, 1) and (2, 3)
    y = x.copy()
    y[1] = [0.2, 0.98]  # row 1 moves next to rows 2 and 3: every nearest neighbour changes
    assert top_k_agreement(x, x, k=1).tolist() == [1, 1, 1, 1]
    assert top_k_agreement(y, x, k=1).tolist() == [0, 0, 0, 0]  # (self would always be its own top 1)
    assert top_k_agreement(y, x, k=2).tolist() == [1, 0.5, 1, 1]  # only row 1 swaps a neighbour (0 for 2)


def test_spearman_is_a_rank_correlation():
    a = np.linspace(0, 1, 100)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_vectors_that_pass_on_cosine_can_fail_on_retrieval():
    """Noise that keeps every vector at cosine 0.995 still reorders neighbours: the gate's second half."""
    x = _clustered()
    y = _perturbed(x, 0.995)
    assert rowwise_cosine(y, x).min() >= PARITY_MIN_COSINE
    report = fidelity_report(y, x, parity_rows=400)
    assert report["min_cosine"] >= PARITY_MIN_COSINE and report["top10_agreement"] < MIN_TOP10_AGREEMENT
    assert not report["passes_parity"]
    assert report["top10_agreement_worst1pct"] < report["top10_agreement"] and report["spearman"] < 1.0
    # a threshold is a setting: recorded in the report
    assert fidelity_report(y, x, parity_rows=400, min_top10=0.0)["passes_parity"]
    assert fidelity_report(y, x, parity_rows=400, min_top10=0.0)["min_top10_agreement"] == 0.0


def test_low_cosine_fails_even_when_neighbours_hold():
    x = _clustered()
    y = x.copy()
    y[0] = _perturbed(x[:1], 0.95)
    report = fidelity_report(y, x, parity_rows=400)
    assert report["top10_agreement"] >= MIN_TOP10_AGREEMENT and not report["passes_parity"]


def test_the_gate_verdict_is_decided_in_one_place():
    assert gate_failures(0.995, 0.97) == [] and gate_failures(0.995) == []  # top-10 unknown: cosine alone
    assert gate_failures(0.98, 0.90) == [
        f"min cosine 0.9800 < {PARITY_MIN_COSINE}",
        f"top-10 agreement 0.900 < {MIN_TOP10_AGREEMENT}",
    ]
    assert gate_failures(0.995, 0.90, min_top10=None) == [] and gate_failures(0.95, threshold=0.9) == []
    report = fidelity_report(_perturbed(_clustered(), 0.995), _clustered(), parity_rows=400)
    parity = Parity.from_dict(report)
    assert report["passes_parity"] is not bool(gate_failures(report["min_cosine"], report["top10_agreement"]))
    assert parity.why_failing() == "; ".join(gate_failures(parity.min_cosine, parity.top10_agreement))


def test_service_batches_cover_every_text_once_in_length_sorted_mixed_groups():
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 300, 1000).tolist()
    groups = service_batches(lengths, max_batch=32, window=64)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(1000))
    assert all(1 <= len(g) <= 32 for g in groups)
    assert all([lengths[i] for i in g] == sorted(lengths[i] for i in g) for g in groups)
    assert np.mean([max(lengths[i] for i in g) / min(lengths[i] for i in g) for g in groups]) > 2  # mixed
    assert service_batches(lengths) == groups  # fixed seed: the same groups every build


def test_corpora_are_large_disjoint_and_span_domains_and_lengths():
    parity, retrieval, calibration = parity_texts(), retrieval_texts(), calibration_sentences()
    assert len(parity) >= 300 and len(retrieval) >= 1000 and len(calibration) >= 200
    assert retrieval[: len(parity)] == parity
    assert not set(calibration) & set(retrieval)
    assert len(set(retrieval)) == len(retrieval)
    domains = {row["domain"] for row in fidelity_records("parity")}
    assert domains >= {"prose", "questions", "technical", "legal", "lists", "code", "long"}
    long_texts = [row["text"] for row in fidelity_records("parity") if row["domain"] == "long"]
    assert len(long_texts) >= 20 and min(len(t.split()) for t in long_texts) > 250  # truncated at 384 tokens
    assert all(row["source"] for name in ("parity", "retrieval", "calibration") for row in fidelity_records(name))


def test_old_manifest_without_retrieval_fields_loads_and_keeps_its_verdict():
    data = json.loads((REPO / "benchmarks" / "reference" / "manifest.json").read_text())
    manifest = Manifest.from_dict(data)
    smooth = manifest.artifacts["onnx_int8_smooth"].parity
    assert smooth.top10_agreement is None and smooth.passes_parity
    assert "top-10" not in smooth.summary()
    assert manifest.to_dict() == data  # no new keys appear in an old manifest


def test_new_parity_fields_round_trip_and_explain_a_failure():
    x = _clustered()
    report = fidelity_report(_perturbed(x, 0.995), x, parity_rows=400)
    parity = Parity.from_dict(report)
    assert Parity.from_dict(parity.to_dict()) == parity
    assert "top-10 agreement" in parity.why_failing() and "min cosine" not in parity.why_failing()
    assert "FAILS" in parity.summary()


@pytest.mark.slow
def test_measure_on_minilm_passes_fp32_and_fails_a_perturbed_variant(minilm_artifacts):
    from build_artifacts.build import embed_in_service_batches
    from runtime.manifest import load_manifest
    from runtime.onnx_runner import OnnxSentenceRunner
    from runtime.tokenization import TextTokenizer

    manifest = load_manifest(minilm_artifacts)
    assert manifest.parity["retrieval_texts"] >= 1000 and manifest.parity["min_top10_agreement"] == 0.95
    for name, record in manifest.artifacts.items():
        p = record.parity
        assert p.top10_agreement is not None and p.spearman is not None, name
        assert p.passes_parity == (p.min_cosine >= 0.99 and p.top10_agreement >= 0.95), name
    for name in ("torch_fp32", "onnx_fp32", "onnx_optimized", "onnx_fused"):
        assert manifest.artifacts[name].parity.top10_agreement >= 0.99, name

    tokenizer = TextTokenizer(minilm_artifacts / "tokenizer" / "tokenizer.json", manifest.model.max_seq_length)
    runner = OnnxSentenceRunner(minilm_artifacts / "onnx" / "model.optimized.onnx", threads=2, optimize=False)
    texts = retrieval_texts()
    reference = embed_in_service_batches(runner.run, tokenizer, texts)
    rng = np.random.default_rng(0)
    # Noise of 0.12 x each vector's own norm (pooled vectors are not unit length): every cosine ~0.993, min 0.992,
    # yet about 6% of top-10 neighbours change (measured: 0.939).
    norms = np.linalg.norm(reference, axis=1, keepdims=True)
    noisy = reference + norms * rng.normal(scale=0.12 / np.sqrt(reference.shape[1]), size=reference.shape)
    report = fidelity_report(noisy, reference, len(parity_texts()))
    assert report["min_cosine"] >= 0.99 and report["top10_agreement"] < 0.95 and not report["passes_parity"]


@pytest.mark.slow
def test_outlier_channel_count_is_chosen_on_calibration_texts(tiny_mpnet_dir, tmp_path):
    """Plumbing (random weights): every candidate is measured on the calibration texts and one is kept."""
    from dataclasses import replace

    from build_artifacts.build import build
    from build_artifacts.recipe import DEFAULT_RECIPE

    keep = r"layer\.0/output/dense/"
    manifest = build(
        str(tiny_mpnet_dir),
        tmp_path / "out",
        threads=2,
        recipe=replace(DEFAULT_RECIPE, onnx_outlier_channel_candidates=(4, 16), onnx_keep_fp32_patterns=(keep,)),
    )
    recipe = manifest.artifacts["onnx_int8_smooth"].recipe
    tried = recipe["outlier_channels_tried_on_calibration_texts"]
    assert set(tried) == {"4", "16"} and recipe["outlier_channels"] in (4, 16)
    assert recipe["calibration_texts"] == len(calibration_sentences())
    best = max(tried.values(), key=lambda t: t["top10_agreement"])["top10_agreement"]
    assert tried[str(recipe["outlier_channels"])]["top10_agreement"] == best
    assert manifest.build["recipe"]["onnx_outlier_channel_candidates"] == [4, 16]
    # The layer kept fp32 is a plain MatMul on its original input: not split, smoothed or quantized.
    import onnx

    graph = onnx.load(str(tmp_path / "out" / manifest.artifacts["onnx_int8_smooth"].path)).graph
    kept = [n for n in graph.node if re.search(keep, n.name) and "MatMul" in n.op_type]
    assert recipe["fp32_layers"] == 1 and [n.op_type for n in kept] == ["MatMul"], [n.name for n in kept]
    assert any(re.search(r"layer\.1/output/dense/", n.name) and n.op_type == "MatMulInteger" for n in graph.node)
