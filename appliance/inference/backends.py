"""Inference backends, chosen once at start by probing what this machine can run.

Order of preference: a native TensorRT engine (built from the bundle's INT8 ONNX on the target and
cached next to the bundle, keyed by GPU name, TensorRT version and bundle digest), ONNX Runtime's
TensorRT/CUDA execution providers (when `onnxruntime-gpu` is installed and a GPU answers), and ONNX
Runtime on the CPU (INT8 or FP32, whichever this CPU runs faster; threads from the config) -- the
first-class path, always available.
Every probe that fails says why, in the log and in `BackendChoice.skipped`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.inference.bundle import ModelBundle, ModeSpec
from appliance.inference.cpu_precision import PrecisionChoice, choose_cpu_precision, cpu_fingerprint

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class BackendChoice:
    backend: Backend
    skipped: dict[str, str] = field(default_factory=dict)  # backend name -> reason
    precision: PrecisionChoice | None = None  # ONNX Runtime CPU: which file, and why


class OrtBackend:
    """ONNX Runtime session; `providers` decides CPU or GPU."""

    def __init__(self, model_path: Path, providers: list, threads: int = 2, name: str = "ort-cpu") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # no arena: it keeps the freed im2col buffers of every conv (full mode, INT8, 2 threads: peak RSS
        # 2.33 GB with it, 1.63 GB without; 44 s vs 56 s on the 275-slice chest)
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.name = name
        self.model_path = model_path

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def _ort_gpu_reason() -> str | None:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers and "TensorrtExecutionProvider" not in providers:
        return f"onnxruntime-gpu not installed (providers: {', '.join(providers)})"
    if not _gpu_name():
        return "no CUDA GPU answered (driver or device missing)"
    return None


def _gpu_name() -> str | None:
    try:
        from cuda.bindings import driver
    except ImportError:
        return None
    try:
        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return None
        err, dev = driver.cuDeviceGet(0)
        if int(err) != 0:
            return None
        err, raw = driver.cuDeviceGetName(64, dev)
        return raw.split(b"\0")[0].decode() if int(err) == 0 else None
    except Exception:  # no libcuda.so: the bindings import but cannot load the driver
        return None


def tensorrt_engine_path(bundle: ModelBundle, onnx_name: str, gpu: str, trt_version: str) -> Path:
    """Where the engine for this GPU / TensorRT / bundle lives (next to the bundle, in engines/)."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(onnx_name).stem}-{gpu}-trt{trt_version}-{bundle.digest[:12]}")
    return bundle.root / "engines" / f"{key}.engine"


def _tensorrt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt Python package not installed"
    if not _gpu_name():
        return "no CUDA GPU answered (driver or device missing)"
    return None


def choose_backend(bundle: ModelBundle, spec: ModeSpec, *, preference: str = "auto", threads: int = 2,
                   precision: str = "auto", precision_cache: Path | None = None) -> BackendChoice:
    """Probe in preference order and return the first backend that starts. `preference`: auto |
    tensorrt | ort-gpu | cpu. `precision`: int8, fp32, or auto. TensorRT always gets the INT8 QDQ model;
    ONNX Runtime GPU gets INT8 where its TensorRT provider runs it, else FP32; on the CPU, auto is
    whichever of the two this CPU runs faster (`cpu_precision`: measured once, cached in
    `precision_cache`, default the bundle's engines/: small INT8 convs can be slower than FP32)."""
    skipped: dict[str, str] = {}
    if precision == "int8" and not spec.int8:
        precision = "fp32"
    order = {"auto": ["tensorrt", "ort-gpu", "ort-cpu"], "tensorrt": ["tensorrt", "ort-cpu"],
             "ort-gpu": ["ort-gpu", "ort-cpu"], "cpu": ["ort-cpu"]}.get(preference)
    if order is None:
        raise ValueError(f"unknown backend preference {preference!r}")
    for name in order:
        if name == "tensorrt":
            reason = _tensorrt_reason()
            if reason is None:
                try:
                    from appliance.inference.tensorrt_backend import TensorRTBackend

                    return BackendChoice(TensorRTBackend(bundle, spec.int8 or spec.fp32), skipped)
                except Exception as exc:  # an engine that fails to build must not stop the node
                    reason = f"engine build failed: {exc}"
            skipped[name] = reason
        elif name == "ort-gpu":
            reason = _ort_gpu_reason()
            if reason is None:
                import onnxruntime as ort

                avail = ort.get_available_providers()
                providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in avail]
                gpu_precision = precision
                if gpu_precision == "auto":
                    gpu_precision = "int8" if spec.int8 and "TensorrtExecutionProvider" in avail else "fp32"
                model = spec.int8 if gpu_precision == "int8" else spec.fp32
                return BackendChoice(OrtBackend(bundle.path(model), providers + ["CPUExecutionProvider"],
                                                threads, "ort-gpu"), skipped)
            skipped[name] = reason
        else:
            if precision == "auto":
                how = choose_cpu_precision(bundle, spec, threads, cache_dir=precision_cache)
            else:
                how = PrecisionChoice(precision, {}, "requested", cpu_fingerprint())  # type: ignore[arg-type]
            model = spec.int8 if how.precision == "int8" else spec.fp32
            backend = OrtBackend(bundle.path(model), ["CPUExecutionProvider"], threads, f"ort-cpu-{how.precision}")
            for other, why in skipped.items():
                log.info("event=inference_backend_skipped backend=%s reason=%r", other, why)
            log.info("event=inference_backend backend=%s model=%s threads=%d precision_source=%s ms_per_patch=%s "
                     "cpu=%r", backend.name, model, threads, how.source, json.dumps(how.ms_per_patch), how.cpu)
            return BackendChoice(backend, skipped, how)
    raise RuntimeError(f"no inference backend available: {skipped}")
