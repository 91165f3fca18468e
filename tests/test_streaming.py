"""Streaming fits read files in chunks: memory stays flat whatever the file size."""

import json
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, resource, sys
import numpy as np
import torch
from semid_index.quantize import ResidualKMeans
mm = np.load(sys.argv[1], mmap_mode="r")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = ResidualKMeans(3, 64, max_steps=10, train_size=20000, seed=0).fit(mm)
codes = model.encode(mm)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "after": after, "rows": int(codes.shape[0]),
                  "dead": sum(s.dead for s in model.quality(mm[:50000]).levels)}))
"""


def test_streaming_fit_of_a_large_memmap_keeps_memory_flat(tmp_path):
    rows, dim = 800_000, 128  # a 410 MB file
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((300, dim)).astype(np.float32)
    for a in range(0, rows, 100_000):
        lab = rng.integers(0, 300, 100_000)
        mm[a:a + 100_000] = centers[lab] + 0.5 * rng.standard_normal((100_000, dim), np.float32)
    mm.flush()
    del mm
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout)
    assert r["rows"] == rows
    grown = r["after"] - r["before"]
    # chunks of 64 MiB, a 10 MB training sample, codes (19 MB): far below the file itself
    assert grown < 0.6 * size, (grown, size)
    assert r["dead"] == 0
