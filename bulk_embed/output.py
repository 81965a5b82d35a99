"""The output folder: Parquet parts written atomically, rejects, the job record that makes resume safe.

    OUT/part-00000-00000.parquet ...   id, text (unless --no-text), n_tokens, embedding (fixed-size list<float32>)
    OUT/_job.json                      inputs (size, mtime) and the options that shape the output
    OUT/_rejects/part-....jsonl        rejected rows of one part (only parts that had some)
    OUT/_rejects.jsonl                 all rejected rows, merged when a run ends
    OUT/_summary.json                  the last run's figures

A part is written to a hidden temp file beside its final name and renamed into place (atomic on one
filesystem), its rejects first: a part file exists only complete, and its existence is the record that
the part is done. So a killed job loses at most the parts in flight, and a resumed one writes every row
exactly once. Names starting with `_` or `.` are skipped by Parquet readers (pyarrow, pandas, Spark,
Ray), so `pandas.read_parquet(OUT)` reads the embeddings only.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
REJECTS_DIR = "_rejects"
REJECTS_FILE = "_rejects.jsonl"
PART_GLOB = "part-*.parquet"


class OutputError(ValueError):
    """The output folder cannot be used as asked (one line, exit code 2)."""


def _fsync_replace(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def temp_path(final: Path) -> Path:
    """Unique per writer: a retried part never clobbers another attempt's temp file."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic_bytes(final: Path, data: bytes) -> None:
    tmp = temp_path(final)
    tmp.write_bytes(data)
    _fsync_replace(tmp, final)


def write_table_atomic(final: Path, table) -> None:
    import pyarrow.parquet as pq

    tmp = temp_path(final)
    pq.write_table(table, tmp, compression="zstd")
    _fsync_replace(tmp, final)


def write_json_atomic(final: Path, payload: dict) -> None:
    write_atomic_bytes(final, (json.dumps(payload, indent=2) + "\n").encode())


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def prepare(out_dir: Path, job: dict, resume: bool) -> bool:
    """Create the output folder (or check it can be resumed); True when an earlier run is continued."""
    job_file = out_dir / JOB_FILE
    if job_file.is_file():
        if not resume:
            raise OutputError(
                f"--output {out_dir} already holds a bulk_embed job: pass --resume to continue it, "
                f"or choose another folder"
            )
        try:
            old = json.loads(job_file.read_text())
        except ValueError:
            raise OutputError(f"--output {out_dir}: {JOB_FILE} is not valid JSON; choose another folder") from None
        changed = _differences(old, job)
        if changed:
            raise OutputError(
                f"--output {out_dir} was started with other inputs or options ({', '.join(changed)} "
                f"differ): --resume needs the same ones, or choose another folder"
            )
        return True
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(
            f"--output {out_dir} exists and is not a bulk_embed output folder: choose a new or empty folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REJECTS_DIR).mkdir(exist_ok=True)
    write_json_atomic(job_file, job)
    return False


def done_parts(out_dir: Path) -> set[str]:
    return {p.name.removesuffix(".parquet") for p in out_dir.glob(PART_GLOB)}


def remove_temporaries(out_dir: Path) -> int:
    """Temp files a killed run left (hidden, never read); returns how many."""
    stale = [p for d in (out_dir, out_dir / REJECTS_DIR) for p in d.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def merge_rejects(out_dir: Path) -> int:
    """_rejects.jsonl from the per-part pieces of the parts that are done, in part order; returns the line count."""
    done = done_parts(out_dir)
    lines: list[str] = []
    for piece in sorted((out_dir / REJECTS_DIR).glob("part-*.jsonl")):
        if piece.stem in done:
            lines += piece.read_text(encoding="utf-8").splitlines()
    write_atomic_bytes(out_dir / REJECTS_FILE, "".join(line + "\n" for line in lines).encode("utf-8"))
    return len(lines)


def count_rows(out_dir: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in out_dir.glob(PART_GLOB))
