"""Start an embedding service as a real uvicorn process on 127.0.0.1 and wait until /health is 200."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.common.probe import is_healthy

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(
    module: str,
    artifacts,
    port: int | None = None,
    threads: int | None = 1,
    env: dict | None = None,
    args: tuple[str, ...] = (),
    timeout_s: float = 600,
    log_file=None,
):
    """Yield the base URL of `python -m <module>` once it is warmed up; stop it (by pid) on exit.
    threads None: the service's own default. log_file: an open file for its output (else a pipe)."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        module,
        "--artifacts",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    output = log_file if log_file is not None else subprocess.PIPE
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not is_healthy(base):
            if process.poll() is not None:
                tail = process.stdout.read() if process.stdout else Path(log_file.name).read_text()
                tail = tail[-3000:]
                raise RuntimeError(f"{module} exited with {process.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} not ready after {timeout_s} s")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
