"""Client-side checks of a running service (stdlib only): health, waiting for health, Prometheus values.

One place for what the container health checks (`python -m services.common.probe --port 8002`), `make run`,
`make docker-e2e`, the load test and the tests each need.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request


def is_healthy(base_url: str, timeout_s: float = 2) -> bool:
    """True when GET /health answers 200 (the model is loaded and warmed up)."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(
    urls: dict[str, str], timeout_s: float, interval_s: float = 0.5, processes: dict | None = None, on_ready=None
) -> None:
    """Poll every named base URL until each is healthy.

    Raises TimeoutError after timeout_s, or RuntimeError when one of `processes` (name -> Popen) exits first.
    `on_ready(name, url)` is called once per service as it becomes healthy.
    """
    deadline = time.monotonic() + timeout_s
    pending = dict(urls)
    while pending:
        for name, url in list(pending.items()):
            if is_healthy(url):
                del pending[name]
                if on_ready:
                    on_ready(name, url)
        for name, process in (processes or {}).items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not healthy after {timeout_s:g} s: {', '.join(pending)}")
        time.sleep(interval_s)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments skipped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                continue
    return values


def metric_value(base_url: str, name: str, default: float = 0.0) -> float:
    """One sample of GET /metrics (e.g. 'embedding_requests_total' or 'x{label="y"}'); `default` if absent."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode()).get(name, default)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the service answers /health with 200: the container HEALTHCHECK and compose's healthcheck."""
    parser = argparse.ArgumentParser(prog="python -m services.common.probe", description=main.__doc__)
    parser.add_argument("--url", default=None, help="base URL (default: http://127.0.0.1:PORT)")
    parser.add_argument("--port", default=None, help="port; default: $PORT_ENV (see --port-env), else 8000")
    parser.add_argument(
        "--port-env",
        default="ONNX_API_PORT,TORCH_API_PORT",
        help="comma list of environment variables to read the port from",
    )
    parser.add_argument("--timeout-s", type=float, default=4)
    args = parser.parse_args(argv)
    port = args.port or next((os.environ[v] for v in args.port_env.split(",") if os.environ.get(v)), "8000")
    return 0 if is_healthy(args.url or f"http://127.0.0.1:{port}", args.timeout_s) else 1


if __name__ == "__main__":
    sys.exit(main())
