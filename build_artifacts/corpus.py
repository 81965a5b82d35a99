"""The fixed set of real English texts used for parity checks, benchmarks and load tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_SENTENCES_FILE = Path(__file__).parent / "data" / "sentences.txt"
_CALIBRATION_FILE = Path(__file__).parent / "data" / "calibration.txt"


@cache
def english_sentences() -> tuple[str, ...]:
    """42 texts, from a few words to about 230 tokens (MPNet tokenizer)."""
    return read_texts(_SENTENCES_FILE)


def parity_sentences() -> list[str]:
    """All of them: parity must hold on short and long inputs alike."""
    return list(english_sentences())


@cache
def calibration_sentences() -> tuple[str, ...]:
    """23 other texts (a few words to ~200 tokens) for int8 calibration: never the parity set."""
    return read_texts(_CALIBRATION_FILE)


def read_texts(path: Path) -> tuple[str, ...]:
    """One text per non-empty line (the format of data/*.txt and of a load test's corpus)."""
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
