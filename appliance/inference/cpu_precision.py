"""Which CPU runtime and precision runs a mode fastest on *this* CPU: ONNX Runtime on the INT8 QDQ or the
FP32 file, or OpenVINO on the FP32 file (f32 or, where the CPU has native bf16, the BF16 hint) or on the
INT8 file. Only candidates that passed the accuracy check (`appliance.inference.accuracy`) are timed.

The bundle records what the build machine measured, but the answer depends on the processor: the same
full-mode teacher patch took 1249 ms INT8 / 1305 ms FP32 on the AVX-512 VNNI build machine and
1427 ms INT8 / 1271 ms FP32 on an AVX2-only Zen 2 (no VNNI), and the preview student is 3x slower in
INT8 on both. So, like a TensorRT engine, the choice is made on the target: both files are timed once
on a patch of the mode's size and the answer is cached next to the bundle, keyed by the CPU (model
name, family/model or part, and the instruction-set flags that decide INT8 speed), the runtimes'
versions, the thread count, the candidates and the model files' hashes. Any of those changing measures
again.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from appliance.inference.bundle import ModelBundle, ModeSpec

log = logging.getLogger(__name__)

Precision = Literal["int8", "fp32", "bf16"]
Runtime = Literal["ort-cpu", "openvino"]
# instruction sets that change how fast ONNX Runtime runs int8 or fp32 convolutions
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
               "amx_bf16", "asimddp", "i8mm", "sve", "bf16")
# instruction sets with native bf16 arithmetic: without one, OpenVINO's BF16 hint would emulate (slower)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# a warm-up this many times slower than the fastest one's cannot win: decide without timed runs
CLEAR_RATIO = 1.5


@dataclass(frozen=True)
class Candidate:
    """A CPU runtime and precision; `key` names it in caches, the accuracy record and the logs."""

    runtime: Runtime
    precision: Precision

    @property
    def key(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def model(self, spec: ModeSpec) -> str:
        """The bundle file it runs: INT8 runs the QDQ file, FP32 and BF16 the FP32 file."""
        return spec.int8 if self.precision == "int8" and spec.int8 else spec.fp32

    @classmethod
    def parse(cls, key: str) -> Candidate:
        runtime, _, precision = key.rpartition("-")
        return cls(runtime, precision)  # type: ignore[arg-type]


REFERENCE = Candidate("ort-cpu", "fp32")  # what accuracy is judged against, and the fallback


def has_native_bf16(cpu: str) -> bool:
    flags = cpu.rpartition("[")[2].rstrip("]").split()
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def cpu_candidates(spec: ModeSpec, cpu: str, openvino: bool) -> list[Candidate]:
    """What this machine could run for `spec`, before the accuracy check: ONNX Runtime always (INT8 where
    the bundle has the file), OpenVINO where installed (BF16 only with native bf16)."""
    out = [REFERENCE] + ([Candidate("ort-cpu", "int8")] if spec.int8 else [])
    if openvino:
        out.append(Candidate("openvino", "fp32"))
        if has_native_bf16(cpu):
            out.append(Candidate("openvino", "bf16"))
        if spec.int8:
            out.append(Candidate("openvino", "int8"))
    return out


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    ms_per_patch: dict[str, float]  # candidate key -> best ms per patch
    source: Literal["measured", "cached", "requested", "only candidate"]
    cpu: str
    runtime: Runtime = "ort-cpu"
    ineligible: dict[str, str] = field(default_factory=dict)  # candidate key -> why the accuracy check failed

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.runtime, self.precision)

    def describe(self, *, cpu: bool = True) -> str:
        times = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(self.ms_per_patch.items(), key=lambda kv: kv[1]))
        return (f"{self.runtime} {self.precision} ({self.source}{': ' + times + ' per patch' if times else ''}"
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


def patch_runner(key: str, path: Path, patch: tuple[int, int, int], channels: int,
                 threads: int) -> Callable[[], float]:
    """The candidate `key`'s backend on `path` and a function that runs it once on a zero patch and returns
    the milliseconds it took (zeros time like real CT: no denormal slow-down, measured)."""
    from appliance.inference.backends import cpu_backend

    backend = cpu_backend(Candidate.parse(key), path, threads)
    x = np.zeros((1, channels, *patch), dtype=np.float32)

    def run_once() -> float:
        t = time.perf_counter()
        backend.run(x)
        return 1000 * (time.perf_counter() - t)

    return run_once


def measure(paths: dict[str, Path], patch: tuple[int, int, int], channels: int, threads: int,
            runner: Callable[..., Callable[[], float]] = patch_runner, *, decide_early: bool = True,
            rounds: int = 2) -> dict[str, float]:
    """Best ms per patch of each candidate (key -> model file): one warm-up each, then `rounds` timed runs
    each, taken in turn so that a machine whose speed drifts (a shared host: 1.7x within half an hour,
    measured) slows all alike; a candidate whose warm-up is already `CLEAR_RATIO` times the fastest
    warm-up (the preview student's INT8 on ONNX Runtime: 4.5 s vs 1.4 s) is not timed again when
    `decide_early`."""
    runs = {k: runner(k, p, patch, channels, threads) for k, p in paths.items()}
    warm = {k: run() for k, run in runs.items()}
    fastest = min(warm.values())
    contenders = [k for k, v in warm.items() if not (decide_early and v >= CLEAR_RATIO * fastest)]
    best = {k: v if k not in contenders else float("inf") for k, v in warm.items()}
    if len(contenders) > 1 or not decide_early:
        for _ in range(rounds):
            for k in contenders:
                best[k] = min(best[k], runs[k]())
    else:
        best = warm
    return {k: round(v, 1) for k, v in best.items()}


def runtime_versions() -> dict[str, str | None]:
    import onnxruntime as ort

    from appliance.inference.openvino_backend import openvino_version

    return {"ort-cpu": ort.__version__, "openvino": openvino_version()}


def _cache_key(bundle: ModelBundle, spec: ModeSpec, threads: int, cpu: str, keys: list[str]) -> str:
    files = [bundle.manifest.files.get(n, n) for n in (spec.int8, spec.fp32)]
    raw = json.dumps([cpu, runtime_versions(), threads, list(spec.patch), files, sorted(keys)])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def choose_cpu_precision(bundle: ModelBundle, spec: ModeSpec, threads: int, *,
                         candidates: list[Candidate] | None = None, cache_dir: Path | None = None,
                         cpu: str | None = None,
                         runner: Callable[..., Callable[[], float]] = patch_runner) -> PrecisionChoice:
    """The fastest of `candidates` (default: ONNX Runtime INT8 and FP32) for `spec` on this CPU: from the
    cache if this CPU, these runtimes, thread count, candidates and models were measured before, else
    measured now (seconds, once) and cached. A cache that cannot be written (read-only bundle) only
    costs the measurement again next time."""
    cpu = cpu or cpu_fingerprint()
    if candidates is None:
        candidates = [REFERENCE] + ([Candidate("ort-cpu", "int8")] if spec.int8 else [])
    if len(candidates) == 1:
        return PrecisionChoice(candidates[0].precision, {}, "only candidate", cpu, candidates[0].runtime)
    keys = [c.key for c in candidates]
    cache_dir = cache_dir or bundle.root / "engines"
    path = cache_dir / f"cpu-precision-{Path(spec.fp32).stem}-{_cache_key(bundle, spec, threads, cpu, keys)}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("candidate") in keys:
            best = Candidate.parse(cached["candidate"])
            return PrecisionChoice(best.precision, cached.get("ms_per_patch", {}), "cached", cpu, best.runtime)
    except (OSError, ValueError):
        pass  # not measured yet, or a torn or foreign file: measure again
    ms = measure({c.key: bundle.path(c.model(spec)) for c in candidates}, tuple(spec.patch),
                 len(bundle.manifest.normalisation.channels), threads, runner)
    best = Candidate.parse(min(ms, key=ms.get))
    choice = PrecisionChoice(best.precision, ms, "measured", cpu, best.runtime)
    record = asdict(choice) | {"candidate": best.key, "threads": threads, "patch": list(spec.patch),
                               "fp32": spec.fp32, "int8": spec.int8, "versions": runtime_versions(),
                               "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
    except OSError as exc:
        log.warning("event=cpu_precision_not_cached path=%s reason=%r", path, str(exc))
    return choice


__all__ = ["REFERENCE", "Candidate", "PrecisionChoice", "choose_cpu_precision", "cpu_candidates", "cpu_fingerprint",
           "has_native_bf16", "measure", "patch_runner", "runtime_versions"]
