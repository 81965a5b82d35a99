"""`python -m bulk_embed`: flags -> JobConfig -> job.run; what a user can fix exits 2 with one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
inputs: .txt (one text per line), .jsonl/.ndjson (objects), .csv/.tsv (header row), .parquet; or a folder of them.
output: Parquet parts OUT/part-*.parquet (id, text, n_tokens, embedding: fixed-size list<float32>; model and
variant in the file metadata), rejected rows with their reason in OUT/_rejects.jsonl, figures in
OUT/_summary.json. A killed job continues with --resume (same inputs and options): no row is written twice.
exit codes: 0 done, 1 a part failed (parts written so far are kept), 2 a usage error (one line), 130 interrupted.
"""


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bulk_embed",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Embed a corpus with a built artifact folder on Ray Data, resumably.",
    )
    p.add_argument("--artifacts", type=Path, required=True, help="artifact folder from `python -m build_artifacts`")
    p.add_argument("--input", type=Path, required=True, help="a txt/jsonl/csv/tsv/parquet file or a folder of them")
    p.add_argument("--output", type=Path, required=True, help="output folder (new or empty, or one to --resume)")
    p.add_argument(
        "--variant",
        default="auto",
        help="ONNX variant; auto = the ONNX service's choice (runtime.selection)",
    )
    p.add_argument("--text-column", default="text", help="column / field holding the text (default: text)")
    p.add_argument(
        "--id-column", default="id", help="column / field holding the id (default: id); rows without one get SOURCE:ROW"
    )
    p.add_argument(
        "--batch-size",
        type=positive,
        default=16,
        help="most texts per model call, after sorting a part by length; a call is cut earlier where "
        "padding would grow, as in the services (default: 16; 8 and 16 tied best "
        "of 8-64 for MPNet int8 on 2 cores: bulk_embed/reference)",
    )
    p.add_argument(
        "--rows-per-part", type=positive, default=500, help="rows per output part, the unit of resume (default: 500)"
    )
    p.add_argument(
        "--workers",
        type=positive,
        default=None,
        help="actors, each with its own model (default: Ray's CPUs / threads per worker)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=positive,
        default=1,
        help="ONNX Runtime threads per actor = CPUs it reserves (default: 1)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="a running cluster (e.g. auto or ray://host:10001); default: a local Ray on 127.0.0.1",
    )
    p.add_argument("--resume", action="store_true", help="continue the job in --output (same inputs and options)")
    p.add_argument(
        "--no-truncate",
        dest="truncate",
        action="store_false",
        help="reject texts longer than the model's maximum instead of truncating them",
    )
    p.add_argument("--no-text", dest="keep_text", action="store_false", help="leave the text out of the output")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Heavy imports after parsing: --help and flag errors answer at once.
    from runtime.manifest import ArtifactError

    from .inputs import InputError
    from .job import JobConfig, JobFailed, format_summary, run
    from .output import OutputError

    config = JobConfig(**vars(args))
    try:
        summary = run(config, log=lambda line: print(line, file=sys.stderr))
    except (ArtifactError, InputError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the parts written so far are kept; rerun with --resume to continue", file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0
