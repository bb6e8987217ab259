"""Native TensorRT backend: builds an engine from the bundle's INT8 (QDQ) ONNX on the target GPU and
caches it next to the bundle, keyed by GPU name, TensorRT version and bundle digest (engines are
device- and version-specific). Buffers go through NVIDIA's cuda-python bindings.

Only imported when `tensorrt` imports and a GPU answers (see backends.choose_backend); this project's
development machines have neither, so this path is exercised only on a GPU target (tests skip with the
probe's reason elsewhere).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from appliance.inference.backends import _gpu_name, tensorrt_engine_path
from appliance.inference.bundle import ModelBundle

log = logging.getLogger(__name__)


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, bundle: ModelBundle, onnx_name: str) -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self._cudart = cudart
        gpu = _gpu_name() or "gpu"
        path = tensorrt_engine_path(bundle, onnx_name, gpu, trt.__version__)
        logger = trt.Logger(trt.Logger.WARNING)
        if path.exists():
            plan = path.read_bytes()
            log.info("event=tensorrt_engine_cached path=%s", path.name)
        else:
            plan = self._build(trt, logger, bundle.path(onnx_name))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(path)
            log.info("event=tensorrt_engine_built path=%s gpu=%r trt=%s", path.name, gpu, trt.__version__)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._in = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._out = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._in_shape = tuple(self._engine.get_tensor_shape(self._in))
        self._out_shape = tuple(self._engine.get_tensor_shape(self._out))
        self._d_in = _check(cudart.cudaMalloc(int(np.prod(self._in_shape)) * 4))
        self._d_out = _check(cudart.cudaMalloc(int(np.prod(self._out_shape)) * 4))
        self._context.set_tensor_address(self._in, int(self._d_in))
        self._context.set_tensor_address(self._out, int(self._d_out))
        self._stream = _check(cudart.cudaStreamCreate())

    @staticmethod
    def _build(trt, logger, onnx_path: Path) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the QDQ nodes carry the scales
        config.set_flag(trt.BuilderFlag.FP16)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT could not build an engine")
        return bytes(plan)

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(self._out_shape, dtype=np.float32)
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._d_in, x.ctypes.data, x.nbytes, kind_h2d, self._stream))
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, kind_d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return out
