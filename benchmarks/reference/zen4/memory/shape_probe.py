"""In-process: RSS against the number of distinct (batch, length) shapes one variant has run.

    python benchmarks/reference/zen4/memory/shape_probe.py VARIANT CONFIG SECONDS [MAX_TOKENS]

Random shapes (batch 1-32, length 8-300, batch x length <= MAX_TOKENS, default 1,024) of random token ids, one
model call each, for SECONDS; every 20 calls a JSON line: calls, distinct shapes, RSS, mappings, real tokens/s.
CONFIG words: `cacheN` sets OpenVINO's CPU_RUNTIME_CACHE_CAPACITY to N; `trim` calls malloc_trim(0) after every
call, `ptrim` at most once a second; `lbucket` pads lengths to buckets of about 1/8 of the length. oneDNN's and
ideep's capacities come from the environment (ONEDNN_PRIMITIVE_CACHE_CAPACITY, LRU_CACHE_CAPACITY); an allocator
from LD_PRELOAD.
"""

import ctypes
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from runtime.manifest import Manifest
from runtime.variants import variant as variant_row

name, config, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
artifacts = Path("artifacts/all-mpnet-base-v2")
row = variant_row(name)
if row.engine == "openvino" and "cache" in config:
    import runtime.memory

    runtime.memory._capacity = int(config.split("cache")[1].split("+")[0])
runner = row.load(artifacts, Manifest.load(artifacts), 2)
libc = ctypes.CDLL("libc.so.6")


def rss_mb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return round(int(line.split()[1]) / 1024)
    return 0


def mappings() -> int:
    return sum(1 for _ in open("/proc/self/maps"))


def length_bucket(length: int) -> int:
    bucket = 8
    while bucket < length:
        bucket += max(8, 2 ** (max(bucket.bit_length() - 4, 3)))
    return bucket


rng = random.Random(0)
seen: set[tuple[int, int]] = set()
calls, real_tokens, last_trim, started = 0, 0, 0.0, time.time()
print(json.dumps({"variant": name, "config": config, "loaded_rss_mb": rss_mb()}), flush=True)
while time.time() - started < seconds:
    rows = rng.randint(1, 32)
    length = rng.randint(8, max(8, min(300, max_tokens // rows)))
    real_tokens += rows * length
    if "lbucket" in config:
        length = length_bucket(length)
    ids = np.array([[0] + [rng.randint(1000, 20000) for _ in range(length - 2)] + [2] for _ in range(rows)])
    runner.run(ids, np.ones_like(ids))
    calls += 1
    seen.add((rows, length))
    if "ptrim" in config:
        if time.time() - last_trim > 1:
            libc.malloc_trim(0)
            last_trim = time.time()
    elif "trim" in config:
        libc.malloc_trim(0)
    if calls % 20 == 0:
        line = {"calls": calls, "shapes": len(seen), "rss_mb": rss_mb(), "mappings": mappings()}
        print(json.dumps({**line, "s": round(time.time() - started)}), flush=True)
elapsed = time.time() - started
print(
    json.dumps(
        {
            "end": True,
            "calls": calls,
            "shapes": len(seen),
            "rss_mb": rss_mb(),
            "real_tokens_per_s": round(real_tokens / elapsed),
        }
    ),
    flush=True,
)
