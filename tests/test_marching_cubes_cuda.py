"""The CUDA build: the kernel source compiles for Jetson Orin and H100, the driver-API launch table matches
the kernels, the back end is probed without a GPU, and (on a GPU) CUDA output equals the CPU output."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from kernels import backend_status, marching_cubes, marching_cubes_labels
from kernels.cuda import build as cuda_build
from kernels.cuda_backend import KERNEL_SIGNATURES
from kernels.mesh_ops import mesh_topology

NVCC = cuda_build.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed (CUDA toolkit absent)")
needs_gpu = pytest.mark.skipif(not backend_status().cuda_available, reason="no usable CUDA GPU/driver here")


@needs_nvcc
def test_fatbin_builds_for_orin_and_h100_with_ptx(tmp_path):
    out = cuda_build.build(tmp_path / "mc.fatbin", NVCC)
    entries = cuda_build.fatbin_entries(out)
    assert ("elf", 87) in entries and ("elf", 90) in entries and ("ptx", 90) in entries


def _c_type_kind(param: str) -> str:
    param = param.strip()
    if "*" in param:
        return "p"
    ctype = param.rsplit(" ", 1)[0]
    return {"int": "i", "float": "f", "long long": "q"}[ctype]


@needs_nvcc
def test_launch_signatures_match_the_kernel_source(tmp_path):
    pre = tmp_path / "pre.cu"
    subprocess.run([NVCC, "-E", "-x", "cu", "-I", str(cuda_build.INCLUDE), str(cuda_build.SOURCE), "-o", str(pre)],
                   check=True)
    found = {
        name: "".join(_c_type_kind(p) for p in params.split(","))
        for name, params in re.findall(r'extern "C" __attribute__\(\(global\)\) void (mc_\w+)\(([^)]*)\)', pre.read_text())
    }
    assert found == KERNEL_SIGNATURES


def test_scan_block_size_matches_the_kernel():
    from kernels import cuda_backend

    assert f"#define MC_SCAN_THREADS {cuda_backend._SCAN_THREADS}" in cuda_build.SOURCE.read_text()


def test_import_needs_no_gpu_and_auto_reports_a_reason():
    status = backend_status()
    assert status.selected == ("cuda" if status.cuda_available else "cpu")
    assert status.reason


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("closed", [False, True])
def test_cuda_output_equals_cpu_output(closed):
    rng = np.random.default_rng(3)
    vol = rng.random((40, 50, 130), dtype=np.float32)
    aff = np.diag([0.7, 0.8, 2.0, 1.0])
    cpu = marching_cubes(vol, 0.5, aff, backend="cpu", closed=closed, normals=True)
    gpu = marching_cubes(vol, 0.5, aff, backend="cuda", closed=closed, normals=True)
    assert np.array_equal(cpu.triangles, gpu.triangles)
    assert np.allclose(cpu.vertices, gpu.vertices, atol=1e-4)
    assert np.allclose(cpu.normals, gpu.normals, atol=1e-4)
    labels = rng.integers(0, 3, (30, 40, 70), dtype=np.uint8)
    cpu_l = marching_cubes_labels(labels, backend="cpu")
    gpu_l = marching_cubes_labels(labels, backend="cuda")
    for value in (1, 2):
        assert np.array_equal(cpu_l[value].triangles, gpu_l[value].triangles)
        assert np.allclose(cpu_l[value].vertices, gpu_l[value].vertices, atol=1e-4)
        assert mesh_topology(gpu_l[value]).watertight
