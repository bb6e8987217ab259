"""CUDA back end: runs the kernels of cuda/mc_kernels.cu through the driver API (cuda-python).

Nothing here touches the GPU at import time; `get_runner()` probes once per process (driver library,
device, fatbin, module load) and raises CudaUnavailableError with the reason when any step fails, which is
how `backend="auto"` falls back to the CPU. The passes are the same as on the CPU (mc_core.h):
classify -> count -> scan -> (read totals, allocate) -> emit, all on one stream.

Launch arguments are checked against KERNEL_SIGNATURES, which a test compares with the preprocessed
kernel source, so a signature drift is caught on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FATBIN = Path(__file__).resolve().parent / "cuda" / "mc_kernels.fatbin"

# Parameter kinds per kernel: p = pointer, i = int, q = long long, f = float.
_CLASSIFY = "piiiiiiiifp"
_EMIT_SCALAR = "piiiiippppiiifpippp"
KERNEL_SIGNATURES: dict[str, str] = {
    **{f"mc_classify_{s}": _CLASSIFY for s in ("f32", "f64", "u8", "i16", "u16")},
    "mc_classify_label_u8": "piiiiiiiiip",
    "mc_count": "piiiiip",
    "mc_scan": "pqppp",
    **{f"mc_emit_{s}": _EMIT_SCALAR for s in ("f32", "f64", "u8", "i16", "u16")},
    "mc_emit_bits": "piiiiippppippp",
}
_SUFFIX = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
    np.dtype(np.uint8): "u8",
    np.dtype(np.int16): "i16",
    np.dtype(np.uint16): "u16",
}
_ARG_DTYPE = {"p": np.uint64, "i": np.int32, "q": np.int64, "f": np.float32}
_ROW_BLOCK = 128
_CLASSIFY_BLOCK = 256  # 8 warps, one padded row each
_SCAN_THREADS = 1024  # must equal MC_SCAN_THREADS in mc_kernels.cu


class CudaUnavailableError(RuntimeError):
    """No usable GPU: missing driver/device/fatbin or the module failed to load."""


class CudaError(RuntimeError):
    """A driver API call failed while running."""


def get_runner() -> CudaRunner:
    """The process-wide runner (probed once); raises CudaUnavailableError with the reason."""
    runner = _probe()
    if isinstance(runner, str):
        raise CudaUnavailableError(runner)
    return runner


@functools.lru_cache(maxsize=1)
def _probe() -> CudaRunner | str:
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError as exc:
        return f"cuda-bindings not importable ({exc})"
    if not FATBIN.is_file():
        return f"fatbin not built ({FATBIN.name}; run python kernels/cuda/build.py)"
    try:
        return CudaRunner(FATBIN.read_bytes())
    except Exception as exc:  # any driver failure means "use the CPU"
        return f"{type(exc).__name__}: {exc}"


def _check(result: object) -> object:
    """Unwrap cuda-python's (CUresult, *values) return, raising CudaError on failure."""
    from cuda.bindings import driver as cu

    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        name = cu.cuGetErrorName(err)[1]
        raise CudaError(name.decode() if isinstance(name, bytes) else str(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _blocks(n: int, per_block: int) -> int:
    return max(1, -(-n // per_block))


class _DeviceBuffers:
    """Allocations of one call, freed together whatever happens."""

    def __init__(self) -> None:
        self._ptrs: list = []

    def alloc(self, nbytes: int) -> int:
        from cuda.bindings import driver as cu

        ptr = _check(cu.cuMemAlloc(max(int(nbytes), 1)))
        self._ptrs.append(ptr)
        return int(ptr)

    def free_all(self) -> None:
        from cuda.bindings import driver as cu

        for ptr in self._ptrs:
            cu.cuMemFree(ptr)
        self._ptrs.clear()


class CudaRunner:
    """One GPU, one loaded module, one stream; calls are serialised by a lock."""

    def __init__(self, fatbin: bytes) -> None:
        from cuda.bindings import driver as cu

        _check(cu.cuInit(0))
        if _check(cu.cuDeviceGetCount()) < 1:
            raise CudaUnavailableError("no CUDA device")
        self._dev = _check(cu.cuDeviceGet(0))
        self.device_name = _check(cu.cuDeviceGetName(256, self._dev)).split(b"\0")[0].decode()
        self._ctx = _check(cu.cuDevicePrimaryCtxRetain(self._dev))
        self._lock = threading.Lock()
        self.last_timing: dict[str, float] = {}
        with self._context():
            self._image = np.frombuffer(fatbin, dtype=np.uint8).copy()  # driver reads it during the load
            self._module = _check(cu.cuModuleLoadData(self._image.ctypes.data))
            self._fn = {name: _check(cu.cuModuleGetFunction(self._module, name.encode())) for name in KERNEL_SIGNATURES}
            self._stream = _check(cu.cuStreamCreate(0))
        log.info("event=cuda_module_loaded device=%r kernels=%d", self.device_name, len(self._fn))

    # ---- public passes (same argument conventions as kernels._mc_cpu) ----

    def scalar(self, vol: np.ndarray, level: float, closed: bool, m34: np.ndarray, n33: np.ndarray, flip: bool,
               with_normals: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        suffix = _SUFFIX.get(vol.dtype)
        if suffix is None or not vol.flags.c_contiguous:
            raise TypeError(f"cuda back end needs a C-contiguous {list(_SUFFIX)} volume, got {vol.dtype}")
        grid = _Grid(vol.shape, closed)
        with self._lock, self._context():
            bufs = _DeviceBuffers()
            try:
                t0 = time.perf_counter()
                d_vol = bufs.alloc(vol.nbytes)
                self._h2d(d_vol, vol)
                start, end = self._events()
                self._record(start)
                d_bits = bufs.alloc(grid.nrows * grid.words * 8)
                self._launch(f"mc_classify_{suffix}", _blocks(grid.nrows * 32, _CLASSIFY_BLOCK), _CLASSIFY_BLOCK,
                             d_vol, *grid.real, *grid.padded, float(level), d_bits)
                field = (d_vol, *grid.real, float(level))
                out = self._count_scan_emit(bufs, grid, d_bits, f"mc_emit_{suffix}", field, m34, n33, flip,
                                            with_normals, end)
                self._timing(start, end, t0)
                return out
            finally:
                bufs.free_all()

    def labels(self, vol: np.ndarray, values: list[int], closed: bool, m34: np.ndarray, n33: np.ndarray, flip: bool,
               with_normals: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        if vol.dtype != np.uint8 or not vol.flags.c_contiguous:
            raise TypeError("cuda label back end needs a C-contiguous uint8 volume")
        grid = _Grid(vol.shape, closed)
        with self._lock, self._context():
            bufs = _DeviceBuffers()
            try:
                t0 = time.perf_counter()
                d_vol = bufs.alloc(vol.nbytes)
                self._h2d(d_vol, vol)
                d_bits = bufs.alloc(grid.nrows * grid.words * 8)
                start, end = self._events()
                self._record(start)
                outs = []
                for value in values:
                    self._launch("mc_classify_label_u8", _blocks(grid.nrows * 32, _CLASSIFY_BLOCK), _CLASSIFY_BLOCK,
                                 d_vol, *grid.real, *grid.padded, int(value), d_bits)
                    outs.append(self._count_scan_emit(bufs, grid, d_bits, "mc_emit_bits", (), m34, n33, flip,
                                                      with_normals, end))
                self._timing(start, end, t0)
                return outs
            finally:
                bufs.free_all()

    # ---- helpers ----

    def _count_scan_emit(self, bufs: _DeviceBuffers, grid: _Grid, d_bits: int, emit: str, field: tuple,
                         m34: np.ndarray, n33: np.ndarray, flip: bool, with_normals: bool, end_event: object
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        n = grid.nrows
        d_counts = bufs.alloc(n * 4 * 4)
        self._launch("mc_count", _blocks(n, _ROW_BLOCK), _ROW_BLOCK, d_bits, *grid.padded, d_counts)
        d_vbase, d_tbase, d_tot = bufs.alloc(n * 8), bufs.alloc(n * 8), bufs.alloc(16)
        self._launch("mc_scan", 1, _SCAN_THREADS, d_counts, n, d_vbase, d_tbase, d_tot)
        totals = np.zeros(2, dtype=np.uint64)
        self._d2h(totals, d_tot)  # synchronises the stream
        nv, nt = int(totals[0]), int(totals[1])
        if nv > 0xFFFFFFFF:
            raise CudaError("mesh has more than 2^32 vertices")
        xform = np.ascontiguousarray(np.concatenate([m34.ravel(), n33.ravel()]), dtype=np.float64)
        d_xf = bufs.alloc(xform.nbytes)
        self._h2d(d_xf, xform)
        d_verts, d_tris = bufs.alloc(nv * 12), bufs.alloc(nt * 12)
        d_norm = bufs.alloc(nv * 12) if with_normals else 0
        self._launch(emit, _blocks(n, _ROW_BLOCK), _ROW_BLOCK, d_bits, *grid.padded, d_counts, d_vbase, d_tbase,
                     *field, d_xf, int(bool(flip)), d_verts, d_norm, d_tris)
        self._record(end_event)
        verts = np.empty((nv, 3), dtype=np.float32)
        tris = np.empty((nt, 3), dtype=np.uint32)
        normals = np.empty((nv, 3), dtype=np.float32) if with_normals else None
        self._d2h(verts, d_verts)
        self._d2h(tris, d_tris)
        if normals is not None:
            self._d2h(normals, d_norm)
        return verts, tris, normals

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        from cuda.bindings import driver as cu

        _check(cu.cuCtxPushCurrent(self._ctx))
        try:
            yield
        finally:
            _check(cu.cuCtxPopCurrent())

    def _launch(self, name: str, grid_x: int, block_x: int, *args: float) -> None:
        from cuda.bindings import driver as cu

        kinds = KERNEL_SIGNATURES[name]
        if len(kinds) != len(args):
            raise TypeError(f"{name} takes {len(kinds)} arguments, got {len(args)}")
        holders = [np.array([int(a) if k in "piq" else a], dtype=_ARG_DTYPE[k]) for k, a in zip(kinds, args, strict=True)]
        params = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
        _check(cu.cuLaunchKernel(self._fn[name], grid_x, 1, 1, block_x, 1, 1, 0, self._stream, params.ctypes.data, 0))

    def _h2d(self, dst: int, src: np.ndarray) -> None:
        from cuda.bindings import driver as cu

        if src.nbytes:
            _check(cu.cuMemcpyHtoDAsync(dst, src.ctypes.data, src.nbytes, self._stream))
            _check(cu.cuStreamSynchronize(self._stream))

    def _d2h(self, dst: np.ndarray, src: int) -> None:
        from cuda.bindings import driver as cu

        if dst.nbytes:
            _check(cu.cuMemcpyDtoHAsync(dst.ctypes.data, src, dst.nbytes, self._stream))
        _check(cu.cuStreamSynchronize(self._stream))

    def _events(self) -> tuple[object, object]:
        from cuda.bindings import driver as cu

        return _check(cu.cuEventCreate(0)), _check(cu.cuEventCreate(0))

    def _record(self, event: object) -> None:
        from cuda.bindings import driver as cu

        _check(cu.cuEventRecord(event, self._stream))

    def _timing(self, start: object, end: object, t0: float) -> None:
        """GPU time from classify to the last emit (events) and wall time incl. transfers."""
        from cuda.bindings import driver as cu

        _check(cu.cuEventSynchronize(end))
        gpu_ms = float(_check(cu.cuEventElapsedTime(start, end)))
        cu.cuEventDestroy(start)
        cu.cuEventDestroy(end)
        self.last_timing = {"kernel_ms": gpu_ms, "total_ms": 1e3 * (time.perf_counter() - t0)}


class _Grid:
    """Real (rx, ry, rz) and padded (nx, ny, nz, pad, words) geometry as kernel arguments."""

    def __init__(self, shape: tuple[int, ...], closed: bool) -> None:
        rz, ry, rx = (int(s) for s in shape)
        pad = 1 if closed else 0
        nx, ny, nz = rx + 2 * pad, ry + 2 * pad, rz + 2 * pad
        self.words = (nx + 63) // 64
        self.nrows = nz * ny
        self.real = (rx, ry, rz)
        self.padded = (nx, ny, nz, pad, self.words)
