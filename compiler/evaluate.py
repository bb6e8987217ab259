"""Evaluation: per-class Dice and 95% Hausdorff distance against the reference labels, counted only on
voxels whose reference is authoritative for that class, plus INT8-vs-FP32 agreement.

Runs the appliance's own inference path (ONNX Runtime, sliding window) so what is measured is what ships.
`target_misses` holds the scores against what the product claims, so a rebuild says itself whether it
may replace the shipped bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from compiler.labels.table import LABEL_TABLE


def dice(pred: np.ndarray, ref: np.ndarray) -> float | None:
    s = int(pred.sum()) + int(ref.sum())
    return None if int(ref.sum()) == 0 else 2.0 * int((pred & ref).sum()) / s


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
    """Symmetric 95th-percentile surface distance in mm (None if either mask is empty)."""
    if not pred.any() or not ref.any():
        return None
    sp = ndimage.binary_erosion(pred) ^ pred
    sr = ndimage.binary_erosion(ref) ^ ref
    dt_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([dt_r[sp], dt_p[sr]]), 95))


def score(pred: np.ndarray, ref: np.ndarray, known: np.ndarray, spacing) -> dict[str, dict]:
    """{class name: {dice, hd95_mm}} over the classes the reference knows somewhere in the volume; body is
    scored as the whole region inside the skin."""
    out = {}
    for spec in LABEL_TABLE:
        k = (known.astype(np.int64) >> spec.value) & 1 == 1
        if not k.any() or not (ref[k] == spec.value).any():
            continue
        if spec.name == "body":  # the body is everything inside the skin: organs included
            p, r = (pred > 0) & k, (ref > 0) & k
        else:
            p, r = (pred == spec.value) & k, (ref == spec.value) & k
        d, h = dice(p, r), hd95(p, r, spacing)
        out[spec.name] = {"dice": None if d is None else round(d, 4), "hd95_mm": None if h is None else round(h, 2)}
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Voxel agreement and per-class Dice between two label maps (INT8 vs FP32)."""
    out = {"voxel_agreement": round(float((a == b).mean()), 5)}
    for spec in LABEL_TABLE:
        d = dice(a == spec.value, b == spec.value)
        if d is not None:
            out[spec.name] = round(d, 4)
    return out


@dataclass(frozen=True)
class QualityTargets:
    """What the product claims on held-out real CT (issue 5): Dice per validated class, INT8 within
    `int8_within` of FP32, the student within `student_within` of its teacher."""

    min_dice: dict[str, float] = field(default_factory=lambda: {
        "body": 0.98, "lung_left": 0.97, "lung_right": 0.97, "bone": 0.90, "airway": 0.85})
    int8_within: float = 0.01
    student_within: float = 0.02


TARGETS = QualityTargets()  # the one set every evaluation and every comparison of bundles is held to


@dataclass(frozen=True)
class Miss:
    """One held-out score that misses a target: below `bound` (kind "dice"), or `bound` is what it had
    to stay within of (FP32 for kind "int8_drop", the teacher for kind "student_gap")."""

    case: str  # "mode/case"
    which: str  # fp32 | int8
    label: str
    kind: str
    dice: float
    bound: float

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.case, self.which, self.label, self.kind

    def __str__(self) -> str:
        than = {"dice": "<", "int8_drop": "too far below fp32", "student_gap": "too far below the teacher"}
        return f"{self.case} {self.which} {self.label} dice {self.dice:.4f} {than[self.kind]} {self.bound}"


def target_misses(cases: dict[str, dict], targets: QualityTargets) -> list[Miss]:
    """Every score in an evaluation's `cases` ("mode/case" -> {teacher, fp32, int8: {class: {dice}}})
    that misses `targets`. A mode that ships its teacher has equal teacher and FP32 rows."""
    misses = []
    for key, row in cases.items():
        for cls, minimum in targets.min_dice.items():
            d = {which: (row.get(which, {}).get(cls) or {}).get("dice") for which in ("teacher", "fp32", "int8")}
            for which in ("fp32", "int8"):
                if d[which] is not None and d[which] < minimum:
                    misses.append(Miss(key, which, cls, "dice", d[which], minimum))
            if None not in (d["fp32"], d["int8"]) and d["int8"] < d["fp32"] - targets.int8_within:
                misses.append(Miss(key, "int8", cls, "int8_drop", d["int8"], d["fp32"]))
            if None not in (d["teacher"], d["fp32"]) and d["fp32"] < d["teacher"] - targets.student_within:
                misses.append(Miss(key, "fp32", cls, "student_gap", d["fp32"], d["teacher"]))
    return misses


def new_misses(candidate: list[Miss], shipped: list[Miss]) -> list[Miss]:
    """The candidate's misses the shipped bundle does not have: a rebuild may replace the shipped bundle
    when there are none."""
    known = {m.key for m in shipped}
    return [m for m in candidate if m.key not in known]
