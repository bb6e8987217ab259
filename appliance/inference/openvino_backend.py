"""OpenVINO on the CPU: reads the bundle's ONNX files (the QDQ INT8 ones included) and runs the 3D
convolutions with oneDNN; with the BF16 precision hint on the FP32 file it uses the CPU's native bf16
(AVX512-BF16, AMX) where there is one.

Compiled once per backend; `cache_dir` (the bundle's engines/) holds OpenVINO's compiled-model cache so a
restart does not compile again. An infer request is not thread-safe, so each worker thread gets its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

# precision -> OpenVINO's INFERENCE_PRECISION_HINT. INT8 is what the QDQ file says; the hint keeps the
# layers left in float at f32.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_version() -> str | None:
    """OpenVINO's version, or None where it is not installed (the backend is then skipped, with that reason)."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


class OpenVinoBackend:
    def __init__(self, model_path: Path, precision: str, threads: int, cache_dir: Path | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(cache_dir)})
            except OSError:
                pass  # a read-only bundle: compile on every start (about a second)
        self.compiled = core.compile_model(str(model_path), "CPU", {
            "INFERENCE_NUM_THREADS": max(1, threads),
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
        })
        self.name = f"openvino-{precision}"
        self.model_path = model_path
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, x: np.ndarray) -> np.ndarray:
        request = self._request()
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, copy=True)  # the request's buffer is reused
