"""One part, start to end, in a worker: read its rows, sort out the bad ones, embed the rest, write it.

`PartWorker` is the callable class Ray Data runs in its actor pool (`map_batches(PartWorker, ...)`): the
constructor loads the model once per actor, each call takes part descriptors and returns one small
statistics row per part. The rows themselves never travel through Ray: a worker reads its part's byte
range or row range from the input and writes the finished part into the output folder (on a cluster,
both paths must be on storage that every node sees at the same path).

A bad row never stops the job; it goes to the rejects with one of these reasons:
  empty           the text is empty or only whitespace
  not_text        the value is not a string (a number, a list, null, ...)
  too_long        more tokens than the model takes, with --no-truncate
  missing_column  the record has no text column (jsonl object without the key, short csv record)
  invalid_json    a jsonl line that is not JSON;  not_an_object: a JSON value that is not an object
  invalid_utf8    a txt or jsonl line that is not UTF-8
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoder import Encoder
from .inputs import Part, RawRow, read_part
from .output import REJECTS_DIR, write_atomic_bytes, write_table_atomic

PREVIEW_CHARS = 200


@dataclass(frozen=True)
class WorkerConfig:
    artifacts: str
    variant: str
    threads: int
    batch_size: int
    text_column: str
    id_column: str
    truncate: bool
    keep_text: bool
    output: str


def _preview(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


def _row_id(part: Part, row: RawRow) -> str:
    return str(row.id) if row.id is not None else f"{part.source}:{row.row}"


def schema(dimension: int, keep_text: bool, metadata: dict):
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False)]
    if keep_text:
        fields.append(pa.field("text", pa.string(), nullable=False))
    fields += [
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dimension), nullable=False),
    ]
    return pa.schema(
        fields,
        metadata={"bulk_embed": json.dumps(metadata), "model": metadata["model"], "variant": metadata["variant"]},
    )


def process_part(encoder: Encoder, config: WorkerConfig, part: Part) -> dict:
    """Embed one part and write it (rejects first, then the part file: its existence means done)."""
    import pyarrow as pa

    started = time.perf_counter()
    raw = read_part(part, config.text_column, config.id_column)
    rejects: list[dict] = []
    keep: list[tuple[RawRow, str]] = []

    def reject(row: RawRow, reason: str, detail: str = "") -> None:
        rejects.append(
            {
                "part": part.name,
                "source": part.source,
                "row": row.row,
                "id": _row_id(part, row),
                "reason": reason,
                "detail": detail,
                "value": _preview(row.value),
            }
        )

    for row in raw:
        if row.error:
            reject(row, row.error)
        elif not isinstance(row.value, str):
            reject(row, "not_text", type(row.value).__name__)
        elif not row.value.strip():
            reject(row, "empty")
        else:
            keep.append((row, row.value))

    ids = encoder.token_ids([text for _, text in keep])
    rows, token_ids = [], []
    for (row, text), row_ids in zip(keep, ids, strict=True):
        if len(row_ids) > encoder.max_tokens:
            if not config.truncate:
                reject(row, "too_long", f"{len(row_ids)} tokens > {encoder.max_tokens}")
                continue
            row_ids = encoder.truncate(row_ids)
        rows.append((row, text))
        token_ids.append(row_ids)

    vectors = (
        encoder.embed_ids(token_ids, config.batch_size)
        if token_ids
        else np.empty((0, encoder.dimension), dtype=np.float32)
    )
    out = Path(config.output)
    if rejects:
        rejects.sort(key=lambda r: r["row"])
        write_atomic_bytes(
            out / REJECTS_DIR / f"{part.name}.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects).encode("utf-8"),
        )
    columns = {"id": pa.array([_row_id(part, row) for row, _ in rows], pa.string())}
    if config.keep_text:
        columns["text"] = pa.array([text for _, text in rows], pa.string())
    columns["n_tokens"] = pa.array([len(r) for r in token_ids], pa.int32())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1), pa.float32()), encoder.dimension
    )
    table = pa.Table.from_pydict(columns, schema=schema(encoder.dimension, config.keep_text, encoder.details()))
    write_table_atomic(out / f"{part.name}.parquet", table)
    return {
        "part": part.name,
        "rows": len(raw),
        "embedded": len(rows),
        "rejects": len(rejects),
        "reasons": json.dumps(Counter(r["reason"] for r in rejects)),
        "tokens": sum(len(r) for r in token_ids),
        "seconds": time.perf_counter() - started,
    }


class PartWorker:
    """Ray Data actor: the model loaded once (constructor), then one part per call."""

    def __init__(self, config: dict):
        self.config = WorkerConfig(**config)
        self.encoder = Encoder(Path(self.config.artifacts), self.config.variant, self.config.threads)

    def __call__(self, batch: dict) -> dict:
        results = []
        for k in range(len(batch["file_index"])):
            descriptor = {key: values[k] for key, values in batch.items()}
            results.append(process_part(self.encoder, self.config, Part.from_dict(descriptor)))
        return {key: np.array([r[key] for r in results]) for key in results[0]}
