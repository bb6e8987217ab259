"""The accuracy check that decides which CPU runtime x precision may run each mode (read at start by
`appliance.inference.accuracy`).

Every candidate this machine can run (ONNX Runtime INT8; OpenVINO FP32, BF16 where the CPU has native bf16,
INT8) segments the bundle's evaluation cases through `segment_array`, post-processing included, exactly as
the appliance would; its labels are compared with ONNX Runtime FP32's, class by class. A candidate is
eligible when every validated class (not the experimental ones) on every case keeps a Dice of at least
1 - MAX_DICE_LOSS against FP32; a class absent from both label maps is skipped. The result goes to
`precision_check.json` in the bundle, per model file hash, with the runtime versions that ran it.

    python -m compiler.precision_check [--bundle models/ct_chest] [--threads 2] [CASE_DIR ...]

Without case folders it reads the manifest's evaluation cases from ../shared/data/<case>/ct_dicom.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from appliance.inference.accuracy import CHECK_FILE, MAX_DICE_LOSS
from appliance.inference.backends import cpu_backend
from appliance.inference.bundle import ModelBundle, load_bundle
from appliance.inference.cpu_precision import (
    REFERENCE,
    Candidate,
    cpu_candidates,
    cpu_fingerprint,
    runtime_versions,
)
from appliance.inference.openvino_backend import openvino_version
from appliance.inference.segment import segment_array
from compiler.evaluate import dice

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO / ".." / "shared" / "data"

# (case name, HU array, affine)
Case = tuple[str, np.ndarray, np.ndarray]


def class_dice(labels: np.ndarray, reference: np.ndarray, classes: dict[int, str]) -> dict[str, float]:
    """Dice per class against the reference labels; classes absent from both are left out."""
    out: dict[str, float] = {}
    for value, name in classes.items():
        d = dice(labels == value, reference == value)
        if d is not None:
            out[name] = round(float(d), 4)
    return out


def check_mode(bundle: ModelBundle, mode: str, cases: list[Case], candidates: list[Candidate], threads: int,
               backend_for: Callable[[Candidate, Path, int], object] = cpu_backend) -> dict[str, dict]:
    """Per candidate: the model file's hash, per-case per-class Dice against FP32, the worst, the verdict."""
    spec = bundle.mode(mode)
    validated = {lab.value: lab.name for lab in bundle.manifest.labels if not lab.experimental}
    backends = {c.key: backend_for(c, bundle.path(c.model(spec)), threads) for c in [REFERENCE, *candidates]}
    records: dict[str, dict] = {c.key: {"model": c.model(spec), "model_sha256": bundle.manifest.files[c.model(spec)],
                                        "cases": {}, "network_s": {}} for c in candidates}
    for name, hu, affine in cases:
        reference = segment_array(hu, affine, bundle, mode, backends[REFERENCE.key])
        for c in candidates:
            t = time.perf_counter()
            result = segment_array(hu, affine, bundle, mode, backends[c.key])
            records[c.key]["network_s"][name] = round(result.timings["network_s"], 2)
            records[c.key]["cases"][name] = class_dice(result.labels, reference.labels, validated)
            log.info("event=precision_checked mode=%s candidate=%s case=%s seconds=%.1f dice=%s", mode, c.key,
                     name, time.perf_counter() - t, json.dumps(records[c.key]["cases"][name]))
    for rec in records.values():
        worst = min(((d, f"{cls} on {case}") for case, per in rec["cases"].items() for cls, d in per.items()),
                    default=(0.0, "no case"))
        rec["min_dice"], rec["worst"] = worst
        rec["eligible"] = worst[0] >= 1.0 - MAX_DICE_LOSS
    return records


def load_cases(folders: list[Path]) -> list[Case]:
    from dicom_node.volume import assemble_volume

    cases = []
    for folder in folders:
        volume = assemble_volume(sorted(p for p in folder.rglob("*") if p.is_file()))
        cases.append((folder.parent.name if folder.name == "ct_dicom" else folder.name, volume.array, volume.affine))
    return cases


def evaluation_case_folders(bundle: ModelBundle) -> list[Path]:
    names = dict.fromkeys(key.split("/", 1)[1] for key in bundle.manifest.evaluation.get("cases", {}))
    return [SHARED_DATA / n / "ct_dicom" for n in names if (SHARED_DATA / n / "ct_dicom").is_dir()]


def run_check(bundle_root: Path, folders: list[Path], threads: int, modes: list[str] | None = None) -> dict:
    """Check every candidate of every mode on the cases and write `precision_check.json`; returns it."""
    bundle = load_bundle(bundle_root)
    cpu = cpu_fingerprint()
    cases = load_cases(folders)
    if not cases:
        raise SystemExit("no evaluation cases found: give case folders (DICOM series) on the command line")
    result = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
              "versions": runtime_versions(), "threads": threads, "max_dice_loss": MAX_DICE_LOSS,
              "reference": REFERENCE.key, "cases": [c[0] for c in cases], "modes": {}}
    for mode in modes or list(bundle.manifest.modes):
        candidates = [c for c in cpu_candidates(bundle.mode(mode), cpu, openvino_version() is not None)
                      if c != REFERENCE]
        result["modes"][mode] = check_mode(bundle, mode, cases, candidates, threads)
        for key, rec in result["modes"][mode].items():
            print(f"{mode:8s} {key:16s} min Dice {rec['min_dice']:.4f} ({rec['worst']})"
                  f" {'eligible' if rec['eligible'] else 'NOT eligible'}", flush=True)
    path = Path(bundle_root) / CHECK_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler.precision_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", type=Path, help="DICOM series folders (default: the manifest's cases)")
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "ct_chest")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--mode", action="append", choices=["preview", "full"], help="only this mode (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folders = args.cases or evaluation_case_folders(load_bundle(args.bundle))
    run_check(args.bundle, folders, args.threads, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
