"""The benchmark's inputs: one short sentence, a batch of 32 mixed-length sentences, one 256-token text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from build_artifacts.corpus import english_sentences

SHORT_TEXT = "Can you recommend a good book about the history of mathematics?"
LONG_TEXT_TOKENS = 256


@dataclass
class InputCase:
    name: str
    texts: list[str]
    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def build_inputs(tokenizer) -> list[InputCase]:
    corpus = english_sentences()
    counts = tokenizer.count_tokens(list(corpus))
    sentences = [t for t, n in zip(corpus, counts, strict=True) if n < 40][:32]  # sentences, not paragraphs
    paragraphs = sorted(corpus, key=lambda t: -len(t))[:2]
    long_ids = tokenizer.encode([" ".join(paragraphs)], max_length=min(LONG_TEXT_TOKENS, tokenizer.max_length))
    cases = []
    for name, texts, batch in (
        ("b1_short", [SHORT_TEXT], tokenizer.encode([SHORT_TEXT])),
        ("b32_mixed", sentences, tokenizer.encode(sentences)),
        ("b1_long", [" ".join(paragraphs)], long_ids),
    ):
        cases.append(InputCase(name, texts, batch.input_ids, batch.attention_mask))
    return cases
