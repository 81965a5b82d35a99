"""Input files -> a fixed plan of parts; one part -> its raw rows.

A part is a run of at most `rows_per_part` consecutive rows of one input file, named by the file's index
in the sorted input list and its own index in that file. The plan depends only on the input files and
`rows_per_part`, so a resumed job cuts the same parts and skips those already written. Text formats
(txt, jsonl, csv, tsv) are cut at record boundaries by one scan of the bytes here, in the driver; a
worker then reads only its part's byte range. Parquet parts are row ranges, read from the row groups
that hold them.

Row numbers (`row`) count from 0 within a file: the line for txt and jsonl (a blank jsonl line is not a
row), the record after the header for csv/tsv, the row for parquet. Rows carry the raw value of the text
column, whatever its type: deciding what is a bad row is the worker's job (see worker.py).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

FORMATS = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class InputError(ValueError):
    """An input a user gave cannot be read as asked (one line, exit code 2)."""


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    source: str  # relative to the --input folder (or the file name): part of generated ids
    format: str
    bytes: int
    mtime_ns: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Part:
    """The unit of work and of resume: rows [first_row, first_row + rows) of one file."""

    file_index: int
    chunk: int
    path: str
    source: str
    format: str
    first_row: int
    rows: int
    start: int  # byte offset (text formats) or row index (parquet)
    stop: int
    header: str = ""  # csv/tsv: the header record, prepended when the part is parsed

    @property
    def name(self) -> str:
        return f"part-{self.file_index:05d}-{self.chunk:05d}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Part:
        return cls(**{k: (v.item() if hasattr(v, "item") else v) for k, v in data.items()})


@dataclass
class RawRow:
    row: int
    id: object  # the id column's value, or None
    value: object  # the text column's raw value (any type), or None when absent
    error: str = ""  # a reason found while parsing (invalid_json, invalid_utf8, missing_column)


# ---------------------------------------------------------------- discovery


def discover(input_path: Path) -> list[InputFile]:
    """The input files, sorted: one file, or every supported file under a folder (hidden and _ files skipped)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"--input {input_path}: no such file or folder")
    if input_path.is_file():
        candidates = [(input_path, input_path.name)]
        if input_path.suffix.lower() not in FORMATS:
            raise InputError(
                f"--input {input_path}: unsupported file type '{input_path.suffix}' "
                f"(supported: {', '.join(sorted(FORMATS))})"
            )
    else:
        candidates = [
            (p, str(p.relative_to(input_path)))
            for p in sorted(input_path.rglob("*"))
            if p.is_file()
            and p.suffix.lower() in FORMATS
            and not any(part.startswith((".", "_")) for part in p.relative_to(input_path).parts)
        ]
        if not candidates:
            raise InputError(f"--input {input_path}: no {', '.join(sorted(FORMATS))} files in this folder")
    files = []
    for path, source in candidates:
        stat = path.stat()
        files.append(
            InputFile(str(path.resolve()), source, FORMATS[path.suffix.lower()], stat.st_size, stat.st_mtime_ns)
        )
    return files


# ---------------------------------------------------------------- planning


def plan(files: list[InputFile], rows_per_part: int, text_column: str) -> list[Part]:
    parts: list[Part] = []
    for index, file in enumerate(files):
        if file.format == "parquet":
            parts += _plan_parquet(index, file, rows_per_part, text_column)
        else:
            parts += _plan_text(index, file, rows_per_part, text_column)
    return parts


def _records(fh, fmt: str):
    """(start byte, end byte, row) of each record of a text file; the csv/tsv header is yielded with row -1."""
    if fmt in ("csv", "tsv"):
        yield from _csv_records(fh, _delimiter(fmt))
        return
    offset, line_no = 0, 0
    for line in fh:
        end = offset + len(line)
        if fmt == "txt" or line.strip():
            yield offset, end, line_no
        line_no += 1
        offset = end


def _csv_records(fh, delimiter: str):
    """Record boundaries as Python's csv reader sees them (quoted newlines, "" escapes): the reader that
    parses each part later (csv.DictReader) then finds exactly these records in a part's byte range."""
    csv.field_size_limit(1 << 30)  # the default (128 KiB) would fail on a long text
    consumed = [0]

    def lines():
        for raw in fh:  # the reader pulls lines only as far as the record it is parsing
            consumed[0] += len(raw)
            yield raw.decode("utf-8", errors="replace")

    start, row = 0, -1
    for record in csv.reader(lines(), delimiter=delimiter):
        end = consumed[0]
        if record:  # [] is an empty line, which DictReader skips too
            yield start, end, row
            row += 1
        start = end


def _plan_text(index: int, file: InputFile, rows_per_part: int, text_column: str) -> list[Part]:
    parts, header, pending = [], "", []

    def flush():
        if pending:
            parts.append(
                Part(
                    index,
                    len(parts),
                    file.path,
                    file.source,
                    file.format,
                    pending[0][2],
                    len(pending),
                    pending[0][0],
                    pending[-1][1],
                    header,
                )
            )
            pending.clear()

    with open(file.path, "rb") as fh:
        for start, end, row in _records(fh, file.format):
            if row == -1:
                fh_pos = fh.tell()
                fh.seek(start)
                header = fh.read(end - start).decode("utf-8-sig", errors="replace")
                fh.seek(fh_pos)
                _check_csv_header(file, header, text_column)
                continue
            if not pending and file.format == "jsonl" and not parts:
                _check_first_json(file, start, end, text_column)
            pending.append((start, end, row))
            if len(pending) == rows_per_part:
                flush()
        flush()
    if file.format in ("csv", "tsv") and not header:
        raise InputError(f"{file.source}: empty {file.format} file (no header row)")
    return parts


def _check_csv_header(file: InputFile, header: str, text_column: str) -> None:
    columns = next(csv.reader(io.StringIO(header), delimiter=_delimiter(file.format)), [])
    if text_column not in columns:
        raise InputError(
            f"{file.source}: no column '{text_column}' in the header (have: {', '.join(columns)}); use --text-column"
        )


def _check_first_json(file: InputFile, start: int, end: int, text_column: str) -> None:
    """Catch a wrong --text-column at once rather than rejecting every row."""
    with open(file.path, "rb") as fh:
        fh.seek(start)
        line = fh.read(end - start)
    try:
        record = json.loads(line)
    except ValueError:
        return  # a bad first line is one reject, not a plan error
    if isinstance(record, dict) and text_column not in record:
        raise InputError(
            f"{file.source}: the first record has no '{text_column}' field (has: "
            f"{', '.join(record)}); use --text-column"
        )
    if not isinstance(record, dict):
        raise InputError(f"{file.source}: JSON Lines records must be objects with a '{text_column}' field")


def _plan_parquet(index: int, file: InputFile, rows_per_part: int, text_column: str) -> list[Part]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file.path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InputError(f"{file.source}: not a readable Parquet file ({exc})") from None
    names = meta.schema_arrow.names
    if text_column not in names:
        raise InputError(f"{file.source}: no column '{text_column}' (have: {', '.join(names)}); use --text-column")
    total = meta.metadata.num_rows
    return [
        Part(
            index,
            k,
            file.path,
            file.source,
            file.format,
            start,
            min(rows_per_part, total - start),
            start,
            min(start + rows_per_part, total),
        )
        for k, start in enumerate(range(0, total, rows_per_part))
    ]


# ---------------------------------------------------------------- reading one part (in a worker)


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def read_part(part: Part, text_column: str, id_column: str) -> list[RawRow]:
    if part.format == "parquet":
        rows = _read_parquet(part, text_column, id_column)
    else:
        with open(part.path, "rb") as fh:
            fh.seek(part.start)
            data = fh.read(part.stop - part.start)
        if part.start == 0:
            data = data.removeprefix(codecs.BOM_UTF8)
        rows = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv}[part.format](
            part, data, text_column, id_column
        )
    if len(rows) != part.rows:
        raise RuntimeError(
            f"{part.source}: {part.name} has {len(rows)} rows, planned {part.rows} "
            f"(the file changed while the job ran?)"
        )
    return rows


def _read_txt(part: Part, data: bytes, text_column: str, id_column: str) -> list[RawRow]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    rows = []
    for k, line in enumerate(lines):
        try:
            rows.append(RawRow(part.first_row + k, None, line.removesuffix(b"\r").decode("utf-8")))
        except UnicodeDecodeError:
            rows.append(RawRow(part.first_row + k, None, None, "invalid_utf8"))
    return rows


def _read_jsonl(part: Part, data: bytes, text_column: str, id_column: str) -> list[RawRow]:
    rows, line_no = [], part.first_row
    for line in data.split(b"\n"):
        if not line.strip():
            line_no += 1
            continue
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            rows.append(RawRow(line_no, None, None, "invalid_utf8"))
        except ValueError:
            rows.append(RawRow(line_no, None, None, "invalid_json"))
        else:
            if not isinstance(record, dict):
                rows.append(RawRow(line_no, None, record, "not_an_object"))
            elif text_column not in record:
                rows.append(RawRow(line_no, record.get(id_column), None, "missing_column"))
            else:
                rows.append(RawRow(line_no, record.get(id_column), record[text_column]))
        line_no += 1
    return rows


def _read_csv(part: Part, data: bytes, text_column: str, id_column: str) -> list[RawRow]:
    csv.field_size_limit(1 << 30)
    text = part.header + data.decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(part.format))
    rows = []
    for k, record in enumerate(reader):
        value = record.get(text_column)
        error = "" if value is not None else "missing_column"  # a short record
        rows.append(RawRow(part.first_row + k, record.get(id_column) or None, value, error))
    return rows


def _read_parquet(part: Part, text_column: str, id_column: str) -> list[RawRow]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(part.path)
    columns = [text_column] + ([id_column] if id_column in pf.schema_arrow.names else [])
    # The row groups that overlap [start, stop), then the slice of them.
    groups, first, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > part.start and offset < part.stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    table = pf.read_row_groups(groups, columns=columns).slice(part.start - first, part.stop - part.start)
    texts = table.column(text_column).to_pylist()
    ids = table.column(id_column).to_pylist() if id_column in table.column_names else [None] * len(texts)
    return [RawRow(part.first_row + k, ids[k], texts[k]) for k in range(len(texts))]
