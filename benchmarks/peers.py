"""What each service's `auto` variant gives against the peers a user would pick instead, side by side in one run.

    python -m benchmarks.peers --model models/all-mpnet-base-v2 --artifacts artifacts/all-mpnet-base-v2 \
        --threads 2 --out results/peers

Paths, each texts -> normalized float32 vectors, tokenization included:
- `onnx_optimized`: what onnx_api served before the variant table (ONNX Runtime fp32), the reference;
- onnx_api `auto` and torch_api `auto`: the services' embedders as they serve (their variant choice on this CPU);
- sentence-transformers with `backend="openvino"` and OpenVINO's defaults (optimum-intel exports the model), and
  with `backend="onnx"` (ONNX Runtime fp32), where optimum-intel / optimum-onnx are installed (`make peers`).

Speed: medians of interleaved rounds (each round times every path once on each input: one short sentence, 32
mixed sentences in one call, one 256-token text), so drift of a shared machine hits all paths alike. Fidelity:
every path embeds the retrieval corpus (parity texts first) in calls of 32; min and mean cosine on the parity
texts and top-10 neighbour agreement on the whole corpus against `onnx_optimized` (the gate's two figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from build_artifacts.corpus import parity_texts, retrieval_texts
from runtime.host import probe_cpu
from runtime.pooling import normalize_rows
from runtime.similarity import MIN_TOP10_AGREEMENT, PARITY_MIN_COSINE, fidelity_report

from .inputs import build_inputs

Embed = Callable[[list[str]], np.ndarray]
REFERENCE = "onnx_optimized"


def project_paths(artifacts: Path, threads: int) -> dict[str, tuple[Embed, str]]:
    """The services' embedders, loaded and warmed as the services do; name -> (embed, what runs)."""
    from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings
    from services.torch_api.embedder import TorchEmbedder, TorchSettings

    paths = {}
    for name, embedder in (
        (REFERENCE, OnnxEmbedder(OnnxSettings(artifacts_dir=artifacts, threads=threads, variant=REFERENCE))),
        ("onnx_api auto", OnnxEmbedder(OnnxSettings(artifacts_dir=artifacts, threads=threads))),
        ("torch_api auto", TorchEmbedder(TorchSettings(artifacts_dir=artifacts, threads=threads))),
    ):
        embedder.load()
        embedder.warmup()
        paths[name] = (lambda texts, e=embedder: normalize_rows(e.embed(texts)), f"{embedder.variant}")
    return paths


def peer_paths(model: str, threads: int) -> tuple[dict[str, tuple[Embed, str]], list[str]]:
    """sentence-transformers' backends with their defaults; those that cannot load here are listed, not fatal."""
    paths, missing = {}, []
    try:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
    except ImportError as exc:
        return paths, [f"sentence-transformers: {exc}"]
    for name, backend in (("sentence-transformers openvino (defaults)", "openvino"),
                          ("sentence-transformers onnx", "onnx")):
        try:
            model_obj = SentenceTransformer(model, backend=backend, device="cpu")
        except Exception as exc:  # a missing optional backend is reported in the results, not fatal
            missing.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        what = backend
        if backend == "openvino":
            compiled = model_obj[0].auto_model.request.get_compiled_model()
            what = f"openvino, {compiled.get_property('INFERENCE_PRECISION_HINT')}"
        paths[name] = (lambda texts, m=model_obj: m.encode(texts, batch_size=32, normalize_embeddings=True,
                                                            convert_to_numpy=True).astype(np.float32), what)
    return paths, missing


def embed_corpus(embed: Embed, texts: list[str], batch: int = 32) -> np.ndarray:
    return np.concatenate([embed(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the model folder (or hub id) the artifacts were built from")
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("results/peers"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    paths = project_paths(args.artifacts, args.threads)
    peers, missing = peer_paths(args.model, args.threads)
    paths.update(peers)
    for line in missing:
        print(f"not measured: {line}", file=sys.stderr)

    from runtime.manifest import Manifest
    from runtime.tokenization import TextTokenizer

    manifest = Manifest.load(args.artifacts)
    tokenizer = TextTokenizer(args.artifacts / manifest.tokenizer.path, manifest.model.max_seq_length)
    cases = {case.name: case.texts for case in build_inputs(tokenizer)}

    print(f"fidelity: {len(retrieval_texts())} texts per path ...", file=sys.stderr, flush=True)
    corpus, n_parity = retrieval_texts(), len(parity_texts())
    vectors = {name: embed_corpus(embed, corpus) for name, (embed, _) in paths.items()}
    fidelity = {name: fidelity_report(v, vectors[REFERENCE], n_parity, PARITY_MIN_COSINE, MIN_TOP10_AGREEMENT)
                for name, v in vectors.items()}

    print(f"speed: {args.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
    samples = {name: {case: [] for case in cases} for name in paths}
    for embed, _ in paths.values():  # one untimed call per input first
        for texts in cases.values():
            embed(texts)
    for _ in range(args.rounds):
        for case, texts in cases.items():
            for name, (embed, _) in paths.items():
                started = time.perf_counter()
                embed(texts)
                samples[name][case].append((time.perf_counter() - started) * 1000)
    medians = {name: {case: statistics.median(s) for case, s in by_case.items()} for name, by_case in samples.items()}

    host = probe_cpu()
    results = {"host": host.to_dict(), "threads": args.threads, "rounds": args.rounds, "model": args.model,
               "reference": REFERENCE, "not_measured": missing,
               "paths": {name: {"runs": what, "median_ms": medians[name], "fidelity": fidelity[name],
                                "speedup_vs_reference": {c: medians[REFERENCE][c] / medians[name][c] for c in cases}}
                         for name, (_, what) in paths.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, list(cases))
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


def markdown(results: dict, cases: list[str]) -> str:
    host = results["host"]
    lines = [f"CPU: {host['model']} ({', '.join(host['features'])}); {results['threads']} threads; "
             f"{results['model']}; medians of {results['rounds']} interleaved rounds; fidelity against "
             f"{results['reference']} (min cosine on the parity texts, top-10 agreement on the retrieval corpus)", "",
             "| path | runs | " + " | ".join(f"{c} ms (x ref)" for c in cases)
             + " | min cos | top-10 (worst 1%) | gate |",
             "|---" * (len(cases) + 5) + "|"]
    for name, row in results["paths"].items():
        f = row["fidelity"]
        cells = [f"{row['median_ms'][c]:.1f} ({row['speedup_vs_reference'][c]:.2f}x)" for c in cases]
        lines.append(f"| {name} | {row['runs']} | " + " | ".join(cells)
                     + f" | {f['min_cosine']:.4f} | {f['top10_agreement']:.3f} ({f['top10_agreement_worst1pct']:.2f})"
                     f" | {'passes' if f['passes_parity'] else 'fails'} |")
    for line in results["not_measured"]:
        lines.append(f"\nnot measured: {line}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
