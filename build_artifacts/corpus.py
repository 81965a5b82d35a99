"""The fixed sets of real English texts: parity, retrieval and calibration (data/fidelity/README.md says
where each text comes from and under which license), and the 42 project sentences used by benchmarks and
load tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

_DATA = Path(__file__).parent / "data"
_SENTENCES_FILE = _DATA / "sentences.txt"
_FIDELITY = _DATA / "fidelity"


@cache
def english_sentences() -> tuple[str, ...]:
    """42 texts, from a few words to about 230 tokens (MPNet tokenizer)."""
    return read_texts(_SENTENCES_FILE)


def parity_sentences() -> list[str]:
    """The 42 project sentences: a quick check (docker e2e); the build's gate uses `parity_texts`."""
    return list(english_sentences())


@cache
def fidelity_records(name: str) -> tuple[dict, ...]:
    """Rows {"text", "domain", "source"} of data/fidelity/<name>.jsonl (parity, retrieval, calibration)."""
    lines = (_FIDELITY / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


def parity_texts() -> list[str]:
    """~400 texts over prose, questions, technical, legal, lists, code-ish text and texts longer than the
    model's limit (truncated): min cosine against fp32 is gated on these."""
    return [row["text"] for row in fidelity_records("parity")]


def retrieval_texts() -> list[str]:
    """The retrieval corpus (>= 1,000 texts): the parity texts first, then ~650 others; top-10 agreement
    and Spearman are measured over all of them."""
    return parity_texts() + [row["text"] for row in fidelity_records("retrieval")]


def calibration_sentences() -> tuple[str, ...]:
    """~320 texts for int8 calibration, disjoint from parity and retrieval texts (by source unit)."""
    return tuple(row["text"] for row in fidelity_records("calibration"))


def read_texts(path: Path) -> tuple[str, ...]:
    """One text per non-empty line (the format of data/*.txt and of a load test's corpus)."""
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
