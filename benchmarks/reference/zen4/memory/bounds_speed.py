"""Speed with and without the memory bounds, one variant per process (oneDNN reads its cache capacity once).

    python benchmarks/reference/zen4/memory/bounds_speed.py VARIANT bounded|default [ARTIFACTS]

Prints one JSON line: the medians of the benchmark's fixed shapes (b1_short: 40 calls, b32_mixed: 10 calls), each
call followed by what the service does between calls (a heap trim at most once a second, when bounded).
"""

import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.inputs import build_inputs
from runtime.manifest import Manifest
from runtime.memory import HeapTrimmer, MemoryBounds
from runtime.tokenization import TextTokenizer
from runtime.variants import variant as variant_row

name, mode = sys.argv[1], sys.argv[2]
artifacts = Path(sys.argv[3] if len(sys.argv) > 3 else "artifacts/all-mpnet-base-v2")
bounds = MemoryBounds() if mode == "bounded" else MemoryBounds(trim_interval_s=0)
if mode == "bounded":
    bounds.apply()
manifest = Manifest.load(artifacts)
runner = variant_row(name).load(artifacts, manifest, threads=2)
trimmer = HeapTrimmer(bounds.trim_interval_s)
tokenizer = TextTokenizer(artifacts / manifest.tokenizer.path, manifest.model.max_seq_length)
cases = {case.name: case for case in build_inputs(tokenizer)}
result = {"variant": name, "mode": mode}
for case_name, calls in (("b1_short", 40), ("b32_mixed", 10)):
    case = cases[case_name]
    for _ in range(3):  # warm-up
        runner.run(case.input_ids, case.attention_mask)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        runner.run(case.input_ids, case.attention_mask)
        times.append((time.perf_counter() - started) * 1000)
        trimmer.maybe_trim()
    result[f"{case_name}_ms"] = round(statistics.median(times), 2)
print(json.dumps(result), flush=True)
