"""The demo corpus: paragraphs of the Python standard library's docstrings (PSF license), as JSON Lines.

    python -m bulk_embed.corpus [--out bulk_embed/data/python_docstrings.jsonl] [--limit 6000]

Real English technical prose, a few words to a few hundred tokens, that the project may redistribute
(the Python Software Foundation License; its text is `data/LICENSE-Python.txt`). Every docstring of
every module, class and function of the running interpreter's standard library (tests, demos and
vendored tools left out) is split into paragraphs; a paragraph of at least 6 words that reads as prose
(no doctest, no `::` literal block) is one text, whitespace collapsed, duplicates dropped. `--limit`
keeps an evenly spread sample (by the sha1 of each id), in library order. The committed file was made
with CPython 3.11.7.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

DATA = Path(__file__).parent / "data"
DEFAULT_OUT = DATA / "python_docstrings.jsonl"
DEFAULT_LIMIT = 6000
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "ensurepip", "turtledemo"}
_PROSE = re.compile(r"[a-z]{3,} [a-z]{2,} [a-z]{2,}")


def stdlib_root() -> Path:
    return Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"


def docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of the module and every class and function in it."""

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    yield name, doc
                yield from visit(child, name)
            elif not isinstance(child, ast.expr):
                yield from visit(child, prefix)  # if/try blocks at module or class level

    doc = ast.get_docstring(tree)
    if doc:
        yield module, doc
    yield from visit(tree, module)


def paragraphs(doc: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n", doc):
        if ">>>" in para or "::" in para:
            continue
        text = " ".join(para.split())
        if len(text.split()) >= 6 and _PROSE.search(text):
            yield text


def collect(root: Path) -> list[dict]:
    records, seen_texts, seen_ids = [], set(), set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for name, doc in docstrings(tree, module):
            for k, text in enumerate(paragraphs(doc)):
                if text in seen_texts:
                    continue
                record_id = f"{name}#{k}"
                while record_id in seen_ids:  # a name defined twice (if/else branches)
                    record_id += "'"
                seen_texts.add(text)
                seen_ids.add(record_id)
                records.append({"id": record_id, "text": text, "module": module})
    return records


def sample(records: list[dict], limit: int) -> list[dict]:
    """An evenly spread, deterministic subset of `limit` records, in their original order."""
    if limit >= len(records):
        return records
    ranked = sorted(range(len(records)), key=lambda i: hashlib.sha1(records[i]["id"].encode()).hexdigest())
    return [records[i] for i in sorted(ranked[:limit])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bulk_embed.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="texts to keep (0: all)")
    args = parser.parse_args(argv)
    records = collect(stdlib_root())
    kept = sample(records, args.limit or len(records))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in kept:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    print(
        f"{len(kept)} texts (of {len(records)} paragraphs) from Python {sys.version.split()[0]}'s "
        f"standard library -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
