"""Start an embedding service as a real uvicorn process on 127.0.0.1 and wait until /health is 200."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_service(module: str, artifacts, port: int | None = None, threads: int = 1, env: dict | None = None,
                    args: tuple[str, ...] = (), timeout_s: float = 600, log_file=None):
    """Yield the base URL of `python -m <module>` once it is warmed up; stop it (by pid) on exit."""
    port = port or free_port()
    command = [sys.executable, "-m", module, "--artifacts", str(artifacts), "--host", "127.0.0.1",
               "--port", str(port), "--threads", str(threads), "--log-level", "warning", *args]
    output = log_file if log_file is not None else subprocess.PIPE
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=output,
                               stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not is_healthy(base):
            if process.poll() is not None:
                tail = process.stdout.read()[-3000:] if process.stdout else "(see log)"
                raise RuntimeError(f"{module} exited with {process.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} not ready after {timeout_s} s")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
