"""Marching cubes: isonode (CPU 1 thread / all threads, CUDA when present) vs skimage and VTK Flying Edges.

Same run, same volumes, min/median of a few repeats. Cases: 256^3 and 512^3 synthetic blob fields and the
bone iso-surface (300 HU) of a real chest CT (../shared/data/lidc_idri_0314_chest_1mm).
Run: python -m bench.bench_marching_cubes (or `make bench`).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import backend_status, marching_cubes, marching_cubes_labels
from kernels.backend import cpu_threads

CT_CASE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lidc_idri_0314_chest_1mm" / "ct_dicom"
BONE_HU = 300.0


@dataclass
class Row:
    case: str
    method: str
    times_ms: list[float]
    triangles: int
    voxels: int

    @property
    def best(self) -> float:
        return min(self.times_ms)


def blob_field(n: int) -> np.ndarray:
    """Smooth periodic blobs (many surface sheets, like trabecular bone), built slab by slab."""
    out = np.empty((n, n, n), np.float32)
    y, x = np.ogrid[:n, :n]
    sx, sy = np.sin(x / 9.0).astype(np.float32), np.cos(y / 11.0).astype(np.float32)
    for k in range(n):
        out[k] = sx * sy + np.float32(np.sin(k / 7.0)) * 0.8
    return out


def load_ct() -> tuple[np.ndarray, np.ndarray] | str:
    """(HU volume (z, y, x), affine) or the reason it is unavailable."""
    if not CT_CASE.is_dir():
        return f"{CT_CASE} not found"
    files = sorted(CT_CASE.glob("*.dcm"))
    try:
        from dicom_node.volume import assemble_volume

        vol = assemble_volume(files)
        return vol.array, vol.affine
    except ImportError:
        pass
    import pydicom  # fallback: axial series, sorted by IPP z, rescaled to HU

    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    arr = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    sx, sy = (float(v) for v in dss[0].PixelSpacing[::-1])
    sz = float(dss[1].ImagePositionPatient[2]) - float(dss[0].ImagePositionPatient[2])
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = [float(v) for v in dss[0].ImagePositionPatient]
    return arr, aff


def timed(fn: Callable[[], int], repeats: int) -> tuple[list[float], int]:
    times, tris = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tris = fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times, tris


def vtk_runner(vol: np.ndarray, level: float, threads: int) -> Callable[[], int]:
    import vtk
    from vtk.util import numpy_support

    img = vtk.vtkImageData()
    img.SetDimensions(vol.shape[2], vol.shape[1], vol.shape[0])
    scalars = numpy_support.numpy_to_vtk(vol.ravel(), deep=False)
    img.GetPointData().SetScalars(scalars)
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, level)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()

    def run() -> int:
        vtk.vtkSMPTools.Initialize(threads)
        fe.Modified()
        fe.Update()
        _ = scalars  # keep the zero-copy array alive
        return fe.GetOutput().GetNumberOfCells()

    return run


def bench_case(case: str, vol: np.ndarray, level: float, affine: np.ndarray | None, repeats: int) -> list[Row]:
    rows: list[Row] = []
    nthreads = cpu_threads()

    def add(method: str, fn: Callable[[], int], reps: int = repeats) -> None:
        times, tris = timed(fn, reps)
        rows.append(Row(case, method, times, tris, vol.size))

    add("isonode cpu 1 thread", lambda: len(marching_cubes(vol, level, affine, "cpu", threads=1).triangles))
    add(f"isonode cpu {nthreads} threads", lambda: len(marching_cubes(vol, level, affine, "cpu").triangles))
    try:
        import vtk  # noqa: F401 - the reference; the GPU machine has none (make gpu-check)

        add("vtkFlyingEdges3D 1 thread", vtk_runner(vol, level, 1))
        add(f"vtkFlyingEdges3D {nthreads} threads", vtk_runner(vol, level, nthreads))
    except ImportError:
        print(f"{case}: vtk not installed, VTK rows skipped")
    from skimage.measure import marching_cubes as sk_mc

    add("skimage (lewiner)", lambda: len(sk_mc(vol, level)[1]), reps=1 if vol.size > 64e6 else repeats)
    status = backend_status()
    if status.cuda_available:
        from kernels import cuda_backend

        runner = cuda_backend.get_runner()
        kernel_ms: list[float] = []

        def gpu() -> int:
            n = len(marching_cubes(vol, level, affine, "cuda").triangles)
            kernel_ms.append(runner.last_timing["kernel_ms"])
            return n

        add(f"isonode cuda end-to-end ({status.device})", gpu)
        rows.append(Row(case, "isonode cuda kernels only", kernel_ms, rows[-1].triangles, vol.size))
    return rows


def bench_labels(shape: tuple[int, int, int], repeats: int) -> list[Row]:
    """All labels of a CT-sized label map in one pass (what the pipeline runs), CPU vs CUDA."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    for value, (cz, cy, cx, r) in enumerate([(0.5, 0.5, 0.5, 0.45), (0.5, 0.5, 0.3, 0.2), (0.5, 0.5, 0.7, 0.2),
                                            (0.7, 0.4, 0.5, 0.08), (0.4, 0.6, 0.5, 0.15)], start=1):
        d = ((z / shape[0] - cz) ** 2 + (y / shape[1] - cy) ** 2 + (x / shape[2] - cx) ** 2) ** 0.5
        labels[d < r] = value
    case = f"labels {'x'.join(map(str, shape))} uint8, 5 labels"
    rows = []
    for method, backend in (("isonode cpu labels", "cpu"), ("isonode cuda labels", "cuda")):
        if backend == "cuda" and not backend_status().cuda_available:
            continue
        times, tris = timed(lambda b=backend: sum(len(m.triangles) for m in marching_cubes_labels(
            labels, None, np.eye(4), b).values()), repeats)
        rows.append(Row(case, method, times, tris, labels.size))
    return rows


def print_table(rows: list[Row]) -> None:
    ref = {r.case: r.best for r in rows if r.method == "vtkFlyingEdges3D 1 thread"}
    head = f"{'case':<34} {'method':<44} {'min ms':>9} {'med ms':>9} {'Mvox/s':>8} {'triangles':>10} {'vs VTK 1t':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = r.voxels / r.best / 1e3
        rel = f"{ref[r.case] / r.best:>8.2f}x" if r.case in ref else f"{'-':>9s}"
        print(f"{r.case:<34} {r.method:<44} {r.best:>9.1f} {statistics.median(r.times_ms):>9.1f} {speed:>8.0f} "
              f"{r.triangles:>10d} {rel}")


def main(argv: list[str] | None = None) -> int:
    """`--gpu`: the part `make gpu-check` runs on a lent GPU machine (synthetic volumes only: the shared
    CT does not travel there)."""
    gpu_only = "--gpu" in (argv or [])
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    status = backend_status()
    print(f"marching cubes benchmark: cpu threads={cpu_threads()} backend(auto)={status.selected} ({status.reason})")
    rows: list[Row] = []
    for n in (256, 512):
        vol = blob_field(n)
        rows += bench_case(f"blobs {n}^3 float32", vol, 0.1, None, repeats)
        del vol
    rows += bench_labels((300, 512, 512), repeats)
    ct = "not run with --gpu" if gpu_only else load_ct()
    if isinstance(ct, str):
        print(f"CT case skipped: {ct}")
    else:
        arr, aff = ct
        rows += bench_case(f"CT chest {'x'.join(map(str, arr.shape))} {arr.dtype} 300HU", arr, BONE_HU, aff, repeats)
    print()
    print_table(rows)
    if not status.cuda_available:
        print(f"\nGPU section skipped: {status.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
