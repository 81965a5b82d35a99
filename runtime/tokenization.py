"""Tokenization with the `tokenizers` library only (no torch, no transformers), shared by every runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class EncodedBatch:
    input_ids: np.ndarray  # int64 [batch, seq]
    attention_mask: np.ndarray  # int64 [batch, seq]
    token_counts: list[int]  # real tokens per text, after truncation


class TextTokenizer:
    """Wraps tokenizer.json; pads to the longest text of the batch and truncates at max_length."""

    def __init__(self, tokenizer_file: Path, max_length: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # tokenizer.json files often carry a fixed padding/truncation (e.g. 128); we decide per batch.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_length = max_length
        self.pad_id = self._find_pad_id()

    def _find_pad_id(self) -> int:
        for token in ("<pad>", "[PAD]", "<PAD>"):
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(row) for row in self.token_ids(texts, truncate=False)]

    def encode(self, texts: list[str], max_length: int | None = None) -> EncodedBatch:
        return self.pad(self.token_ids(texts, max_length))

    def token_ids(self, texts: list[str], max_length: int | None = None, truncate: bool = True) -> list[list[int]]:
        """Token ids per text, not padded; truncated at max_length unless truncate=False."""
        rows = [e.ids for e in self._tokenizer.encode_batch(texts)]
        return [self.truncate(row, max_length) for row in rows] if truncate else rows

    def truncate(self, ids: list[int], max_length: int | None = None) -> list[int]:
        return self._truncate(ids, max_length or self.max_length)

    def pad(self, ids: list[list[int]]) -> EncodedBatch:
        """Pad to the longest row of this batch."""
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, token_ids in enumerate(ids):
            input_ids[row, : len(token_ids)] = token_ids
            attention_mask[row, : len(token_ids)] = 1
        return EncodedBatch(input_ids, attention_mask, [len(row) for row in ids])

    @staticmethod
    def _truncate(ids: list[int], limit: int) -> list[int]:
        if len(ids) <= limit:
            return ids
        # Keep the closing special token (</s> or [SEP]) so the model sees a well-formed sequence.
        return ids[: limit - 1] + [ids[-1]]
