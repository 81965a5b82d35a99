"""bulk_embed: inputs and plan (fast, no weights), then real jobs on a local Ray with the MiniLM artifacts (slow).

Ray runs on 127.0.0.1 with 2 CPUs and is shut down by the fixture (in-process jobs) or with the CLI's
own process (subprocess jobs); the kill-and-resume test kills the CLI's whole session and waits until
none of its processes is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bulk_embed import inputs, output
from bulk_embed.cli import main as cli_main

from .conftest import REPO

CORPUS = REPO / "bulk_embed" / "data" / "python_docstrings.jsonl"
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}


def corpus_texts(n: int) -> list[dict]:
    with CORPUS.open(encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def read_output(out: Path) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(out)  # the _-prefixed files are skipped by the reader
    return {"table": table, **table.to_pydict()}


def read_rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / output.REJECTS_FILE).read_text().splitlines()]


def write_inputs(folder: Path) -> dict[str, list[tuple[str, object]]]:
    """One file per format with good and bad rows; returns per file the expected (id, text-or-reason) rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    good = [r["text"] for r in corpus_texts(12)]
    (folder / "a.txt").write_text(f"{good[0]}\n\n{good[1]}\r\n   \n{good[2]}", encoding="utf-8")
    (folder / "b.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": "j1", "text": good[3]}),
                "",  # blank: not a row
                json.dumps({"id": "j2", "text": 42}),
                "{not json",
                json.dumps({"id": "j3", "body": "no text field"}),
                json.dumps({"id": 7, "text": good[4]}),
                json.dumps([1, 2]),
                json.dumps({"text": None, "id": "j5"}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    (folder / "c.csv").write_text(
        'id,text,extra\nc1,"' + good[5].replace('"', '""') + '",x\n'
        'c2,"two lines,\nwith a ""quote"" and a comma",y\n\nc3,,z\nc4\n',
        encoding="utf-8",
    )
    (folder / "sub").mkdir()
    (folder / "sub" / "d.tsv").write_text(f"text\tid\n{good[6]}\tt1\n", encoding="utf-8")
    table = pa.table({"id": [10, 11, 12, 13], "text": [good[7], "", None, good[8]]})
    pq.write_table(table, folder / "e.parquet", row_group_size=3)  # a part spans two row groups
    (folder / "notes.md").write_text("not an input")  # skipped: unsupported extension
    (folder / "_skip.txt").write_text("skipped: _ prefix\n")
    return {
        "a.txt": [
            ("a.txt:0", good[0]),
            ("a.txt:1", "empty"),
            ("a.txt:2", good[1]),
            ("a.txt:3", "empty"),
            ("a.txt:4", good[2]),
        ],
        "b.jsonl": [
            ("j1", good[3]),
            ("j2", "not_text"),
            ("b.jsonl:3", "invalid_json"),
            ("j3", "missing_column"),
            ("7", good[4]),
            ("b.jsonl:6", "not_an_object"),
            ("j5", "not_text"),
        ],
        "c.csv": [
            ("c1", good[5]),
            ("c2", 'two lines,\nwith a "quote" and a comma'),
            ("c3", "empty"),
            ("c4", "missing_column"),
        ],
        "sub/d.tsv": [("t1", good[6])],
        "e.parquet": [("10", good[7]), ("11", "empty"), ("12", "not_text"), ("13", good[8])],
    }


REASONS = {"empty", "not_text", "invalid_json", "missing_column", "not_an_object", "too_long"}


# ------------------------------------------------------------------ fast: inputs, plan, output folder, CLI


def test_plan_and_read_every_format_row_by_row(tmp_path):
    expected = write_inputs(tmp_path / "in")
    files = inputs.discover(tmp_path / "in")
    assert [f.source for f in files] == ["a.txt", "b.jsonl", "c.csv", "e.parquet", "sub/d.tsv"]
    parts = inputs.plan(files, rows_per_part=2, text_column="text")
    assert [p.name for p in parts][:3] == ["part-00000-00000", "part-00000-00001", "part-00000-00002"]
    assert inputs.plan(files, 2, "text") == parts  # the same inputs always cut the same parts
    got: dict[str, list] = {}
    for part in parts:
        rows = inputs.read_part(part, "text", "id")
        assert len(rows) == part.rows <= 2
        for row in rows:
            key = str(row.id) if row.id is not None else f"{part.source}:{row.row}"
            value = row.error or (
                row.value
                if isinstance(row.value, str) and row.value.strip()
                else "empty"
                if isinstance(row.value, str)
                else "not_text"
            )
            got.setdefault(part.source, []).append((key, value))
    assert got == expected


def test_csv_splits_at_the_records_the_csv_reader_sees(tmp_path):
    """Quoted newlines and blank lines inside a field, a stray quote in an unquoted field, CRLF, a BOM."""
    path = tmp_path / "q.csv"
    path.write_bytes('\ufefftext,id\r\n"a\r\nb",1\r\n"c ""d""\n\ne",2\r\n\r\n5" screen,3\r\nf,4'.encode())
    parts = inputs.plan(inputs.discover(path), rows_per_part=1, text_column="text")
    assert [[(r.id, r.value) for r in inputs.read_part(p, "text", "id")] for p in parts] == [
        [("1", "a\r\nb")],
        [("2", 'c "d"\n\ne')],
        [("3", '5" screen')],
        [("4", "f")],
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.csv", "body,id\nhello,1\n", "no column 'text'"),
        ("x.jsonl", '{"body": "hello"}\n', "no 'text' field"),
        ("x.xml", "<a/>", "unsupported file type"),
        ("x.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_input_errors_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(inputs.InputError, match=message):
        inputs.plan(inputs.discover(tmp_path / name), 10, "text")


def test_output_folder_resume_rules(tmp_path):
    job = {"inputs": [{"path": "/x", "bytes": 1}], "options": {"variant": "v", "rows_per_part": 5}}
    out = tmp_path / "out"
    assert output.prepare(out, job, resume=False) is False
    with pytest.raises(output.OutputError, match="pass --resume"):
        output.prepare(out, job, resume=False)
    assert output.prepare(out, job, resume=True) is True
    changed = {**job, "options": {"variant": "w", "rows_per_part": 5}}
    with pytest.raises(output.OutputError, match=r"options\.variant differ"):
        output.prepare(out, changed, resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(output.OutputError, match="not a bulk_embed output"):
        output.prepare(tmp_path / "other", job, resume=True)
    stale = out / ".part-00000-00000.parquet.1.abc.tmp"
    stale.write_bytes(b"half")
    assert output.remove_temporaries(out) == 1 and not stale.exists()


def test_bulk_embed_runs_the_onnx_services_variants():
    from runtime.variants import SERVICE_ENGINES
    from services.onnx_api.embedder import OnnxEmbedder

    assert SERVICE_ENGINES["bulk_embed"] == SERVICE_ENGINES[OnnxEmbedder.service]


def test_worker_import_closure_has_no_torch_and_no_services():
    code = (
        "import json, sys\nimport bulk_embed.cli, bulk_embed.job, bulk_embed.worker, bulk_embed.encoder\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert not loaded & {"torch", "transformers", "services", "build_artifacts", "benchmarks"}


@pytest.fixture()
def fake_artifacts(tmp_path) -> Path:
    """A manifest whose files exist (not a model): enough for every check the driver makes before Ray starts."""
    folder = tmp_path / "artifacts"
    (folder / "onnx").mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "onnx" / "model.int8.onnx").write_bytes(b"x")
    (folder / "onnx" / "model.optimized.onnx").write_bytes(b"y")

    def entry(rel):
        data = (folder / rel).read_bytes()
        return {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def record(rel, min_cos):
        return {
            "runtime": "onnx",
            "precision": "x",
            "path": rel,
            "bytes": 1,
            "files": [entry(rel)],
            "parity": {
                "min_cosine": min_cos,
                "mean_cosine": min_cos,
                "texts": 42,
                "threshold": 0.99,
                "passes_parity": min_cos >= 0.99,
            },
        }

    manifest = {
        "format_version": 1,
        "created_at": "now",
        "model": {"source": "fake", "dimension": 4, "pooling": "mean", "normalize": True, "max_seq_length": 16},
        "tokenizer": {"path": "tokenizer.json", "files": [entry("tokenizer.json")]},
        "artifacts": {
            "onnx_int8": record("onnx/model.int8.onnx", 0.5),
            "onnx_optimized": record("onnx/model.optimized.onnx", 1.0),
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--variant", "onnx_int8"], "--variant onnx_int8: Variant 'onnx_int8' cannot be served here: "),
        (["--variant", "torch_int8"], "--variant torch_int8: Variant 'torch_int8' is not served by bulk_embed"),
        (["--variant", "onnx_fused"], "--variant onnx_fused: Variant 'onnx_fused' cannot be served here: not built"),
        (["--text-column", "body"], "no column 'body' in the header"),
        (["--input", "MISSING"], "no such file or folder"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(tmp_path, fake_artifacts, capsys, extra, message):
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    argv = [
        "--artifacts",
        str(fake_artifacts),
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out"),
        *extra,
    ]
    if "MISSING" in extra:
        argv[argv.index("MISSING")] = str(tmp_path / "missing")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_existing_job_without_resume_and_changed_options_with_it(tmp_path, fake_artifacts, capsys):
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    base = ["--artifacts", str(fake_artifacts), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out")]
    out = tmp_path / "out"
    files = inputs.discover(tmp_path / "in.csv")
    job_options = {
        "artifacts": str(fake_artifacts.resolve()),
        "model": "fake",
        "variant": "onnx_optimized",
        "manifest_created_at": "now",
        "text_column": "text",
        "id_column": "id",
        "rows_per_part": 500,
        "truncate": True,
        "keep_text": True,
    }
    output.prepare(
        out,
        {"format": 1, "inputs": [f.to_dict() for f in files], "options": job_options, "parts": 1, "rows": 1},
        resume=False,
    )
    assert cli_main(base) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli_main([*base, "--resume", "--no-truncate"]) == 2
    assert "options.truncate differ" in capsys.readouterr().err


# ------------------------------------------------------------------ slow: real jobs on Ray, MiniLM artifacts


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bulk_embed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **LOOPBACK_ENV},
    )


def session_processes(sid: int) -> list[str]:
    found = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(sid)], capture_output=True, text=True)
    return found.stdout.strip().splitlines()


def test_killed_job_resumes_and_writes_every_row_exactly_once(tmp_path, minilm_artifacts):
    """The CLI (its own local Ray) is killed with SIGKILL, session and all, once a few parts exist; --resume
    finishes the rest without touching the parts already written."""
    records = corpus_texts(1200)
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    args = [
        "--artifacts",
        str(minilm_artifacts),
        "--input",
        str(src),
        "--output",
        str(out),
        "--rows-per-part",
        "25",
        "--workers",
        "1",
        "--threads-per-worker",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bulk_embed", *args],
        cwd=REPO,
        env={**os.environ, **LOOPBACK_ENV},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(output.done_parts(out)) < 3 if out.exists() else True:
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no part written in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for line in session_processes(process.pid):  # Ray's own processes, if any outlived the kill
            os.kill(int(line.split()[0]), signal.SIGKILL)
        log.close()
    done_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob(output.PART_GLOB)}
    assert 3 <= len(done_before) < 48, "the kill came too late to leave work for --resume"

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(done_before)} of 48 parts done" in resumed.stderr
    summary = json.loads((out / output.SUMMARY_FILE).read_text())
    assert summary["parts"] == {"total": 48, "done_before": len(done_before), "written": 48 - len(done_before)}
    assert summary["this_run"]["texts"] == 1200 - 25 * len(done_before)
    for name, stamp in done_before.items():  # not rewritten
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stamp
    got = read_output(out)
    assert sorted(got["id"]) == sorted(r["id"] for r in records)  # every row, exactly once
    assert got["text"] == [r["text"] for r in records]  # in input order, part after part
    assert not list(out.glob(".*.tmp")) and read_rejects(out) == []

    again = run_cli(*args, "--resume")  # a finished job: nothing left to do
    assert again.returncode == 0 and "0 texts embedded" in again.stdout and "1200 rows" in again.stdout


@pytest.fixture(scope="module")
def local_ray():
    os.environ.update(LOOPBACK_ENV)  # read by Ray at import and inherited by its processes
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_job(tmp_path: Path, artifacts: Path, src: Path, name: str, **options) -> tuple[dict, Path]:
    from bulk_embed.job import JobConfig, run

    out = tmp_path / name
    summary = run(JobConfig(artifacts=artifacts, input=src, output=out, progress=False, **options), log=lambda _: None)
    return summary, out


def test_vectors_equal_the_onnx_services_for_the_same_variant(tmp_path, minilm_artifacts, local_ray):
    from services.common.embedder import normalize_rows
    from services.onnx_api.embedder import OnnxEmbedder, OnnxSettings

    records = corpus_texts(200)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = [r["text"] for r in records]

    # A bit-stable fp32 variant: the bulk job's batches (sorted by length, 16 a call) give the service's vectors.
    summary, out = run_job(tmp_path, minilm_artifacts, src, "fp32", variant="onnx_optimized", rows_per_part=64)
    got = read_output(out)
    service = OnnxEmbedder(OnnxSettings(artifacts_dir=minilm_artifacts, variant="onnx_optimized", threads=2))
    service.load()
    want = normalize_rows(service.embed(texts))
    vectors = np.array(got["embedding"], dtype=np.float32)
    assert got["id"] == [r["id"] for r in records] and got["text"] == texts
    assert cosine_rows(vectors, want).min() >= 0.9999
    assert summary["this_run"]["tokens"] == sum(got["n_tokens"]) > 0

    import pyarrow as pa

    schema = got["table"].schema
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert schema.metadata[b"variant"] == b"onnx_optimized"
    assert schema.metadata[b"model"] == b"all-MiniLM-L6-v2"
    assert json.loads(schema.metadata[b"bulk_embed"])["normalized"] is True

    # The default (auto) variant is the service's; an int8 graph scales activations per batch, so the same
    # texts match exactly when each runs alone in both (with other batches: within parity, not bit-equal).
    summary, out = run_job(tmp_path, minilm_artifacts, src, "auto", batch_size=1, rows_per_part=64)
    auto = OnnxEmbedder(OnnxSettings(artifacts_dir=minilm_artifacts, threads=2))
    assert summary["variant"] == auto.variant
    auto.load()
    want = normalize_rows(np.concatenate([auto.embed([t]) for t in texts]))
    assert cosine_rows(np.array(read_output(out)["embedding"], dtype=np.float32), want).min() >= 0.9999


def test_every_format_in_a_folder_and_bad_rows_go_to_rejects(tmp_path, minilm_artifacts, local_ray):
    expected = write_inputs(tmp_path / "in")
    long_text = " ".join(r["text"] for r in corpus_texts(40))  # far over MiniLM's 256 tokens
    (tmp_path / "in" / "f.txt").write_text(long_text + "\n")
    expected["f.txt"] = [("f.txt:0", long_text)]

    summary, out = run_job(tmp_path, minilm_artifacts, tmp_path / "in", "truncating", rows_per_part=2)
    got = read_output(out)
    embedded = dict(zip(got["id"], got["text"], strict=True))
    rejects = {r["id"]: r for r in read_rejects(out)}
    for rows in expected.values():
        for row_id, value in rows:
            if value in REASONS:
                assert rejects[row_id]["reason"] == value and row_id not in embedded
            else:
                assert embedded[row_id] == value and row_id not in rejects
    assert (
        len(got["id"]) + len(rejects)
        == sum(len(rows) for rows in expected.values())
        == summary["output_totals"]["rows_in"]
    )
    assert got["n_tokens"][got["id"].index("f.txt:0")] == 256  # truncated at the model's maximum
    assert summary["this_run"]["reject_reasons"] == {
        "empty": 4,
        "not_text": 3,
        "invalid_json": 1,
        "missing_column": 2,
        "not_an_object": 1,
    }

    summary, out = run_job(tmp_path, minilm_artifacts, tmp_path / "in" / "f.txt", "strict", truncate=False)
    assert read_rejects(out)[0]["reason"] == "too_long" and "tokens > 256" in read_rejects(out)[0]["detail"]
    assert summary["output_totals"]["embedded"] == 0


def test_a_failing_part_fails_the_job_and_resume_finishes_it(tmp_path, minilm_artifacts, local_ray, monkeypatch):
    """A part whose rows do not match the plan (as if the file changed) fails in its worker: the job stops with
    JobFailed, the parts written stay, and --resume with a sound plan writes the rest."""
    import dataclasses

    from bulk_embed import job

    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in corpus_texts(60)))
    sound_plan = job.plan

    def broken_plan(*args, **kwargs):
        parts = sound_plan(*args, **kwargs)
        return [*parts[:-1], dataclasses.replace(parts[-1], start=parts[-2].start)]  # reads 40 lines, not 20

    monkeypatch.setattr(job, "plan", broken_plan)
    with pytest.raises(job.JobFailed, match="has 40 rows, planned 20.*kept: fix the cause and rerun with --resume"):
        run_job(tmp_path, minilm_artifacts, src, "out", rows_per_part=20, workers=1)
    assert "part-00000-00002" not in output.done_parts(tmp_path / "out")
    monkeypatch.setattr(job, "plan", sound_plan)
    summary, out = run_job(tmp_path, minilm_artifacts, src, "out", rows_per_part=20, workers=1, resume=True)
    assert summary["parts"]["written"] == 3 - summary["parts"]["done_before"]
    assert sorted(read_output(out)["id"]) == sorted(r["id"] for r in corpus_texts(60))


def test_the_same_command_runs_on_a_running_cluster(tmp_path, minilm_artifacts, local_ray):
    """--ray-address: the CLI joins the fixture's cluster as a second driver, and leaves it running."""
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in corpus_texts(150)))
    address = local_ray.get_runtime_context().gcs_address
    result = run_cli(
        "--artifacts",
        str(minilm_artifacts),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "out"),
        "--ray-address",
        address,
        "--rows-per-part",
        "50",
        "--no-progress",
        "--no-text",
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "150 texts embedded" in result.stdout
    assert read_output(tmp_path / "out")["table"].column_names == ["id", "n_tokens", "embedding"]
    assert local_ray.is_initialized() and local_ray.cluster_resources()["CPU"] == 2


def test_a_variant_that_fails_parity_is_refused(tmp_path, minilm_artifacts):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(minilm_artifacts, artifacts)
    manifest = json.loads((artifacts / "manifest.json").read_text())
    manifest["artifacts"]["onnx_int8"]["parity"].update(min_cosine=0.8, passes_parity=False)
    (artifacts / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli(
        "--artifacts",
        str(artifacts),
        "--input",
        str(CORPUS),
        "--output",
        str(tmp_path / "out"),
        "--variant",
        "onnx_int8",
        timeout=120,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: --variant onnx_int8: ") and "fails the gate (min cosine 0.8000 < 0.99" in line
    assert not (tmp_path / "out").exists()
