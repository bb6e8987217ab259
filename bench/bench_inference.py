"""Inference on a real chest CT (512x512x275, lidc_idri_0314), per mode: every CPU runtime x precision this
machine has (ONNX Runtime FP32 and INT8; OpenVINO FP32, BF16 where the CPU has native bf16, INT8), 2 threads,
in one run, beside the choice the appliance makes on its own (auto).

Each row runs in its own process (read the series, segment, map the labels back to the CT grid), so the
peak RSS printed is that of one inference, as the appliance's worker would see it. Dice is each row's labels
against ONNX Runtime FP32's (the reference), worst validated class; 'eligible' is the bundle's accuracy
check (precision_check.json, which the appliance reads), not this run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CASE = (REPO / ".." / "shared" / "data" / "lidc_idri_0314_chest_1mm" / "ct_dicom").resolve()
BUNDLE = REPO / "models" / "ct_chest"


def run_one(mode: str, key: str, threads: int, labels_out: Path) -> dict:
    """One inference in this process with the candidate `key`: timings (s), peak RSS (MB); the labels go to
    `labels_out` (.npy) for the Dice against the reference row."""
    from appliance.inference.backends import cpu_backend
    from appliance.inference.bundle import load_bundle
    from appliance.inference.cpu_precision import Candidate
    from appliance.inference.grid import grid_of
    from appliance.inference.segment import segment_array
    from dicom_node.volume import assemble_volume

    bundle = load_bundle(BUNDLE)
    spec = bundle.mode(mode)
    candidate = Candidate.parse(key)
    t = time.perf_counter()
    vol = assemble_volume(sorted(CASE.glob("*.dcm")))
    read = time.perf_counter() - t
    t = time.perf_counter()
    backend = cpu_backend(candidate, bundle.path(candidate.model(spec)), threads, bundle.root / "engines")
    start = time.perf_counter() - t
    t = time.perf_counter()
    res = segment_array(vol.array, vol.affine, bundle, mode, backend)
    t_back = time.perf_counter()
    labels = res.labels_on(grid_of(vol.array, vol.affine), vol.array)
    total = time.perf_counter() - t
    np.save(labels_out, labels)
    return {"read": read, "start": start, "network": res.timings["network_s"], "to_ct": time.perf_counter() - t_back,
            "total": total, "shape": list(vol.array.shape),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worst_dice(labels: np.ndarray, reference: np.ndarray, validated: dict[int, str]) -> tuple[float, str]:
    from compiler.precision_check import class_dice

    scores = class_dice(labels, reference, validated)
    return min(((v, k) for k, v in scores.items()), default=(float("nan"), "-"))


def main(threads: int = 2) -> None:
    from appliance.inference.accuracy import eligibility
    from appliance.inference.backends import choose_backend
    from appliance.inference.bundle import load_bundle
    from appliance.inference.cpu_precision import REFERENCE, cpu_candidates, cpu_fingerprint
    from appliance.inference.openvino_backend import openvino_version

    if not CASE.exists():
        print(f"bench_inference: {CASE} not found, skipped")
        return
    bundle = load_bundle(BUNDLE)
    cpu = cpu_fingerprint()
    validated = {lab.value: lab.name for lab in bundle.manifest.labels if not lab.experimental}
    print(f"{'mode':8s} {'runtime-precision':18s} {'start':>6s} {'network':>8s} {'x ORT32':>8s} {'total s':>8s} "
          f"{'peak MB':>8s} {'Dice vs FP32 (worst)':>26s}  eligible")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, spec in bundle.manifest.modes.items():
            candidates = cpu_candidates(spec, cpu, openvino_version() is not None)
            verdict = eligibility(bundle, mode, candidates)
            reference, ref_network = None, None
            for cand in candidates:  # the reference (ONNX Runtime FP32) first
                out = Path(tmp) / f"{mode}-{cand.key}.npy"
                proc = subprocess.run([sys.executable, "-m", "bench.bench_inference", "--one", mode, cand.key,
                                       str(threads), str(out)], cwd=REPO, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{mode:8s} {cand.key:18s} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                labels = np.load(out)
                if cand == REFERENCE:
                    reference, ref_network = labels, r["network"]
                    dice_text = "(reference)"
                else:
                    d, cls = worst_dice(labels, reference, validated)
                    dice_text = f"{d:.4f} {cls}"
                ok = "yes" if cand in verdict.eligible else "no"
                print(f"{mode:8s} {cand.key:18s} {r['start']:6.2f} {r['network']:8.2f} "
                      f"{ref_network / r['network']:7.2f}x {r['total']:8.2f} {r['rss_mb']:8.0f} {dice_text:>26s}  {ok}",
                      flush=True)
            auto = choose_backend(bundle, spec, mode=mode, preference="cpu", threads=threads)
            print(f"{mode:8s} auto: {auto.precision.describe(cpu=False)}")
    print(f"CT {r['shape'][::-1]}; CPU {cpu}; threads {threads}; targets: full network >= 3x ONNX Runtime FP32, "
          "preview network < 0.7 s, every validated class within 0.01 Dice of FP32, peak memory no higher than today")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))))
    else:
        main()
