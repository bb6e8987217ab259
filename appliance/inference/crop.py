"""The part of the model grid worth running the network on: the box around everything denser than air.

A CT field of view is mostly air around the patient (a 400-500 mm reconstruction circle around a
300-350 mm chest), and the network labels air outside the patient as background anyway, so sliding
windows over it cost time and change nothing. The box keeps a margin of air so the network still sees
the skin surface with the context it was trained on, and is never smaller than one patch where the
image allows, so patches hold real voxels rather than padding.
"""

from __future__ import annotations

import numpy as np

TISSUE_HU = -500.0  # above any air, below any tissue (fat is about -100, aerated lung about -850)
MIN_PLANE_VOXELS = 20  # a plane holding fewer tissue voxels than this is noise or a stray speck


def tissue_box(
    hu: np.ndarray, margin: int, min_shape: tuple[int, int, int], threshold: float = TISSUE_HU
) -> tuple[slice, slice, slice]:
    """Slices of `hu` (z, y, x) around its tissue, grown by `margin` voxels and to at least `min_shape`;
    the whole array when it holds no tissue (the network then decides)."""
    tissue = hu > threshold
    box = []
    for axis, n in enumerate(hu.shape):
        others = tuple(a for a in range(3) if a != axis)
        planes = np.flatnonzero(tissue.sum(axis=others) >= MIN_PLANE_VOXELS)
        if planes.size == 0:
            return (slice(0, hu.shape[0]), slice(0, hu.shape[1]), slice(0, hu.shape[2]))
        lo, hi = max(0, int(planes[0]) - margin), min(n, int(planes[-1]) + 1 + margin)
        short = min(n, min_shape[axis]) - (hi - lo)
        if short > 0:  # grow around the centre, then shift back inside the image
            lo -= short // 2
            hi += short - short // 2
            lo, hi = (0, hi - lo) if lo < 0 else (lo, hi)
            lo, hi = (n - (hi - lo), n) if hi > n else (lo, hi)
        box.append(slice(lo, hi))
    return tuple(box)
