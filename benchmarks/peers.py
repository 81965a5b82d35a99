"""What each service's `auto` variant gives against the peers a user would pick instead, side by side in one run.

    python -m benchmarks.peers --model models/all-mpnet-base-v2 --artifacts artifacts/all-mpnet-base-v2 \
        --threads 2 --out results/peers [--peer-python .venv-peers/bin/python]

Paths, each texts -> normalized float32 vectors, tokenization included:
- `onnx_optimized`: what onnx_api served before the variant table (ONNX Runtime fp32), the reference;
- onnx_api `auto` and torch_api `auto`: the services' embedders as they serve (their variant choice on this CPU);
- sentence-transformers with `backend="openvino"` and OpenVINO's defaults (optimum-intel exports the model), and
  with `backend="onnx"` (ONNX Runtime fp32). optimum-intel pins transformers < 5.6, so these run from a separate
  venv (`--peer-python`, `make peers` builds .venv-peers): one benchmarks/peer_worker.py subprocess per backend,
  timed inside the worker (the pipe is not counted). Without `--peer-python` they are tried in this process.

Speed: medians of interleaved rounds (each round times every path once on each input: one short sentence, 32
mixed sentences in one call, one 256-token text), so drift of a shared machine hits all paths alike. Fidelity:
every path embeds the retrieval corpus (parity texts first) in calls of 32; min and mean cosine on the parity
texts and top-10 neighbour agreement on the whole corpus against `onnx_optimized` (the gate's two figures).
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from build_artifacts.corpus import parity_texts, retrieval_texts
from runtime.host import probe_cpu
from runtime.markdown import table
from runtime.pooling import normalize_rows
from runtime.similarity import MIN_TOP10_AGREEMENT, PARITY_MIN_COSINE, fidelity_report

from .inputs import build_inputs
from .peer_worker import VERSIONED

# texts, whether the vectors are wanted -> (vectors or None, milliseconds): in-process paths are timed here with
# perf_counter, worker paths report the time of encode() inside the worker.
Embed = Callable[[list[str], bool], tuple[np.ndarray | None, float]]
REFERENCE = "onnx_optimized"
WORKER = Path(__file__).with_name("peer_worker.py")
# What a sentence-transformers row depends on, recorded with it: the names the worker reports.
ST_PACKAGES = VERSIONED
ST_BACKENDS = (("sentence-transformers openvino (defaults)", "openvino"), ("sentence-transformers onnx", "onnx"))


@dataclass
class Contender:
    embed: Embed
    runs: str  # what runs, as the path reports it
    environment: dict | None = None  # sentence-transformers paths: where they ran, and the package versions
    close: Callable[[], None] = field(default=lambda: None)


def timed(fn: Callable[[list[str]], np.ndarray]) -> Embed:
    def embed(texts: list[str], vectors: bool = True) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        out = fn(texts)
        return out, (time.perf_counter() - started) * 1000

    return embed


def project_paths(artifacts: Path, threads: int) -> dict[str, Contender]:
    """The services' embedders, loaded and warmed as the services do."""
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
        paths[name] = Contender(timed(lambda texts, e=embedder: normalize_rows(e.embed(texts))), f"{embedder.variant}")
    return paths


class PeerError(RuntimeError):
    pass


class PeerWorker:
    """One benchmarks/peer_worker.py subprocess: a sentence-transformers backend loaded in the peer venv."""

    def __init__(self, python: str, model: str, backend: str, threads: int):
        command = [python, str(WORKER), "--model", model, "--backend", backend, "--threads", str(threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)  # the peer venv resolves its own packages, never this project's
        # stderr is inherited: the worker's logs show with ours, and its stdout carries only the protocol.
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            hello = self._reply()
            if "error" in hello:
                raise PeerError(hello["error"])
        except Exception:
            self.close()
            raise
        self.runs: str = hello["runs"]
        self.environment = {
            "python_executable": python,
            "python": hello.get("python"),
            "packages": hello.get("versions", {}),
        }

    def _reply(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise PeerError(f"the worker exited (rc {self.process.wait()}) without a reply; its log is above")
        return json.loads(line)  # anything else on its stdout is a broken worker: fail loudly

    def embed(self, texts: list[str], vectors: bool = True) -> tuple[np.ndarray | None, float]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"texts": texts, "vectors": vectors}) + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise PeerError(reply["error"])
        array = None
        if reply["vectors"] is not None:
            data = base64.b64decode(reply["vectors"]["b64"])
            array = np.frombuffer(data, dtype="<f4").reshape(reply["vectors"]["shape"]).astype(np.float32)
        return array, float(reply["ms"])

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        if self.process.poll() is None:
            self.process.stdin.close()  # EOF: the worker returns
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


def first_line(message: str, limit: int = 240) -> str:
    lines = message.strip().splitlines()
    return lines[0][:limit] if lines else ""


def local_versions() -> dict[str, str]:
    found = {}
    for name in ST_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def worker_paths(python: str, model: str, threads: int) -> tuple[dict[str, Contender], list[str]]:
    """sentence-transformers' backends in the peer venv, one worker each; one that cannot load is listed."""
    model = str(Path(model).resolve()) if Path(model).exists() else model  # the worker may resolve paths anew
    paths, missing = {}, []
    for name, backend in ST_BACKENDS:
        print(f"peer worker: {name} ...", file=sys.stderr, flush=True)
        try:
            worker = PeerWorker(python, model, backend, threads)
        except (PeerError, OSError, ValueError) as exc:  # ValueError: a reply that is not JSON
            missing.append(f"{name} ({python}): {first_line(str(exc))}")
            continue
        paths[name] = Contender(worker.embed, worker.runs, worker.environment, worker.close)
    return paths, missing


def in_process_paths(model: str, threads: int) -> tuple[dict[str, Contender], list[str]]:
    """sentence-transformers' backends with their defaults in this process; those that cannot load are listed."""
    paths, missing = {}, []
    try:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
    except ImportError as exc:
        return paths, [f"sentence-transformers: {exc}"]
    environment = {
        "python_executable": sys.executable,
        "python": platform.python_version(),
        "packages": local_versions(),
    }
    for name, backend in ST_BACKENDS:
        try:
            model_obj = SentenceTransformer(model, backend=backend, device="cpu")
        except Exception as exc:  # a missing optional backend is reported in the results, not fatal
            missing.append(
                f"{name}: {type(exc).__name__}: {first_line(str(exc), 160)} "
                "(--peer-python runs it from a separate venv: make peers)"
            )
            continue
        what = backend
        if backend == "openvino":
            request = model_obj[0].auto_model.request
            compiled = request.get_compiled_model() if hasattr(request, "get_compiled_model") else request
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            what = f"openvino, {getattr(hint, 'get_type_name', lambda: hint)()}"
        encode = timed(
            lambda texts, m=model_obj: m.encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            ).astype(np.float32)
        )
        paths[name] = Contender(encode, what, environment)
    return paths, missing


def embed_corpus(embed: Embed, texts: list[str], batch: int = 32) -> np.ndarray:
    parts = []
    for i in range(0, len(texts), batch):
        vectors, _ = embed(texts[i : i + batch], True)
        assert vectors is not None
        parts.append(vectors)
    return np.concatenate(parts)


def measure_fidelity(paths: dict[str, Contender], corpus: list[str], n_parity: int) -> dict[str, dict]:
    vectors = {name: embed_corpus(path.embed, corpus) for name, path in paths.items()}
    return {
        name: fidelity_report(v, vectors[REFERENCE], n_parity, PARITY_MIN_COSINE, MIN_TOP10_AGREEMENT)
        for name, v in vectors.items()
    }


# Pause before each timed call: the in-process paths share one process, and an engine's threads keep spinning for
# a while after a call returns (ONNX Runtime's intra-op pool, OpenMP). Measured on the Zen 4 reference:
# openvino_bf16, one sentence, 10.6 ms alone, 17.7 ms right after an onnx_optimized call, 11.9 ms 0.3 s after it.
# A service owns its process, so each path is timed from a quiet start.
SETTLE_S = 0.3


def measure_speed(paths: dict[str, Contender], cases: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    """Median ms per path and input over interleaved rounds; each path times itself (see Embed)."""
    samples: dict[str, dict[str, list[float]]] = {name: {case: [] for case in cases} for name in paths}
    for path in paths.values():  # one untimed call per input first
        for texts in cases.values():
            path.embed(texts, False)
    for _ in range(rounds):
        for case, texts in cases.items():
            for name, path in paths.items():
                time.sleep(SETTLE_S)
                _, ms = path.embed(texts, False)
                samples[name][case].append(ms)
    return {name: {case: statistics.median(s) for case, s in by_case.items()} for name, by_case in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the model folder (or hub id) the artifacts were built from")
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("results/peers"))
    parser.add_argument(
        "--peer-python",
        default=os.environ.get("PEER_PYTHON") or None,
        help="the python of a venv with sentence-transformers[openvino] (default: $PEER_PYTHON); "
        "sentence-transformers' backends then run there, one worker each",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    paths = project_paths(args.artifacts, args.threads)
    if args.peer_python:
        peers, missing = worker_paths(args.peer_python, args.model, args.threads)
    else:
        peers, missing = in_process_paths(args.model, args.threads)
    paths.update(peers)
    for line in missing:
        print(f"not measured: {line}", file=sys.stderr)
    try:
        from runtime.manifest import Manifest
        from runtime.tokenization import TextTokenizer

        manifest = Manifest.load(args.artifacts)
        tokenizer = TextTokenizer(args.artifacts / manifest.tokenizer.path, manifest.model.max_seq_length)
        cases = {case.name: case.texts for case in build_inputs(tokenizer)}

        print(f"fidelity: {len(retrieval_texts())} texts per path ...", file=sys.stderr, flush=True)
        fidelity = measure_fidelity(paths, retrieval_texts(), len(parity_texts()))
        print(f"speed: {args.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
        medians = measure_speed(paths, cases, args.rounds)
    finally:
        for path in paths.values():
            path.close()

    host = probe_cpu()
    results = {
        "host": host.to_dict(),
        "threads": args.threads,
        "rounds": args.rounds,
        "model": args.model,
        "reference": REFERENCE,
        "peer_python": args.peer_python,
        "not_measured": missing,
        "paths": {
            name: {
                "runs": path.runs,
                "median_ms": medians[name],
                "fidelity": fidelity[name],
                "speedup_vs_reference": {c: medians[REFERENCE][c] / medians[name][c] for c in cases},
                **({"environment": path.environment} if path.environment else {}),
            }
            for name, path in paths.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    report = markdown(results, list(cases))
    (args.out / "results.md").write_text(report)
    print(report)
    return 0


def environment_line(name: str, environment: dict) -> str:
    packages = environment.get("packages", {})
    shown = ", ".join(f"{p} {packages[p]}" for p in ST_PACKAGES if p in packages and p != "numpy")
    return f"{name}: {environment['python_executable']} (Python {environment['python']}): {shown}"


def markdown(results: dict, cases: list[str]) -> str:
    host = results["host"]
    rows = []
    for name, row in results["paths"].items():
        f = row["fidelity"]
        rows.append(
            [
                name,
                row["runs"],
                *(f"{row['median_ms'][c]:.1f} ({row['speedup_vs_reference'][c]:.2f}x)" for c in cases),
                f"{f['min_cosine']:.4f}",
                f"{f['top10_agreement']:.3f} ({f['top10_agreement_worst1pct']:.2f})",
                "passes" if f["passes_parity"] else "fails",
            ]
        )
    lines = [
        f"CPU: {host['model']} ({', '.join(host['features'])}); {results['threads']} threads; "
        f"{results['model']}; medians of {results['rounds']} interleaved rounds; fidelity against "
        f"{results['reference']} (min cosine on the parity texts, top-10 agreement on the retrieval corpus)",
        "",
        table(["path", "runs", *(f"{c} ms (x ref)" for c in cases), "min cos", "top-10 (worst 1%)", "gate"], rows),
    ]
    environments = [
        environment_line(name, row["environment"]) for name, row in results["paths"].items() if row.get("environment")
    ]
    if environments:
        where = "timed inside each worker, the pipe not counted" if results.get("peer_python") else "in process"
        lines += ["", f"sentence-transformers environments ({where}):", "", *(f"- {e}" for e in environments)]
    for line in results["not_measured"]:
        lines.append(f"\nnot measured: {line}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
