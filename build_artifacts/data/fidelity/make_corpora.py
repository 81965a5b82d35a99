"""Regenerate parity.jsonl, retrieval.jsonl and calibration.jsonl (run once; the outputs are committed).

    python build_artifacts/data/fidelity/make_corpora.py [--stdlib DIR] [--tokenizer tokenizer.json]

Sources (see README.md for licenses): texts written for this project (sources/*.txt and
../sentences.txt, ../calibration.txt), paragraphs of CPython 3.11 standard-library docstrings and of
`pydoc_data/topics.py` (the language reference as pydoc shows it), and license texts (sources/LICENSE-*).
Each source unit (a module, a pydoc topic, a license file, a written file's line) is assigned to exactly one
of the three sets by a hash of its name, so no calibration text shares a docstring or topic with a parity
text. Deterministic: the same inputs give the same files.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import re
import sysconfig
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE.parent
#: texts per domain in each set (parity, retrieval extra, calibration)
TARGETS = {
    "prose": (60, 60, 40),
    "questions": (60, 40, 30),
    "technical": (110, 330, 140),
    "legal": (50, 40, 25),
    "lists": (50, 80, 40),
    "code": (60, 180, 60),
    "long": (30, 20, 15),
}
SETS = ("parity", "retrieval", "calibration")
SHARES = (0.4, 0.4, 0.2)  # of source units, before sampling to TARGETS
_LIST_LINE = re.compile(r"^\s*([-*+\u2022]|\d+[.)]|[A-Za-z_][\w.]*\s+--\s)")
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.\s|def |class |import |from \S+ import|return |[\w.]+\([^)]*\)\s*$|\w+ = )")


def _unit_set(unit: str) -> str:
    if unit.startswith("written:"):  # a few lines per file: rotate so every set gets its share
        i = int(unit.rsplit(":", 1)[1]) % 10
        return SETS[0] if i < 5 else SETS[1] if i < 8 else SETS[2]
    h = int(hashlib.sha256(unit.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return SETS[0] if h < SHARES[0] else SETS[1] if h < SHARES[0] + SHARES[1] else SETS[2]


def _clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _classify(paragraph: str) -> str | None:
    lines = [line for line in paragraph.splitlines() if line.strip()]
    words = len(paragraph.split())
    if words < 5:
        return None
    if sum(bool(_CODE_LINE.match(line)) for line in lines) >= max(2, len(lines) // 2) or ">>>" in paragraph:
        return "code"
    if len(lines) >= 3 and sum(bool(_LIST_LINE.match(line)) for line in lines) >= 3:
        return "lists"
    return "technical"


def docstring_units(stdlib: Path):
    skip = re.compile(r"(^|/)(test|tests|idlelib|lib2to3|turtledemo|site-packages|tkinter|ensurepip|__phello__)(/|$)")
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if skip.search(rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc.split()) > 300:
                    yield f"stdlib:{rel}", "long", _flat(doc), f"CPython 3.11 stdlib docstring, {rel} (whole)"
                if doc:
                    for paragraph in re.split(r"\n\s*\n", doc):
                        kind = _classify(paragraph)
                        if kind:
                            text = _clean(paragraph) if kind in ("code", "lists") else _flat(paragraph)
                            yield f"stdlib:{rel}", kind, text, f"CPython 3.11 stdlib docstring, {rel}"


def pydoc_units():
    from pydoc_data.topics import topics

    for name in sorted(topics):
        body = topics[name]
        paragraphs = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
        for paragraph in paragraphs:
            if paragraph.lstrip().startswith(("   ", ">>>")) or paragraph.startswith("   "):
                kind = "code" if len(paragraph.split()) >= 5 else None
            else:
                kind = _classify(paragraph)
            if kind:
                text = _clean(paragraph) if kind in ("code", "lists") else _flat(paragraph)
                yield f"pydoc:{name}", kind, text, f"CPython 3.11 pydoc_data/topics.py, topic '{name}'"
        long_text = _flat(body)
        if len(long_text.split()) > 300:
            yield (
                f"pydoc:{name}",
                "long",
                " ".join(long_text.split()[:700]),
                f"CPython 3.11 pydoc_data/topics.py, topic '{name}' (first 700 words)",
            )


def license_units():
    for path in sorted((HERE / "sources").glob("LICENSE-*.txt")):
        paragraphs = [_flat(p) for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))]
        paragraphs = [p for p in paragraphs if len(p.split()) >= 8 and not set(p) <= set("=-_ ")]
        for i, paragraph in enumerate(paragraphs):
            yield f"license:{path.name}:{i // 4}", "legal", paragraph, f"{path.name} (sources/)"
        # whole sections beyond the model's limit (truncated when embedded)
        words = " ".join(paragraphs).split()
        for start in range(0, len(words) - 450, 900):
            yield (
                f"license:{path.name}:long{start}",
                "long",
                " ".join(words[start : start + 600]),
                f"{path.name} (sources/), 600 words",
            )


def written_units():
    for name, kind in (("questions", "questions"), ("prose", "prose"), ("lists", "lists")):
        for i, line in enumerate((HERE / "sources" / f"{name}.txt").read_text(encoding="utf-8").splitlines()):
            if line.strip():
                yield f"written:{name}:{i}", kind, line.strip(), f"written for this project (sources/{name}.txt)"
    for line in (DATA / "sentences.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():  # the project's original parity texts stay parity texts
            yield "parity-fixed", "prose", line.strip(), "written for this project (../sentences.txt)"
    for line in (DATA / "calibration.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield "calibration-fixed", "prose", line.strip(), "written for this project (../calibration.txt)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--tokenizer", type=Path, default=Path("models/all-mpnet-base-v2/tokenizer.json"))
    args = parser.parse_args()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    pools: dict[tuple[str, str], list[dict]] = defaultdict(list)
    seen: set[str] = set()
    sources = (written_units(), license_units(), pydoc_units(), docstring_units(args.stdlib))
    for unit_iter in sources:
        for unit, kind, text, source in unit_iter:
            key = _flat(text).lower()
            if key in seen or len(text) < 12:
                continue
            seen.add(key)
            which = {"parity-fixed": "parity", "calibration-fixed": "calibration"}.get(unit) or _unit_set(unit)
            tokens = len(tokenizer.encode(text).ids)
            if (kind != "long" and tokens > 380) or (kind == "long" and tokens <= 384):
                continue  # long texts are their own domain, so every set gets a known number of them
            pools[(which, kind)].append({"text": text, "domain": kind, "tokens": tokens, "source": source})
    rng = random.Random(16)
    for index, which in enumerate(SETS):
        rows = []
        for kind, targets in TARGETS.items():
            pool = pools[(which, kind)]
            fixed = [r for r in pool if "sentences.txt" in r["source"] or "calibration.txt" in r["source"]]
            rest = [r for r in pool if r not in fixed]
            rng.shuffle(rest)
            chosen = fixed + rest[: max(0, targets[index] - len(fixed))]
            print(f"{which:<12} {kind:<10} {len(chosen):4d} of {len(pool):5d}")
            rows += chosen
        with (HERE / f"{which}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(
                    json.dumps(
                        {"text": row["text"], "domain": row["domain"], "source": row["source"]}, ensure_ascii=False
                    )
                    + "\n"
                )
        tokens = sorted(r["tokens"] for r in rows)
        print(
            f"{which}: {len(rows)} texts, tokens min {tokens[0]} median {tokens[len(tokens) // 2]} "
            f"max {tokens[-1]}, over 384: {sum(t > 384 for t in tokens)}"
        )


if __name__ == "__main__":
    main()
