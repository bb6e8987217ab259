"""A CT-sized volume (512 x 512 x 400) is meshed without holding more than one extra copy of it.

Each case runs in a fresh interpreter so ru_maxrss (the process's peak resident memory) measures only
that case: the peak after building the volume slab by slab is the baseline, the peak after meshing
must not exceed it by a full copy of the volume.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys, time
import numpy as np
from kernels import marching_cubes, marching_cubes_labels
kind = sys.argv[1]
nz, ny, nx = 400, 512, 512
dtype = np.float32 if kind == "float32" else np.uint8
vol = np.empty((nz, ny, nx), dtype)
y, x = np.ogrid[:ny, :nx]
for k in range(nz):  # slab by slab: no full-size temporaries in the baseline
    r = np.sqrt((x - 256.0) ** 2 + (y - 250.0) ** 2 + ((k - 200.0) * 1.2) ** 2)
    vol[k] = (180.0 - r) if kind == "float32" else (r < 180.0) * 2
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
if kind == "float32":
    mesh = marching_cubes(vol, 0.0)
else:
    mesh = marching_cubes_labels(vol, [2])[2]
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak, "volume": vol.nbytes, "triangles": len(mesh.triangles),
                  "volume_mm3": mesh.signed_volume(), "seconds": seconds}))
"""


@pytest.mark.parametrize("kind", ["float32", "uint8_labels"])
def test_ct_sized_volume_needs_less_than_one_extra_copy(kind):
    out = subprocess.run([sys.executable, "-c", SCRIPT, kind], check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    extra = res["peak"] - res["base"]
    assert extra < res["volume"], res
    assert res["triangles"] > 1_000_000
    expected = 4 / 3 * 3.141592653589793 * 180.0**3 / 1.2
    assert abs(res["volume_mm3"] - expected) / expected < 0.01, res
