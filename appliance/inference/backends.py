"""Inference backends, chosen once at start by probing what this machine can run.

Order of preference: a native TensorRT engine (built from the bundle's INT8 ONNX on the target and
cached next to the bundle, keyed by GPU name, TensorRT version and bundle digest), ONNX Runtime's
TensorRT/CUDA execution providers (when `onnxruntime-gpu` is installed and a GPU answers), and the CPU:
whichever runtime x precision (ONNX Runtime INT8/FP32, OpenVINO FP32/BF16/INT8) this CPU runs fastest
among those that passed the bundle's accuracy check (`accuracy`, `cpu_precision`; threads from the
config). ONNX Runtime FP32 is the reference and the fallback, always available.
Every probe that fails says why, in the log and in `BackendChoice.skipped`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.inference.accuracy import eligibility
from appliance.inference.bundle import ModelBundle, ModeSpec
from appliance.inference.cpu_precision import (
    Candidate,
    PrecisionChoice,
    choose_cpu_precision,
    cpu_candidates,
    cpu_fingerprint,
)
from appliance.inference.openvino_backend import OpenVinoBackend, openvino_version

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class BackendChoice:
    backend: Backend
    skipped: dict[str, str] = field(default_factory=dict)  # backend name -> reason
    precision: PrecisionChoice | None = None  # CPU: which runtime and file, and why


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


def cpu_backend(candidate: Candidate, path: Path, threads: int, cache_dir: Path | None = None) -> Backend:
    """The backend that runs `candidate` on the model file `path`."""
    if candidate.runtime == "openvino":
        return OpenVinoBackend(path, candidate.precision, threads, cache_dir)
    return OrtBackend(path, ["CPUExecutionProvider"], threads, candidate.key)


CPU_PREFERENCES = {"cpu": None, "ort-cpu": "ort-cpu", "openvino": "openvino"}  # preference -> runtime (None: any)


def choose_cpu(bundle: ModelBundle, mode: str, *, runtime: str | None, precision: str, threads: int,
               precision_cache: Path | None = None, cpu: str | None = None) -> tuple[Backend, PrecisionChoice]:
    """The CPU backend for `mode`: among the candidates this machine has (of `runtime`, if given), those
    of the requested precision; with precision auto only those the accuracy check passed; the fastest of
    them as measured on this CPU (cached). A forced precision that failed the check still runs, with a
    warning: the operator asked for it."""
    spec = bundle.mode(mode)
    cpu = cpu or cpu_fingerprint()
    have_ov = openvino_version() is not None
    if runtime == "openvino" and not have_ov:
        raise RuntimeError("OpenVINO is not installed (pip install openvino)")
    pool = [c for c in cpu_candidates(spec, cpu, have_ov) if runtime in (None, c.runtime)]
    if precision != "auto":
        pool = [c for c in pool if c.precision == precision]
        if not pool:
            raise RuntimeError(f"no CPU runtime here runs {mode} in {precision}"
                               + (" (bf16 needs native bf16: AVX512-BF16 or AMX)" if precision == "bf16" else ""))
    verdict = eligibility(bundle, mode, pool)
    if precision == "auto":
        chosen = verdict.eligible
        if not chosen:  # e.g. openvino forced but none of its precisions checked: its FP32 is the least risk
            chosen = [c for c in pool if c.precision == "fp32"][:1] or pool[:1]
    else:
        chosen = pool
        for key, why in verdict.refused.items():
            log.warning("event=inference_precision_not_eligible candidate=%s reason=%r", key, why)
    how = choose_cpu_precision(bundle, spec, threads, candidates=chosen, cache_dir=precision_cache, cpu=cpu)
    source = "requested" if precision != "auto" and how.source == "only candidate" else how.source
    how = replace(how, source=source, ineligible=verdict.refused)
    cache_dir = precision_cache or bundle.root / "engines"
    return cpu_backend(how.candidate, bundle.path(how.candidate.model(spec)), threads, cache_dir), how


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
                   precision: str = "auto", precision_cache: Path | None = None, mode: str | None = None,
                   ) -> BackendChoice:
    """Probe in preference order and return the first backend that starts. `preference`: auto |
    tensorrt | ort-gpu | openvino | ort-cpu | cpu (the fastest eligible CPU runtime). `precision`: auto,
    fp32, bf16 or int8. TensorRT always gets the INT8 QDQ model; ONNX Runtime GPU gets INT8 where its
    TensorRT provider runs it, else FP32; on the CPU see `choose_cpu` (measured once, cached in
    `precision_cache`, default the bundle's engines/)."""
    skipped: dict[str, str] = {}
    mode = mode or next((m for m, s in bundle.manifest.modes.items() if s is spec), None)
    if mode is None:
        raise ValueError("choose_backend: pass mode= for a spec that is not one of the bundle's modes")
    if precision == "int8" and not spec.int8:
        precision = "fp32"
    order = {"auto": ["tensorrt", "ort-gpu", "cpu"], "tensorrt": ["tensorrt", "cpu"],
             "ort-gpu": ["ort-gpu", "cpu"], "cpu": ["cpu"], "ort-cpu": ["ort-cpu"],
             "openvino": ["openvino"]}.get(preference)
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
            backend, how = choose_cpu(bundle, mode, runtime=CPU_PREFERENCES[name], precision=precision,
                                      threads=threads, precision_cache=precision_cache)
            for other, why in skipped.items():
                log.info("event=inference_backend_skipped backend=%s reason=%r", other, why)
            log.info("event=inference_backend backend=%s model=%s threads=%d precision_source=%s ms_per_patch=%s "
                     "not_eligible=%s cpu=%r", backend.name, how.candidate.model(spec), threads, how.source,
                     json.dumps(how.ms_per_patch), json.dumps(how.ineligible), how.cpu)
            return BackendChoice(backend, skipped, how)
    raise RuntimeError(f"no inference backend available: {skipped}")
