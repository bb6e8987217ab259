"""Which of a mode's two ONNX files (INT8 QDQ or FP32) ONNX Runtime runs faster on *this* CPU.

The bundle records what the build machine measured, but the answer depends on the processor: the same
full-mode teacher patch took 1249 ms INT8 / 1305 ms FP32 on the AVX-512 VNNI build machine and
1427 ms INT8 / 1271 ms FP32 on an AVX2-only Zen 2 (no VNNI), and the preview student is 3x slower in
INT8 on both. So, like a TensorRT engine, the choice is made on the target: both files are timed once
on a patch of the mode's size and the answer is cached next to the bundle, keyed by the CPU (model
name, family/model or part, and the instruction-set flags that decide INT8 speed), the ONNX Runtime
version, the thread count and the model files' hashes. Any of those changing measures again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from appliance.inference.bundle import ModelBundle, ModeSpec

log = logging.getLogger(__name__)

Precision = Literal["int8", "fp32"]
# instruction sets that change how fast ONNX Runtime runs int8 or fp32 convolutions
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
               "amx_bf16", "asimddp", "i8mm", "sve", "bf16")
# a warm-up this many times slower than the other file's cannot win: decide without timed runs
CLEAR_RATIO = 1.5


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    ms_per_patch: dict[str, float]
    source: Literal["measured", "cached", "requested", "only fp32"]
    cpu: str

    def describe(self, *, cpu: bool = True) -> str:
        times = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(self.ms_per_patch.items()))
        return (f"{self.precision} ({self.source}{': ' + times + ' per patch' if times else ''}"
                f"{'; ' + self.cpu if cpu else ''})")


def cpu_fingerprint(cpuinfo: str | None = None) -> str:
    """'<machine> <model name> [flags]': what decides which precision is faster, and nothing that varies
    between boots (no frequencies, no core ids)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:
            fields[key] = value.strip()
    name = fields.get("model name") or platform.processor() or "unknown cpu"
    # family/model (x86) or implementer/part (Arm): virtual machines often show a generic model name
    ids = "/".join(fields[k] for k in ("cpu family", "model", "cpu implementer", "cpu part") if k in fields)
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    have = [f for f in SPEED_FLAGS if f in flags]
    return f"{platform.machine()} {name}{' ' + ids if ids else ''} [{' '.join(have)}]"


def patch_runner(path: Path, patch: tuple[int, int, int], channels: int, threads: int) -> Callable[[], float]:
    """An ONNX Runtime CPU session on `path` and a function that runs it once on a zero patch and returns
    the milliseconds it took (zeros time like real CT: no denormal slow-down, measured)."""
    from appliance.inference.backends import OrtBackend

    backend = OrtBackend(path, ["CPUExecutionProvider"], threads, path.name)
    x = np.zeros((1, channels, *patch), dtype=np.float32)

    def run_once() -> float:
        t = time.perf_counter()
        backend.run(x)
        return 1000 * (time.perf_counter() - t)

    return run_once


def measure(paths: dict[str, Path], patch: tuple[int, int, int], channels: int, threads: int,
            runner: Callable[..., Callable[[], float]] = patch_runner, *, decide_early: bool = True,
            rounds: int = 2) -> dict[str, float]:
    """Best ms per patch of each file: one warm-up each, then `rounds` timed runs each, taken in turn so
    that a machine whose speed drifts (a shared host: 1.7x within half an hour, measured) slows both
    alike; unless `decide_early` and a warm-up already shows one file `CLEAR_RATIO` times slower (the
    preview student's INT8: 4.5 s vs 1.4 s), when the warm-ups are the answer."""
    runs = {k: runner(p, patch, channels, threads) for k, p in paths.items()}
    warm = {k: run() for k, run in runs.items()}
    if decide_early and max(warm.values()) >= CLEAR_RATIO * min(warm.values()):
        return {k: round(v, 1) for k, v in warm.items()}
    best = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            best[k] = min(best[k], run())
    return {k: round(v, 1) for k, v in best.items()}


def _cache_key(bundle: ModelBundle, spec: ModeSpec, threads: int, cpu: str) -> str:
    import onnxruntime as ort

    files = [bundle.manifest.files.get(n, n) for n in (spec.int8, spec.fp32)]
    raw = json.dumps([cpu, ort.__version__, threads, list(spec.patch), files])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def choose_cpu_precision(bundle: ModelBundle, spec: ModeSpec, threads: int, *, cache_dir: Path | None = None,
                         cpu: str | None = None,
                         runner: Callable[..., Callable[[], float]] = patch_runner) -> PrecisionChoice:
    """The faster precision of `spec` on this CPU: from the cache if this CPU, runtime, thread count and
    model pair were measured before, else measured now (seconds, once) and cached. A cache that cannot
    be written (read-only bundle) only costs the measurement again next time."""
    cpu = cpu or cpu_fingerprint()
    if not spec.int8:
        return PrecisionChoice("fp32", {}, "only fp32", cpu)
    cache_dir = cache_dir or bundle.root / "engines"
    path = cache_dir / f"cpu-precision-{Path(spec.fp32).stem}-{_cache_key(bundle, spec, threads, cpu)}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("precision") in ("int8", "fp32"):
            return PrecisionChoice(cached["precision"], cached.get("ms_per_patch", {}), "cached", cpu)
    except (OSError, ValueError):
        pass  # not measured yet, or a torn or foreign file: measure again
    ms = measure({"int8": bundle.path(spec.int8), "fp32": bundle.path(spec.fp32)}, tuple(spec.patch),
                 len(bundle.manifest.normalisation.channels), threads, runner)
    choice = PrecisionChoice(min(ms, key=ms.get), ms, "measured", cpu)
    record = asdict(choice) | {"threads": threads, "patch": list(spec.patch), "fp32": spec.fp32, "int8": spec.int8,
                               "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
    except OSError as exc:
        log.warning("event=cpu_precision_not_cached path=%s reason=%r", path, str(exc))
    return choice


__all__ = ["PrecisionChoice", "choose_cpu_precision", "cpu_fingerprint", "measure", "patch_runner"]
