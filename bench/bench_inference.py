"""Inference speed and memory on a real chest CT (512x512x275, lidc_idri_0314): preview and full, INT8
student vs FP32 student vs teacher, ONNX Runtime CPU, 2 threads, same run.

Each row runs in its own process (read the series, segment, map the labels back to the CT grid), so the
peak RSS printed is that of one inference, as the appliance's worker would see it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASE = (REPO / ".." / "shared" / "data" / "lidc_idri_0314_chest_1mm" / "ct_dicom").resolve()
BUNDLE = REPO / "models" / "ct_chest"
TEACHER = REPO / "build" / "model"


def run_one(mode: str, model: Path, threads: int, patch: tuple[int, int, int] | None = None) -> dict:
    """One inference in this process: timings (s) and peak RSS (MB); `patch` runs `model` at another
    static patch than the mode's (the teacher's own file in a student mode)."""
    from appliance.inference.backends import OrtBackend
    from appliance.inference.bundle import load_bundle
    from appliance.inference.grid import grid_of
    from appliance.inference.segment import segment_array
    from dicom_node.volume import assemble_volume

    bundle = load_bundle(BUNDLE)
    if patch is not None:
        bundle.manifest.modes[mode] = bundle.mode(mode).model_copy(update={"patch": patch})
    t = time.perf_counter()
    vol = assemble_volume(sorted(CASE.glob("*.dcm")))
    read = time.perf_counter() - t
    backend = OrtBackend(model, ["CPUExecutionProvider"], threads, model.name)
    t = time.perf_counter()
    res = segment_array(vol.array, vol.affine, bundle, mode, backend)
    t_back = time.perf_counter()
    res.labels_on(grid_of(vol.array, vol.affine))
    return {"read": read, "resample": res.timings["resample_s"], "network": res.timings["network_s"],
            "to_ct": time.perf_counter() - t_back, "total": time.perf_counter() - t,
            "shape": list(vol.array.shape), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(threads: int = 2) -> None:
    from appliance.inference.bundle import load_bundle

    if not CASE.exists():
        print(f"bench_inference: {CASE} not found, skipped")
        return
    bundle = load_bundle(BUNDLE)
    print(f"{'mode':8s} {'model':14s} {'size MB':>8s} {'resample':>9s} {'network':>8s} {'to CT':>7s} "
          f"{'total s':>8s} {'peak MB':>8s}   (series read, not counted: see 'read')")
    # a fresh clone has no build/: a student mode's teacher row then runs the file of the mode that ships
    # the teacher, at that mode's patch (the same network; compiler.build --reevaluate does the same)
    shipped_teacher = next((s for s in bundle.manifest.modes.values() if s.ships_teacher), None)
    for mode, spec in bundle.manifest.modes.items():
        net = "teacher" if spec.ships_teacher else "student"
        models = [(f"{net} INT8", bundle.path(spec.int8), None), (f"{net} FP32", bundle.path(spec.fp32), None)]
        if net == "student":
            teacher = TEACHER / f"teacher.{mode}.onnx"
            if teacher.exists() or shipped_teacher is None:
                models.append(("teacher FP32", teacher, None))
            else:
                models.append(("teacher FP32*", bundle.path(shipped_teacher.fp32), shipped_teacher.patch))
        for name, path, patch in models:
            if not path.exists():
                print(f"{mode:8s} {name:14s} (not built: run `make model`)")
                continue
            extra = [",".join(map(str, patch))] if patch else []
            out = subprocess.run([sys.executable, "-m", "bench.bench_inference", "--one", mode, str(path),
                                  str(threads), *extra], cwd=REPO, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:8s} {name:14s} {path.stat().st_size / 1e6:8.2f} {r['resample']:9.2f} {r['network']:8.2f} "
                  f"{r['to_ct']:7.2f} {r['total']:8.2f} {r['rss_mb']:8.0f}   read {r['read']:.1f} s", flush=True)
    from appliance.inference.cpu_precision import choose_cpu_precision, cpu_fingerprint

    print(f"this CPU ({cpu_fingerprint()}) runs, as the appliance's auto precision: "
          + "; ".join(f"{m} {choose_cpu_precision(bundle, s, threads).describe(cpu=False)}"
                      for m, s in bundle.manifest.modes.items()))
    print(f"CT {r['shape'][::-1]}; the build machine's CPU chose: "
          + ", ".join(f"{m} {s.cpu_precision}" for m, s in bundle.manifest.modes.items())
          + "; targets: preview < 5 s, full < 60 s, peak < 2 GB, INT8 < 2 MB"
          + ("; * the teacher's file at its own mode's patch" if shipped_teacher else ""))


if __name__ == "__main__":
    if len(sys.argv) in (5, 6) and sys.argv[1] == "--one":
        patch = tuple(int(v) for v in sys.argv[5].split(",")) if len(sys.argv) == 6 else None
        print(json.dumps(run_one(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), patch)))
    else:
        main()
