"""Post-processing of a label map: an organ that is one connected structure keeps its largest component.

A lung, the airway tree, the heart, the aorta and the liver are each one connected piece of anatomy, so
a second, detached island of the same label is a false positive (measured on the held-out chest: the
network's airway had 420 islands, most of them specks in the lung, and keeping the largest one raised
airway Dice from 0.51 to 0.85). Which labels it applies to is part of each operating point (the
manifest mode's `keep_largest_component`), as nnU-Net decides it per class and configuration: at 3 mm
the preview network's largest airway island is not always the trachea, and there it stays off.

An island that is removed takes the label that surrounds it most (a speck of "airway" in the lung
becomes lung), never background inside the body.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

_FULLY_CONNECTED = np.ones((3, 3, 3), dtype=bool)  # 26-neighbourhood: a thin bronchus is still connected


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
           for axis in range(mask.ndim)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)


def keep_largest_components(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """`labels` with every island of each of `values` but the largest relabelled by its surroundings
    (modified in place and returned)."""
    for value in values:
        mask = labels == value
        if not mask.any():
            continue
        box = _bbox(mask)
        comp, n = ndimage.label(mask[box], structure=_FULLY_CONNECTED)
        if n <= 1:
            continue
        largest = 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
        region = labels[box]  # a view: writes go to `labels`
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            if i == largest:
                continue
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            island = comp[grown] == i
            ring = ndimage.binary_dilation(island, structure=_FULLY_CONNECTED) & ~island
            around = region[grown][ring]
            around = around[around != value]
            region[grown][island] = np.bincount(around).argmax() if around.size else 0
    return labels
