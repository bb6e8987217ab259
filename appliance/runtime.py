"""The compute runtime: the model bundle, one inference backend per mode and the marching-cubes backend,
chosen once at start by probing (a node's workers, `isonode process` and `isonode segment` share it).

Choosing at start, not per job, means a missing GPU, a corrupt bundle or a CPU precision that needs
timing is found before the first study arrives, and every job of a run uses the same backends (which
its job record and log line name).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.inference.backends import Backend, BackendChoice, choose_backend
from appliance.inference.bundle import ModelBundle, load_bundle
from dicom_node.logfmt import log_event
from kernels import backend_status, select_backend

logger = logging.getLogger(__name__)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Runtime:
    bundle: ModelBundle
    inference: dict[str, BackendChoice]  # mode -> backend chosen for it
    mc_backend: str  # "cpu" | "cuda"
    mc_reason: str
    threads: int
    start_s: float = 0.0

    def backend(self, mode: str) -> Backend:
        if mode not in self.inference:
            raise KeyError(f"runtime has no backend for mode {mode!r} (has {sorted(self.inference)})")
        return self.inference[mode].backend

    def describe_mode(self, mode: str) -> dict[str, str]:
        choice = self.inference[mode]
        return {"inference": choice.backend.name,
                "precision": choice.precision.describe(cpu=False) if choice.precision else "",
                "marching_cubes": self.mc_backend}

    def describe(self) -> dict[str, Any]:
        """For the start-up log line, `isonode status` and the status page."""
        return {
            "bundle": {"name": self.bundle.manifest.name, "version": self.bundle.manifest.version,
                       "path": str(self.bundle.root)},
            "inference": {mode: {"backend": c.backend.name,
                                 "precision": c.precision.describe() if c.precision else None,
                                 "not_eligible": c.precision.ineligible if c.precision else {},
                                 "skipped": c.skipped} for mode, c in self.inference.items()},
            "marching_cubes": {"backend": self.mc_backend, "reason": self.mc_reason},
            "threads": self.threads,
            "start_s": round(self.start_s, 2),
        }


def build_runtime(bundle_path: Path, *, modes: Sequence[str] = ("preview", "full"), inference: str = "auto",
                  precision: str = "auto", mc_backend: str = "auto", threads: int = 0) -> Runtime:
    """Load and verify the bundle, pick each mode's inference backend and the marching-cubes backend.
    Raises BundleError (bad bundle) or RuntimeError (a forced backend that cannot run)."""
    t = time.perf_counter()
    threads = threads or cpu_count()
    bundle = load_bundle(bundle_path)
    choices = {mode: choose_backend(bundle, bundle.mode(mode), mode=mode, preference=inference, threads=threads,
                                    precision=precision) for mode in modes}
    mc = select_backend(mc_backend)
    status = backend_status() if mc_backend != "cpu" else None
    reason = "requested" if status is None else status.reason
    runtime = Runtime(bundle, choices, mc, reason, threads, time.perf_counter() - t)
    info = runtime.describe()
    log_event(logger, "runtime.ready", bundle=f"{bundle.manifest.name} {bundle.manifest.version}",
              inference={m: v["backend"] for m, v in info["inference"].items()},
              precision={m: v["precision"] for m, v in info["inference"].items()},
              marching_cubes=mc, mc_reason=reason, threads=threads, seconds=round(runtime.start_s, 2))
    return runtime
