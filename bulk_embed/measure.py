"""Measure a bulk job against the same model in-process, and a kill + resume; writes results.json and README.md.

    python -m bulk_embed.measure --artifacts artifacts/all-mpnet-base-v2 [--out bulk_embed/reference]

Steps, all on the same corpus (default: the 6,000-text demo corpus) and the same variant (default: auto):
1. In-process (no Ray): the variant with all `--threads` threads, the texts in parts of `--rows-per-part`
   sorted by length within each part exactly as a worker does (Encoder.embed per part): a batch-size sweep
   on the first `--sweep-texts` texts picks the best batch size, then the whole corpus at that size.
2. `python -m bulk_embed` (a local Ray, as a user runs it) with 1 worker x `--threads` threads and with
   `--threads` workers x 1 thread, at that batch size. Ray's overhead = in-process texts/s / bulk texts/s;
   wall time includes Ray's start and each actor's model load.
3. Kill + resume: the same command killed (SIGKILL, its whole session) once `--kill-fraction` of the parts
   exist, then rerun with --resume; every row must be in the output exactly once, and the parts written
   before the kill must be untouched.
The bulk vectors are also compared with the in-process ones (same parts, same batch size: equal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.markdown import table

from .encoder import Encoder
from .output import PART_GLOB, SUMMARY_FILE, done_parts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(__file__).parent / "data" / "python_docstrings.jsonl"
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_texts(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)[column] for line in fh if line.strip()]


def in_process(encoder: Encoder, texts: list[str], batch_size: int, rows_per_part: int) -> tuple[float, np.ndarray]:
    """Seconds to embed `texts` part by part as a worker does (tokenize, sort, run), and the vectors."""
    started = time.perf_counter()
    vectors = [encoder.embed(texts[i : i + rows_per_part], batch_size) for i in range(0, len(texts), rows_per_part)]
    return time.perf_counter() - started, np.concatenate(vectors)


def bulk_command(args, out: Path, workers: int, threads: int, batch_size: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bulk_embed",
        "--artifacts",
        str(args.artifacts),
        "--input",
        str(args.input),
        "--output",
        str(out),
        "--variant",
        args.variant,
        "--text-column",
        args.text_column,
        "--workers",
        str(workers),
        "--threads-per-worker",
        str(threads),
        "--batch-size",
        str(batch_size),
        "--rows-per-part",
        str(args.rows_per_part),
        "--no-progress",
    ]


def run_bulk(command: list[str]) -> dict:
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bulk_embed failed ({result.returncode}): {result.stderr[-2000:]}")
    out = Path(command[command.index("--output") + 1])
    log(result.stdout.strip())
    return json.loads((out / SUMMARY_FILE).read_text())


def read_vectors(out: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["id", "embedding"])
    return table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)


def kill_and_resume(args, out: Path, batch_size: int, workers: int, threads: int) -> dict:
    command = bulk_command(args, out, workers, threads, batch_size)
    total_parts = -(-len(load_texts(args.input, args.text_column)) // args.rows_per_part)
    kill_at = max(1, int(total_parts * args.kill_fraction))
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while not out.exists() or len(done_parts(out)) < kill_at:
        if process.poll() is not None:
            raise SystemExit("the job ended before the kill")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    killed_after = time.perf_counter() - started
    process.wait()
    for _ in range(120):  # Ray's workers leave once their raylet is gone
        found = subprocess.run(["ps", "-o", "pid=", "-s", str(process.pid)], capture_output=True, text=True)
        left = found.stdout.split()
        if not left:
            break
        time.sleep(0.5)
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob(PART_GLOB)}
    temps = len(list(out.glob(".*.tmp")))
    log(f"killed after {killed_after:.1f} s with {len(before)} of {total_parts} parts written, {temps} temp files")
    resumed = run_bulk(command + ["--resume"])
    untouched = all((out / n).stat().st_ino == s[0] and (out / n).stat().st_mtime_ns == s[1] for n, s in before.items())
    ids, _ = read_vectors(out)
    expected = resumed["output_totals"]["rows_in"] - resumed["output_totals"]["rejects"]
    return {
        "parts_total": total_parts,
        "killed_after_s": round(killed_after, 1),
        "parts_at_kill": len(before),
        "temp_files_left_by_kill": temps,
        "resume": resumed,
        "parts_before_kill_untouched": untouched,
        "rows_in_output": len(ids),
        "unique_ids": len(set(ids)),
        "rows_expected": expected,
        "exactly_once": len(ids) == len(set(ids)) == expected,
    }


def cpu_model() -> str:
    from runtime.host import probe_cpu

    return probe_cpu().summary()


def markdown(results: dict) -> str:
    r = results
    ip = r["in_process"]
    rows = [
        [
            f"in-process, {ip['threads']} threads, no Ray",
            ip["batch_size"],
            f"{ip['seconds']:.1f}",
            "-",
            "-",
            f"{ip['seconds']:.1f}",
            f"{ip['texts_per_s']:.1f}",
            f"{ip['tokens_per_s']:.0f}",
            "1.00",
        ]
    ]
    for run in r["bulk"]:
        s = run["summary"]["this_run"]
        rows.append(
            [
                f"bulk_embed, {run['workers']} x {run['threads']} (workers x threads)",
                ip["batch_size"],
                f"{s['wall_s']:.1f}",
                f"{s['ray_start_s']:.1f}",
                f"{s['pipeline_s']:.1f}",
                f"{s['worker_busy_s'] / run['workers']:.1f}",
                f"{s['texts_per_s']:.1f}",
                f"{s['tokens_per_s']:.0f}",
                f"{run['overhead_wall']:.2f}; {run['overhead_pipeline']:.2f}",
            ]
        )
    lines = [
        "# Bulk embedding: reference run",
        "",
        f"`python -m bulk_embed.measure` on {r['machine']['cpus']} CPUs ({r['machine']['processor']}), "
        f"load average before the run {r['machine']['load_before']}; {r['model']}, variant `{r['variant']}`, "
        f"{r['texts']} texts of the demo corpus ({r['tokens']} tokens after truncation, "
        f"{r['tokens'] / r['texts']:.0f} per text), parts of {r['rows_per_part']} texts. {r['date']}.",
        "",
        table(
            [
                "run",
                "batch",
                "wall s",
                "Ray start s",
                "pipeline s",
                "busy s / worker",
                "texts/s (wall)",
                "tokens/s",
                "in-process / this (wall; pipeline)",
            ],
            rows,
        ),
    ]
    lines += [
        "",
        "*wall*: the job, from its checks and plan to its summary (Ray's start, the actors' start and model "
        "load, every part read, embedded and written, Ray's stop; not the interpreter's start). *pipeline*: "
        "from the dataset's start to the last part. *busy / worker*: the time the workers spent on parts "
        "(read, tokenize, embed, write), divided by the workers.",
        "",
        f"Batch-size sweep in-process (first {r['sweep']['texts']} texts, texts/s): "
        + ", ".join(f"b{b} {v:.1f}" for b, v in r["sweep"]["texts_per_s"].items())
        + f" -> batch {ip['batch_size']}.",
        "",
        "Bulk vectors against in-process (same parts, same batch size): min cosine "
        + ", ".join(f"{run['min_cosine_vs_in_process']:.6f}" for run in r["bulk"])
        + ".",
        "",
    ]
    by_speed = sorted(r["bulk"], key=lambda b: -b["summary"]["this_run"]["texts_per_s"])
    fast, slow = by_speed[0], by_speed[-1]
    fs = fast["summary"]["this_run"]
    lines += [
        "Reading: the fastest layout, "
        f"{fast['workers']} x {fast['threads']}, runs at {1 / fast['overhead_wall']:.0%} of the in-process rate over "
        f"the whole command and {1 / fast['overhead_pipeline']:.0%} over the pipeline; its workers were busy "
        f"{fs['worker_busy_s'] / fast['workers']:.1f} s each against {ip['seconds']:.1f} s in-process for the same "
        "work, so what Ray adds is its start and stop, the actors' start and model load, and the tail (the last "
        f"parts leave a worker idle). {fast['workers']} x {fast['threads']} is "
        f"{fs['texts_per_s'] / slow['summary']['this_run']['texts_per_s']:.2f}x the rate of "
        f"{slow['workers']} x {slow['threads']}.",
        "",
    ]
    k = r["kill_resume"]
    res = k["resume"]
    lines += [
        f"## Kill and resume ({k['workers']} x {k['threads']})",
        "",
        f"Killed (SIGKILL to the command's session) after {k['killed_after_s']} s with {k['parts_at_kill']} of "
        f"{k['parts_total']} parts written ({k['temp_files_left_by_kill']} unfinished temp files). `--resume`: "
        f"{res['parts']['done_before']} parts skipped, {res['parts']['written']} written, "
        f"{res['this_run']['texts']} texts in {res['this_run']['wall_s']:.1f} s ({res['this_run']['texts_per_s']:.1f} "
        f"texts/s). Output: {k['rows_in_output']} rows, {k['unique_ids']} unique ids, {k['rows_expected']} expected "
        f"-> exactly once: **{k['exactly_once']}**; parts written before the kill untouched: "
        f"**{k['parts_before_kill_untouched']}**.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bulk_embed.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "all-mpnet-base-v2")
    parser.add_argument("--input", type=Path, default=DEFAULT_CORPUS, help="a JSON Lines file")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--variant", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows-per-part", type=int, default=500)
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--sweep-texts", type=int, default=600)
    parser.add_argument("--kill-fraction", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "reference")
    parser.add_argument("--report-only", action="store_true", help="rewrite OUT/README.md from OUT/results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        (args.out / "README.md").write_text(markdown(json.loads((args.out / "results.json").read_text())))
        return 0
    args.artifacts, args.input = args.artifacts.resolve(), args.input.resolve()

    load_before = os.getloadavg()
    texts = load_texts(args.input, args.text_column)
    encoder = Encoder(args.artifacts, args.variant, args.threads)
    tokens = sum(len(encoder.truncate(ids)) for ids in encoder.token_ids(texts))
    log(f"{len(texts)} texts, {tokens} tokens; variant {encoder.variant}; load {load_before[0]:.2f}")

    sweep_texts = texts[: args.sweep_texts]
    encoder.embed(sweep_texts[:64], 32)  # warm-up
    sweep = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        seconds, _ = in_process(encoder, sweep_texts, batch_size, args.rows_per_part)
        sweep[batch_size] = len(sweep_texts) / seconds
        log(f"in-process sweep b{batch_size}: {sweep[batch_size]:.1f} texts/s")
    best = max(sweep, key=sweep.get)
    seconds, reference = in_process(encoder, texts, best, args.rows_per_part)
    in_proc = {
        "threads": args.threads,
        "batch_size": best,
        "seconds": seconds,
        "texts_per_s": len(texts) / seconds,
        "tokens_per_s": tokens / seconds,
    }
    log(f"in-process b{best}: {in_proc['texts_per_s']:.1f} texts/s")
    del encoder

    work = Path(tempfile.mkdtemp(prefix="bulk-embed-measure-"))
    bulk = []
    try:
        for workers, threads in ((1, args.threads), (args.threads, 1)):
            out = work / f"w{workers}t{threads}"
            summary = run_bulk(bulk_command(args, out, workers, threads, best))
            _, vectors = read_vectors(out)
            cos = np.sum(vectors * reference, axis=1) / (
                np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
            )
            run = summary["this_run"]
            bulk.append(
                {
                    "workers": workers,
                    "threads": threads,
                    "summary": summary,
                    "overhead_wall": in_proc["texts_per_s"] / run["texts_per_s"],
                    "overhead_pipeline": in_proc["texts_per_s"] * run["pipeline_s"] / run["texts"],
                    "min_cosine_vs_in_process": float(cos.min()),
                }
            )
        fastest = max(bulk, key=lambda b: b["summary"]["this_run"]["texts_per_s"])
        kill = kill_and_resume(args, work / "killed", best, fastest["workers"], fastest["threads"])
        kill.update(workers=fastest["workers"], threads=fastest["threads"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": bulk[0]["summary"]["model"],
        "variant": bulk[0]["summary"]["variant"],
        "texts": len(texts),
        "tokens": tokens,
        "rows_per_part": args.rows_per_part,
        "corpus": str(args.input.relative_to(REPO)) if args.input.is_relative_to(REPO) else str(args.input),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": cpu_model(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "sweep": {"texts": len(sweep_texts), "texts_per_s": {str(b): round(v, 2) for b, v in sweep.items()}},
        "in_process": in_proc,
        "bulk": bulk,
        "kill_resume": kill,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "README.md").write_text(markdown(results))
    log(f"wrote {args.out / 'results.json'} and README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
