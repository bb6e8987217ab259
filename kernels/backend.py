"""Back-end selection for the marching-cubes kernels: probe the GPU once, fall back to the CPU.

The probe result is cached per process (the GPU does not appear at run time); `backend_status()` is
what the status page shows.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    """Which back end `backend="auto"` resolves to, and why (for logs and the status page)."""

    selected: str
    cuda_available: bool
    reason: str
    device: str | None = None
    cpu_threads: int = 1


def cpu_threads() -> int:
    from kernels import _mc_cpu

    return int(_mc_cpu.max_threads())


@functools.lru_cache(maxsize=1)
def _probe() -> BackendStatus:
    from kernels import cuda_backend

    threads = cpu_threads()
    try:
        runner = cuda_backend.get_runner()
    except cuda_backend.CudaUnavailableError as exc:
        status = BackendStatus("cpu", False, f"cuda unavailable: {exc}", None, threads)
    else:
        status = BackendStatus("cuda", True, "cuda kernel loaded", runner.device_name, threads)
    log.info(
        "event=mc_backend_selected backend=%s cuda=%s device=%s cpu_threads=%d reason=%r",
        status.selected, status.cuda_available, status.device, status.cpu_threads, status.reason,
    )
    return status


def backend_status() -> BackendStatus:
    """The probed back-end status (probes on first call)."""
    return _probe()


def select_backend(backend: str = "auto") -> str:
    """Resolve "auto" | "cpu" | "cuda" to the back end that will run; "cuda" fails loudly if unusable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    status = _probe()
    if backend == "cuda" and not status.cuda_available:
        raise RuntimeError(f"backend='cuda' requested but {status.reason}")
    return status.selected
