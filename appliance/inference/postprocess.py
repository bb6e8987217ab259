"""Post-processing of a label map: experimental organs confined to soft tissue, and an organ that is one
connected structure keeps its largest component.

Experimental organs (heart, aorta, liver: no held-out reference validates them) may only take voxels that
the validated classes would call plain body. The validated labels are what the product claims, and an
unvalidated organ must not take them over: on the held-out chest the network called 9400 voxels of
vertebral bodies "aorta" (trabecular bone and a contrast-filled aorta share HU), a fifth of the bone it
missed there.

A lung, the airway tree, the heart, the aorta and the liver are each one connected piece of anatomy, so
a second, detached island of the same label is a false positive (measured on the held-out chest: the
network's airway had 420 islands, most of them specks in the lung, and keeping the largest one raised
airway Dice from 0.51 to 0.85). Which labels it applies to is part of each operating point (the
manifest mode's `keep_largest_component`), as nnU-Net decides it per class and configuration.

"Largest" is counted in voxels, except for the airway, where it is counted in pure air (below -950 HU):
the trachea's lumen is pure air, aerated lung is not (-850 HU on average), and at 3 mm the preview
network's largest airway island was a blob of lung (820 voxels, 5 of them below -950) while the
trachea's 591 voxels held 511 (measured on the held-out chest).

An island that is removed takes the foreground label that surrounds it most (a speck of "airway" in the
lung becomes lung); background only if nothing else touches it. On the held-out abdomen the false
airway islands are bowel gas that the network rings with "background"; they belong to the patient, and
relabelling them background would leave holes in the body.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

_FULLY_CONNECTED = np.ones((3, 3, 3), dtype=bool)  # 26-neighbourhood: a thin bronchus is still connected
PURE_AIR_HU = -950.0


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
           for axis in range(mask.ndim)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)


def confine_experimental(labels: np.ndarray, probs: np.ndarray, validated: list[int], experimental: list[int],
                         host: int) -> np.ndarray:
    """Where `labels` holds an experimental value, the best of the `validated` foreground classes (by
    `probs`, (C, ...) indexed by label value) replaces it unless that class is `host`. Background is
    never a candidate: an organ voxel is inside the patient. Modifies `labels` in place and returns it."""
    where = np.isin(labels, experimental)
    if not where.any():
        return labels
    candidates = np.asarray(validated)
    fallback = candidates[np.argmax(probs[:, where][candidates], axis=0)]
    labels[where] = np.where(fallback == host, labels[where], fallback)
    return labels


def keep_single_structures(labels: np.ndarray, hu: np.ndarray, structures: dict[str, int]) -> np.ndarray:
    """One component of each named structure (name -> label value), the airway's chosen by its pure air;
    `hu` on the same grid as `labels`. Modifies `labels` in place and returns it."""
    within = {v: hu < PURE_AIR_HU for name, v in structures.items() if name == "airway"}
    return keep_largest_components(labels, structures.values(), within)


def keep_largest_components(labels: np.ndarray, values: Iterable[int],
                            within: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """`labels` with every island of each of `values` but the largest relabelled by its surroundings
    (modified in place and returned). Where `within[value]` is given, an island's size is its voxels
    inside that mask (voxel count again if no island has any)."""
    for value in values:
        mask = labels == value
        if not mask.any():
            continue
        box = _bbox(mask)
        comp, n = ndimage.label(mask[box], structure=_FULLY_CONNECTED)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        if within is not None and value in within:
            inside = np.bincount(comp.ravel(), weights=within[value][box].ravel(), minlength=n + 1)[1:]
            sizes = inside if inside.max() > 0 else sizes
        largest = 1 + int(np.argmax(sizes))
        region = labels[box]  # a view: writes go to `labels`
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            if i == largest:
                continue
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            island = comp[grown] == i
            ring = ndimage.binary_dilation(island, structure=_FULLY_CONNECTED) & ~island
            around = region[grown][ring]
            tissue = around[(around != value) & (around != 0)]
            region[grown][island] = np.bincount(tissue).argmax() if tissue.size else 0
    return labels
