"""Build kernels/cuda/mc_kernels.fatbin with nvcc: SASS for sm_87 (Jetson Orin) and sm_90 (H100), plus
compute_90 PTX that newer GPUs JIT-compile. Usage: python kernels/cuda/build.py [--out PATH] [--nvcc PATH].

The fatbin is a build product (gitignored); kernels/cuda_backend.py loads it with cuModuleLoadData.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "mc_kernels.cu"
INCLUDE = HERE.parent / "csrc"
DEFAULT_OUT = HERE / "mc_kernels.fatbin"
GENCODE = (
    "-gencode=arch=compute_87,code=sm_87",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
)


def find_nvcc() -> str | None:
    """nvcc from $NVCC, PATH, $CUDA_HOME/bin or /usr/local/cuda/bin."""
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


def nvcc_command(nvcc: str, out: Path) -> list[str]:
    return [nvcc, "-fatbin", "-O3", "-std=c++17", "-I", str(INCLUDE), *GENCODE,
            "-o", str(out), str(SOURCE)]


def fatbin_entries(path: Path) -> list[tuple[str, int]]:
    """(kind, arch) of each entry of a fatbin ("elf", 87) / ("ptx", 90): checks what was built
    without cuobjdump. Layout: 16-byte header (magic 0xBA55ED50, version, header size, payload size), then
    entries of (kind u16, version u16, header size u32, padded payload size u64, ..., arch u32 at +28)."""
    data = path.read_bytes()
    magic, _, header, size = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise ValueError(f"{path} is not a fatbin (magic {magic:#x})")
    entries, off, end = [], header, header + size
    while off < end:
        kind, _, ehead, padded = struct.unpack_from("<HHIQ", data, off)
        arch = struct.unpack_from("<I", data, off + 28)[0]
        entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
        off += ehead + padded
    return entries


def build(out: Path = DEFAULT_OUT, nvcc: str | None = None) -> Path:
    """Compile the fatbin; raises FileNotFoundError without nvcc, CalledProcessError on compile errors."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set NVCC or CUDA_HOME)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = nvcc_command(nvcc, out)
    log.info("event=nvcc_build cmd=%r", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--nvcc", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build(args.out, args.nvcc)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
