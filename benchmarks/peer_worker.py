"""One sentence-transformers backend, served over stdin/stdout to benchmarks/peers.py from another venv.

    PEER_PYTHON benchmarks/peer_worker.py --model M --backend openvino|onnx|torch [--threads N]

Standalone on purpose (standard library, numpy, sentence_transformers and its torch only, never the project's
packages): it runs in the peer venv (make peers-env), whose optimum-intel needs an older transformers.

Protocol, one JSON object per line. After loading, the worker writes
`{"ready": true, "runs": ..., "versions": {...}, "python": ...}` (or `{"error": ...}` and exits 1). Then each
request `{"texts": [...], "vectors": true|false}` gets `{"ms": ..., "vectors": {"b64": ..., "shape": [n, d]}}`
(float32 little-endian, row-major; null when not asked), or `{"error": ...}`. `ms` is the time of
`encode(texts, batch_size=32, normalize_embeddings=True)` measured here, so the pipe is not counted. EOF ends it.
Logs go to stderr: fd 1 is pointed at stderr before anything loads, so a library's print cannot break a line.
"""

import sys
from pathlib import Path

# The script's folder is benchmarks/, whose modules (inputs, timing, run...) must not shadow the peer venv's.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]

import argparse  # noqa: E402
import base64  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

BACKENDS = ("openvino", "onnx", "torch")  # torch: what the project's own venv loads (the protocol test)
VERSIONED = (
    "sentence-transformers",
    "optimum-intel",
    "optimum",
    "optimum-onnx",
    "openvino",
    "onnxruntime",
    "transformers",
    "torch",
    "numpy",
)


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def load(model: str, backend: str, threads: int):
    """The model as a user of that backend gets it (its defaults), plus the thread count; returns (model, runs)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)  # tokenization-side tensors and pooling run in torch on every backend
    kwargs: dict = {}
    if backend == "openvino":
        # optimum-intel hands ov_config to core.compile_model (PERFORMANCE_HINT stays its default, LATENCY)
        kwargs["ov_config"] = {"INFERENCE_NUM_THREADS": str(threads)}
    elif backend == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            pass  # sentence-transformers then says what its ONNX backend needs
        else:
            options = ort.SessionOptions()  # ORT's default is one thread per physical core, not N
            options.intra_op_num_threads = threads
            kwargs["session_options"] = options
    st = SentenceTransformer(model, backend=backend, device="cpu", model_kwargs=kwargs or None)
    runs = backend
    if backend == "openvino":
        request = st[0].auto_model.request
        compiled = request.get_compiled_model() if hasattr(request, "get_compiled_model") else request
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: its short name, e.g. bf16
        runs = (
            f"openvino, {getattr(hint, 'get_type_name', lambda: hint)()}, "
            f"{compiled.get_property('INFERENCE_NUM_THREADS')} threads"
        )
    return st, runs


def serve(st, requests, out) -> None:
    import numpy as np

    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            texts = request["texts"]
            started = time.perf_counter()
            vectors = st.encode(texts, batch_size=32, normalize_embeddings=True)
            ms = (time.perf_counter() - started) * 1000
            reply: dict = {"ms": ms, "vectors": None}
            if request.get("vectors"):
                array = np.ascontiguousarray(vectors, dtype="<f4")
                reply["vectors"] = {
                    "b64": base64.b64encode(array.tobytes()).decode("ascii"),
                    "shape": list(array.shape),
                }
        except Exception as exc:  # a bad request is answered, the worker keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a local model folder (the worker runs offline)")
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    # The protocol gets the real stdout; everything else printed to fd 1 (Python or native) lands on stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    try:
        st, runs = load(args.model, args.backend, args.threads)
    except Exception as exc:  # reported to peers.py as "not measured", with the reason
        print(f"peer_worker: {args.backend} failed to load: {exc!r}", file=sys.stderr)
        out.write(json.dumps({"error": f"{type(exc).__name__}: {str(exc).strip()}"}) + "\n")
        out.flush()
        return 1
    print(f"peer_worker: {args.backend} ready: {runs}", file=sys.stderr, flush=True)
    out.write(
        json.dumps({"ready": True, "runs": runs, "versions": versions(), "python": platform.python_version()}) + "\n"
    )
    out.flush()
    serve(st, sys.stdin, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
