"""Shape buckets: pad every model call to one of a few (batch, length) shapes (numpy only, no torch).

On a GPU, `torch.compile` with CUDA graphs records one graph per input shape, and an unseen shape costs a
recording (or, without dynamic shapes, a recompile: 14-144 s in benchmarks/reference/gpu-h200). Padding
the length to a small set (16, 32, ... 512, capped at the model's limit) and the batch to powers of two
bounds the shapes, so warm-up can run every one of them before the service reports healthy and no request
ever pays for a new graph. Padding costs some compute; on a GPU that is far cheaper than the launches it
saves at small batches (one sentence: 4.9-7.3 ms eager, ~1 ms with CUDA graphs on an H200).

Padded length: extra pad tokens with attention mask 0 (mean pooling ignores them). Padded batch rows: copies
of the first row (a real, well-formed input, so no row is all padding); their outputs are dropped.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

DEFAULT_SEQ_BUCKETS = (16, 32, 64, 128, 256, 512)


def parse_buckets(spec: str, max_tokens: int) -> tuple[int, ...]:
    """ "16,32,64" -> (16, 32, 64, max_tokens): sorted, capped at max_tokens, which is always the last bucket.

    "default" is DEFAULT_SEQ_BUCKETS; "none" or "" turns bucketing off (pad to the longest row, as on CPU).
    """
    spec = spec.strip().lower()
    if spec in ("", "none", "off"):
        return ()
    values = DEFAULT_SEQ_BUCKETS if spec == "default" else tuple(int(part) for part in spec.split(",") if part.strip())
    if any(v < 1 for v in values):
        raise ValueError(f"bucket lengths must be positive: {spec!r}")
    return tuple(sorted({v for v in values if v < max_tokens} | {max_tokens}))


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below max_batch_size, then max_batch_size: 1, 2, 4, ..., max_batch_size."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def bucket_for(value: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= value (the value itself above the largest: never truncate, never fail)."""
    index = bisect_left(buckets, value)
    return buckets[index] if index < len(buckets) else value


def warmup_shapes(
    seq_buckets: tuple[int, ...], batch_sizes: tuple[int, ...], max_batch_tokens: int
) -> list[tuple[int, int]]:
    """Every (batch, length) bucket the batcher can produce, smallest first.

    The batcher caps a call at `max_batch_tokens` padded tokens on the real widths (one row always fits),
    so a bucket is reachable when the smallest batch and width that round up to it fit that cap.
    """
    shapes = []
    for s_index, length in enumerate(seq_buckets):
        shortest = seq_buckets[s_index - 1] + 1 if s_index else 1
        for b_index, batch in enumerate(batch_sizes):
            fewest = batch_sizes[b_index - 1] + 1 if b_index else 1
            if fewest == 1 or fewest * shortest <= max_batch_tokens:
                shapes.append((batch, length))
    return shapes


def pad_to_bucket(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    pad_id: int,
    seq_buckets: tuple[int, ...],
    batch_sizes: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """[rows, width] -> [bucket(rows), bucket(width)]; the caller keeps the first `rows` outputs."""
    rows, width = input_ids.shape
    target_rows = bucket_for(rows, batch_sizes) if batch_sizes else rows
    target_width = bucket_for(width, seq_buckets) if seq_buckets else width
    if (target_rows, target_width) == (rows, width):
        return input_ids, attention_mask
    ids = np.full((target_rows, target_width), pad_id, dtype=input_ids.dtype)
    mask = np.zeros((target_rows, target_width), dtype=attention_mask.dtype)
    ids[:rows, :width], mask[:rows, :width] = input_ids, attention_mask
    ids[rows:, :width], mask[rows:, :width] = input_ids[0], attention_mask[0]
    return ids, mask
