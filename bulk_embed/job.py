"""The driver: check, plan, skip what is done, run the rest on Ray Data with an actor pool, report.

    ray.data.from_items(pending part descriptors)               one block per part
      .map_batches(PartWorker, batch_size=1,                    a callable class: the model loads once per actor
                   compute=ActorPoolStrategy(size=workers),     a fixed pool of `workers` actors
                   num_cpus=threads_per_worker)                 Ray places actors by the CPUs they reserve
      .iter_rows()                                              one statistics row per finished part

This follows Ray Data's batch-inference pattern (a stateful callable class in an actor pool); what
flows through Ray is the plan, not the texts: each actor reads its part from the input and writes it to
the output (see worker.py), so the driver never holds the corpus. Without --ray-address a local Ray
starts on 127.0.0.1 and stops at the end; with one, the same job runs on that cluster.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.manifest import Manifest, public_model_name

from . import output
from .encoder import select_variant
from .inputs import InputError, discover, plan
from .worker import PartWorker, WorkerConfig

JOB_FORMAT = 1


class JobFailed(RuntimeError):
    """A part failed in a worker (not a user error): the parts written so far stay; --resume continues."""


@dataclass
class JobConfig:
    artifacts: Path
    input: Path
    output: Path
    variant: str = "auto"
    text_column: str = "text"
    id_column: str = "id"
    batch_size: int = 16
    rows_per_part: int = 500
    workers: int | None = None  # default: every CPU of the cluster, divided by threads_per_worker
    threads_per_worker: int = 1
    ray_address: str | None = None
    resume: bool = False
    truncate: bool = True
    keep_text: bool = True
    progress: bool = True


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception): .+")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(exc: BaseException) -> str:
    """The worker's own exception line out of Ray's wrapping (its traceback text), else the last line."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if _EXCEPTION_LINE.match(line) and not line.startswith("ray."):
            return line
    return lines[-1] if lines else type(exc).__name__


def _start_ray(address: str | None):
    """ray.init for this job: a local Ray bound to 127.0.0.1 (quiet), or the cluster at `address`."""
    if address is None:
        # Read at import by Ray; on Linux the default would advertise the host's routable address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return ray, False
    if address is None:
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    return ray, True


def _quiet_ray_data():
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts texts, Ray Data's would count parts
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers + logging.getLogger("ray").handlers:
        handler.addFilter(_DropProgressBarNotice())


class _DropProgressBarNotice(logging.Filter):
    """Ray Data warns that its bars are off; they are off on purpose (ours counts texts)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


def run(config: JobConfig, log=print) -> dict:
    """Embed config.input into config.output; returns the summary (also written to _summary.json).

    Raises ArtifactError / InputError / OutputError for what a user can fix, JobFailed when a part fails.
    """
    started = time.perf_counter()
    artifacts = Path(config.artifacts).resolve()
    out_dir = Path(config.output).resolve()
    manifest = Manifest.load(artifacts)
    variant = select_variant(manifest, config.variant, artifacts, config.threads_per_worker)
    manifest.verify(artifacts, variant)  # sha256 of the variant and tokenizer, once, in the driver

    input_path = Path(config.input).resolve()
    if out_dir == input_path or input_path in out_dir.parents:
        raise InputError(f"--output {config.output} is inside --input {config.input}: choose a folder outside it")
    files = discover(input_path)
    parts = plan(files, config.rows_per_part, config.text_column)
    total_rows = sum(p.rows for p in parts)
    if not total_rows:
        raise InputError(f"--input {config.input}: no rows to embed")

    job = {
        "format": JOB_FORMAT,
        "inputs": [f.to_dict() for f in files],
        "options": {
            "artifacts": str(artifacts),
            "model": manifest.model.source,
            "variant": variant,
            "manifest_created_at": manifest.created_at,
            "text_column": config.text_column,
            "id_column": config.id_column,
            "rows_per_part": config.rows_per_part,
            "truncate": config.truncate,
            "keep_text": config.keep_text,
        },
        "parts": len(parts),
        "rows": total_rows,
    }
    resumed = output.prepare(out_dir, job, config.resume)
    stale = output.remove_temporaries(out_dir)
    done = output.done_parts(out_dir)
    pending = [p for p in parts if p.name not in done]
    if resumed:
        log(
            f"resuming {out_dir}: {len(parts) - len(pending)} of {len(parts)} parts done, {len(pending)} to go"
            + (f" ({stale} unfinished temp files removed)" if stale else "")
        )

    totals = Counter()
    reasons = Counter()
    timing = {"ray_start_s": 0.0, "pipeline_s": 0.0, "workers": 0}
    if pending:
        _run_pending(config, variant, artifacts, out_dir, pending, totals, reasons, timing)
    rejects_in_output = output.merge_rejects(out_dir)
    wall = time.perf_counter() - started
    summary = {
        "output": str(out_dir),
        "model": public_model_name(manifest.model.source),
        "variant": variant,
        "workers": timing["workers"],
        "threads_per_worker": config.threads_per_worker,
        "batch_size": config.batch_size,
        "rows_per_part": config.rows_per_part,
        "parts": {"total": len(parts), "done_before": len(parts) - len(pending), "written": totals["parts"]},
        "this_run": {
            "texts": totals["embedded"],
            "rejects": totals["rejects"],
            "reject_reasons": dict(reasons),
            "tokens": totals["tokens"],
            "wall_s": round(wall, 3),
            "ray_start_s": round(timing["ray_start_s"], 3),
            "pipeline_s": round(timing["pipeline_s"], 3),
            "worker_busy_s": round(totals["worker_s"], 3),
            "texts_per_s": round(totals["embedded"] / wall, 2) if wall else 0.0,
            "tokens_per_s": round(totals["tokens"] / wall, 1) if wall else 0.0,
        },
        "output_totals": {"rows_in": total_rows, "embedded": output.count_rows(out_dir), "rejects": rejects_in_output},
    }
    output.write_json_atomic(out_dir / output.SUMMARY_FILE, summary)
    return summary


def _run_pending(
    config: JobConfig,
    variant: str,
    artifacts: Path,
    out_dir: Path,
    pending,
    totals: Counter,
    reasons: Counter,
    timing: dict,
) -> None:
    from tqdm import tqdm

    t0 = time.perf_counter()
    ray, started_here = _start_ray(config.ray_address)
    timing["ray_start_s"] = time.perf_counter() - t0
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        threads = config.threads_per_worker
        workers = config.workers or max(1, cpus // threads)
        if workers * threads > cpus:
            raise InputError(
                f"--workers {workers} x --threads-per-worker {threads} = {workers * threads} CPUs, but Ray has {cpus}"
            )
        workers = min(workers, len(pending))
        timing["workers"] = workers
        _quiet_ray_data()
        worker_config = WorkerConfig(
            str(artifacts),
            variant,
            threads,
            config.batch_size,
            config.text_column,
            config.id_column,
            config.truncate,
            config.keep_text,
            str(out_dir),
        )
        dataset = ray.data.from_items([p.to_dict() for p in pending], override_num_blocks=len(pending))
        dataset = dataset.map_batches(
            PartWorker,
            fn_constructor_kwargs={"config": asdict(worker_config)},
            batch_size=1,
            batch_format="numpy",
            # One part in flight per actor: the last parts go to whichever actor is free (a balanced tail).
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=threads,
        )
        bar = tqdm(
            total=sum(p.rows for p in pending),
            unit="text",
            desc="embedding",
            file=sys.stderr,
            disable=not config.progress,
            mininterval=0.5,
            smoothing=0.1,
            dynamic_ncols=True,
        )
        t1 = time.perf_counter()
        try:
            for row in dataset.iter_rows():
                totals.update(
                    parts=1,
                    embedded=int(row["embedded"]),
                    rejects=int(row["rejects"]),
                    tokens=int(row["tokens"]),
                    worker_s=float(row["seconds"]),
                )
                reasons.update(json.loads(str(row["reasons"])))
                elapsed = time.perf_counter() - t1
                bar.set_postfix(rejects=totals["rejects"], tokens_s=f"{totals['tokens'] / elapsed:.0f}", refresh=False)
                bar.update(int(row["rows"]))
        except (InputError, KeyboardInterrupt):
            raise
        except Exception as exc:  # Ray wraps the worker's error; one line of it is enough
            raise JobFailed(
                f"a part failed ({_one_line(exc)}); {_count(totals['parts'], 'part')} written this run "
                f"kept: fix the cause and rerun with --resume"
            ) from exc
        finally:
            bar.close()
        timing["pipeline_s"] = time.perf_counter() - t1
    finally:
        if started_here:
            ray.shutdown()


def format_summary(summary: dict) -> str:
    run_, parts, totals = summary["this_run"], summary["parts"], summary["output_totals"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(run_["reject_reasons"].items()))
    skipped = f", {parts['done_before']} parts already done" if parts["done_before"] else ""
    return (
        f"{run_['texts']} texts embedded, {run_['rejects']} rejected{f' ({reasons})' if reasons else ''} "
        f"in {_count(parts['written'], 'part')}{skipped}; {run_['wall_s']:.1f} s wall, "
        f"{run_['texts_per_s']:.1f} texts/s, {run_['tokens_per_s']:.0f} tokens/s ({summary['variant']}, "
        f"{_count(summary['workers'], 'worker')} x {_count(summary['threads_per_worker'], 'thread')}). "
        f"Output: {totals['embedded']} rows, {totals['rejects']} rejects in {summary['output']}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
