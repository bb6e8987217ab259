"""`python -m bench [NAME ...]`: run every bench_*.py module (or the named ones) in turn."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(bench.__path__)
                   if m.name.startswith("bench_"))
    wanted = argv or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    for name in wanted:
        print(f"\n=== bench_{name} ===", flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"bench.bench_{name}")
        module.main()
        print(f"(bench_{name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
