"""Inference speed on a real chest CT (512x512x275, lidc_idri_0314): preview and full, INT8 student vs
FP32 student vs teacher, ONNX Runtime CPU, 2 threads, same run. Peak RSS is reported per process."""

from __future__ import annotations

import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASE = (REPO / ".." / "shared" / "data" / "lidc_idri_0314_chest_1mm" / "ct_dicom").resolve()
BUNDLE = REPO / "models" / "ct_chest"
TEACHER = REPO / "build" / "model"


def main(threads: int = 2) -> None:
    from appliance.inference.backends import OrtBackend
    from appliance.inference.bundle import load_bundle
    from appliance.inference.grid import grid_of
    from appliance.inference.segment import segment_array
    from dicom_node.volume import assemble_volume

    if not CASE.exists():
        print(f"bench_inference: {CASE} not found, skipped")
        return
    bundle = load_bundle(BUNDLE)
    t = time.perf_counter()
    vol = assemble_volume(sorted(CASE.glob("*.dcm")))
    print(f"CT {vol.array.shape[::-1]} read+assembled in {time.perf_counter() - t:.1f} s (not counted below)")
    print(f"{'mode':8s} {'model':14s} {'size MB':>8s} {'resample':>9s} {'network':>8s} {'to CT':>7s} {'total s':>8s}")
    target = grid_of(vol.array, vol.affine)
    for mode, spec in bundle.manifest.modes.items():
        models = [("student INT8", bundle.path(spec.int8)), ("student FP32", bundle.path(spec.fp32)),
                  ("teacher FP32", TEACHER / f"teacher.{mode}.onnx")]
        for name, path in models:
            if not path.exists():
                print(f"{mode:8s} {name:14s} (not built: run `make model`)")
                continue
            backend = OrtBackend(path, ["CPUExecutionProvider"], threads, name)
            t = time.perf_counter()
            res = segment_array(vol.array, vol.affine, bundle, mode, backend)
            t_back = time.perf_counter()
            res.labels_on(target)
            total = time.perf_counter() - t
            print(f"{mode:8s} {name:14s} {path.stat().st_size / 1e6:8.2f} {res.timings['resample_s']:9.2f} "
                  f"{res.timings['network_s']:8.2f} {time.perf_counter() - t_back:7.2f} {total:8.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; targets: preview < 5 s, "
          f"full < 60 s, peak < 2 GB, INT8 < 2 MB")


if __name__ == "__main__":
    main()
