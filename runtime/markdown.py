"""Markdown tables for the reports (benchmarks, load test, Ray and bulk measurements): one renderer, so every
report's tables read the same and a change of format happens in one place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _line(cells: Iterable[object]) -> str:
    # An empty cell stays "| |", as the hand-written tables had it.
    return "|" + "".join(f" {cell} |" if str(cell) else " |" for cell in cells)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table: the header line, the separator, one line per row (cells as str)."""
    return "\n".join([_line(headers), "|" + "---|" * len(headers), *(_line(row) for row in rows)])


__all__ = ["table"]
