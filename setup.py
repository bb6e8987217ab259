"""Build hook for the native extensions (the CPU marching-cubes kernel); everything else is in pyproject.toml.

Flags are portable per platform so one wheel runs on any x86-64 server (x86-64-v2: SSE4.2/POPCNT) or on
a Jetson Orin (ARMv8.2-A, Cortex-A78AE). Set ISONODE_NATIVE=1 to tune for the build machine instead.
"""

import os
import platform
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup


def _arch_flags() -> list[str]:
    if os.environ.get("ISONODE_NATIVE") == "1":
        return ["-march=native"]
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ["-march=x86-64-v2"]
    if machine in ("aarch64", "arm64"):
        return ["-march=armv8.2-a"]
    return []


if sys.platform == "win32":
    compile_args, link_args = ["/O2", "/openmp"], []
elif sys.platform == "darwin":
    compile_args, link_args = ["-O3"], []  # Apple clang has no bundled OpenMP: the kernel runs single-threaded
else:
    compile_args, link_args = ["-O3", "-fopenmp", *_arch_flags()], ["-fopenmp"]

ext_modules = [
    Pybind11Extension(
        "kernels._mc_cpu",
        ["kernels/csrc/mc_cpu.cpp"],
        include_dirs=["kernels/csrc"],
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(ext_modules=ext_modules)
