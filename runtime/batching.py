"""Length grouping: the one function that cuts a set of texts into model calls (the services' batcher, in-process
embedding, bulk_embed, the gate's service-like batches and the build's speed figures all use it)."""

from __future__ import annotations


def padding_efficient_groups(
    lengths: list[int], max_padding: float | None = 0.3, overhead_tokens: int = 16, max_size: int | None = None
) -> list[list[int]]:
    """Indices sorted by length and cut into groups so that padded tokens exceed real ones by at most
    `max_padding` (None: no such cut, plain length-sorted chunks), with at most `max_size` rows a group.

    `overhead_tokens` stands for the fixed cost of one model call, so tiny groups are not split off.
    One 230-token paragraph among 15 short sentences would otherwise make every row cost 230 tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        length = lengths[index]
        padded = (len(current) + 1) * length
        full = max_size is not None and len(current) >= max_size
        too_padded = max_padding is not None and padded > (1 + max_padding) * (real + length) + overhead_tokens
        if current and (full or too_padded):
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += length
    if current:
        groups.append(current)
    return groups
