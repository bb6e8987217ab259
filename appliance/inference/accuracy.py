"""Which CPU runtime x precision may run a mode at all: those whose labels stay within 0.01 Dice of ONNX
Runtime FP32 for every validated class on the bundle's evaluation cases.

Speed alone is not enough: OpenVINO runs today's INT8 QDQ files 4-6x faster than ONNX Runtime FP32 but
reads their quantization differently (preview bone 0.63 Dice against FP32), and ONNX Runtime's own INT8
preview misses bone by 0.10 on the abdomen. The check runs where the evaluation CT is
(`python -m compiler.precision_check`, part of the bundle build) and is recorded beside the manifest in
`precision_check.json`: per mode and candidate, the model file's hash, each case's per-class Dice against
FP32 and the verdict, with the runtime versions that ran the check. A candidate without a record for the
model file it would run is not eligible (the reference itself always is). The verdict is not tied to the
runtime version: a node with another OpenVINO release trusts the check made with this one (re-run the check
after upgrading a runtime; the record says which versions it saw).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.inference.bundle import ModelBundle
from appliance.inference.cpu_precision import REFERENCE, Candidate

CHECK_FILE = "precision_check.json"
MAX_DICE_LOSS = 0.01


@dataclass(frozen=True)
class Eligibility:
    eligible: list[Candidate]
    refused: dict[str, str]  # candidate key -> why


def read_check(bundle: ModelBundle) -> dict:
    try:
        return json.loads((bundle.root / CHECK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def eligibility(bundle: ModelBundle, mode: str, candidates: list[Candidate], check: dict | None = None) -> Eligibility:
    """Split `candidates` into those the accuracy check passed for this bundle's files and those it did not
    (with the reason: failed, or never checked)."""
    check = read_check(bundle) if check is None else check
    records = check.get("modes", {}).get(mode, {})
    spec = bundle.mode(mode)
    eligible: list[Candidate] = []
    refused: dict[str, str] = {}
    for cand in candidates:
        if cand == REFERENCE:
            eligible.append(cand)
            continue
        rec = records.get(cand.key)
        sha = bundle.manifest.files.get(cand.model(spec))
        if rec is None or rec.get("model_sha256") != sha:
            refused[cand.key] = "accuracy not checked for this model file (run python -m compiler.precision_check)"
        elif rec.get("min_dice", 0.0) < 1.0 - MAX_DICE_LOSS:
            refused[cand.key] = (f"Dice {rec['min_dice']:.3f} against FP32 ({rec.get('worst', '?')}), "
                                 f"below {1.0 - MAX_DICE_LOSS:.2f}")
        else:
            eligible.append(cand)
    return Eligibility(eligible, refused)
