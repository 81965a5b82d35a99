"""make run: build artifacts if missing, start both services and the Locust web UI; Ctrl-C stops them all.

python scripts/run_stack.py --model M [--artifacts DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from build_artifacts.model_loading import DEFAULT_MODEL
from services.catalog import SERVICES
from services.common.probe import wait_until_healthy

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL))
    parser.add_argument("--artifacts", type=Path, default=None, help="default: artifacts/<model name>")
    parser.add_argument("--threads", type=int, default=None, help="model threads per service (default: all cores)")
    for row in SERVICES.values():
        parser.add_argument(f"--{row.short}-port", type=int, default=row.port)
    parser.add_argument("--locust-port", type=int, default=8089)
    args = parser.parse_args()
    artifacts = args.artifacts or REPO / "artifacts" / Path(args.model.rstrip("/")).name
    if not (artifacts / "manifest.json").is_file():
        print(f"building artifacts for {args.model} into {artifacts} ...", flush=True)
        command = [sys.executable, "-m", "build_artifacts", "--model", args.model, "--out", str(artifacts)]
        built = subprocess.run(command, cwd=REPO)
        if built.returncode != 0:
            return built.returncode
    threads = ["--threads", str(args.threads)] if args.threads else []
    ports = {name: getattr(args, f"{row.short}_port") for name, row in SERVICES.items()}
    urls = {name: row.local_url(ports[name]) for name, row in SERVICES.items()}
    commands = {
        name: [sys.executable, "-m", row.module, "--artifacts", str(artifacts), "--port", str(ports[name]), *threads]
        for name, row in SERVICES.items()
    }
    commands["locust"] = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtest" / "locustfile.py"),
        "--web-host",
        "127.0.0.1",
        "--web-port",
        str(args.locust_port),
    ]
    env = {**os.environ, **{row.url_env: urls[name] for name, row in SERVICES.items()}}
    processes = {name: subprocess.Popen(cmd, cwd=REPO, env=env) for name, cmd in commands.items()}
    try:
        print("waiting for warm-up (torch.compile can take a minute or two) ...", flush=True)
        try:
            wait_until_healthy(
                urls,
                timeout_s=3600,
                processes=processes,
                on_ready=lambda name, url: print(
                    f"{name} ready: {url}  (POST /embed, POST /v1/embeddings, /health, /info, /metrics)", flush=True
                ),
            )
        except (RuntimeError, TimeoutError) as exc:
            print(f"{exc}; stopping the rest", file=sys.stderr)
            return 1
        users = ", ".join(f"{row.locust_user} -> {urls[name]}" for name, row in SERVICES.items())
        print(f"Locust web UI: http://127.0.0.1:{args.locust_port}  ({users})")
        print("Ctrl-C stops everything.", flush=True)
        while all(p.poll() is None for p in processes.values()):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
