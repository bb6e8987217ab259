"""Evaluation: per-class Dice and 95% Hausdorff distance against the reference labels, counted only on
voxels whose reference is authoritative for that class, plus INT8-vs-FP32 agreement.

Runs the appliance's own inference path (ONNX Runtime, sliding window) so what is measured is what ships.
"""

from __future__ import annotations

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
