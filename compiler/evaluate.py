"""Evaluation: per-class Dice and 95% Hausdorff distance against the reference labels, counted only on
voxels whose reference is authoritative for that class, plus INT8-vs-FP32 agreement.

Runs the appliance's own inference path (ONNX Runtime, sliding window) so what is measured is what ships.
`target_misses` holds the scores against what the product claims, so a rebuild says itself whether it
may replace the shipped bundle. Every score says what it was measured against (`reference_record`,
`heldout_record`): per class and case the kind of reference (rule, silver, rule+silver, phantom, human)
and the content key of the labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from compiler.data import CASE_BY_NAME, HUMAN_LABELS_NOTE, REFERENCE_KINDS, LabelledVolume, case_record
from compiler.labels.cache import labeller_code
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


NOT_SCORES = ("int8_vs_fp32", "reference")  # the entries of an evaluation row that are not a network's scores
LABELLER_CODE = "compiler/labels (rules) + compiler/data.py merge_silver (silver masks)"
REFERENCE_NOTE = ("rule-based reference labels (compiler/labels) merged with TotalSegmentator silver masks where "
                  "present; both are automatic, not expert labels: each case's `reference.kind` names, per class, "
                  "which one it was scored against. Lungs and bone follow the clinical convention "
                  "(provenance.label_conventions). Bone is scored outside the reference's bone-unknown zone "
                  "(possible marrow behind a cortex under the rule's threshold, marrow_zone)")


def scored_classes(row: dict) -> list[str]:
    """The classes some network of an evaluation row was scored on, in label-table order."""
    names = {c for which, scores in row.items() if which not in NOT_SCORES for c in scores}
    return [spec.name for spec in LABEL_TABLE if spec.name in names]


def reference_record(lv: LabelledVolume, row: dict) -> dict:
    """What a row's scores were measured against: per scored class the kind of reference
    (`data.REFERENCE_KINDS`), the labeller and the labels' content key (`compiler.labels.cache`), the case."""
    real = bool(lv.reference_key)
    return {"kind": {c: lv.reference_kind.get(c, "unrecorded") for c in scored_classes(row)},
            "labeller": {"code": LABELLER_CODE if real else "compiler/phantom.py (exact labels)",
                         "key": lv.reference_key or None},
            "case": case_record(lv.name)}


def heldout_record(cases: dict[str, dict], volumes: Iterable[LabelledVolume] = ()) -> dict:
    """`evaluation.heldout`: the cases the rows score, which classes were scored against which kind of
    reference, what the kinds mean, and the labeller's code (sources and libraries, with their sha256)
    where a volume came from it."""
    names = list(dict.fromkeys(key.split("/", 1)[1] for key in cases))
    against: dict[str, set[str]] = {}
    for row in cases.values():
        for cls, kind in row.get("reference", {}).get("kind", {}).items():
            against.setdefault(kind, set()).add(cls)
    order = [spec.name for spec in LABEL_TABLE]
    scored = {kind: sorted(cls, key=order.index) for kind, cls in sorted(against.items())}
    records = [next((row["reference"]["case"] for key, row in cases.items()
                     if key.split("/", 1)[1] == name and "reference" in row), None) or case_record(name)
               for name in names]
    real = [n for n in names if n in CASE_BY_NAME]
    phantoms = [n for n in names if n not in CASE_BY_NAME]
    text = " ".join(
        [*([f"The project's held-out cases (compiler.data.CASES, split heldout), never trained on: {', '.join(real)}."]
           if real else []),
         *([f"Procedural phantoms nobody trained on: {', '.join(phantoms)}."] if phantoms else []),
         "Scored against: " + "; ".join(f"{kind} ({', '.join(cls)})" for kind, cls in scored.items()) + ".",
         *([] if "human" in scored else [HUMAN_LABELS_NOTE[0].upper() + HUMAN_LABELS_NOTE[1:] + "."])])
    out = {"cases": records, "scored_against": scored, "reference": text,
           "kinds": {kind: REFERENCE_KINDS.get(kind, "not recorded") for kind in scored}}
    if any(v.reference_key for v in volumes):
        out["labeller"] = labeller_code()
    return out


def evaluation_table(cases: dict[str, dict]) -> str:
    """The evaluation rows as a text table: per case and scored class its reference kind beside the Dice
    of each network (teacher, fp32, int8, ...)."""
    nets = list(dict.fromkeys(w for row in cases.values() for w in row if w not in NOT_SCORES))
    head = ["case", "class", "reference", *nets]
    lines = [head]
    for key, row in cases.items():
        kinds = row.get("reference", {}).get("kind", {})
        for cls in scored_classes(row):
            dices = [(row.get(w, {}).get(cls) or {}).get("dice") for w in nets]
            lines.append([key, cls, kinds.get(cls, "unrecorded"), *("-" if d is None else f"{d:.3f}" for d in dices)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


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
