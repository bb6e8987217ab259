"""The label map on the CT's own grid, with the partial-volume edges drawn there.

The networks label a 1.5 or 3 mm grid; a CT's pixels are 0.5-1 mm. Nearest resampling puts each coarse
edge voxel's label on every fine voxel inside it, so a thin bone (a rib: 1-2 mm of cortex) or a lung's
pleural edge is off by up to half a coarse voxel on the grid a PACS shows (compiler/README.md, "Lungs and
bone as clinicians draw them", has the figures).

Each edge rule of a mode (`ModeSpec.source_edges`) names a label, its host and its tissue ("lung" or
"bone", thresholds `postprocess.LUNG_EDGE_HU` / `BONE_EDGE_HU`). The host voxels of the model grid that
touch the label by a face form its band; on the CT grid a band voxel whose own HU is the tissue's takes the
label. Only the outside is redrawn: inside, a voxel denser than the lung edge may be collapsed lung, and
one softer than the bone edge marrow, which the CT's HU alone cannot tell from soft tissue.

The band travels through the one nearest resampling the labels need anyway, as a rule number in the
label byte's top three bits (labels below 32, at most 7 rules), so the extra cost on the CT grid is one
comparison per band voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from appliance.inference.grid import Grid, resample
from appliance.inference.postprocess import BONE_EDGE_HU, LUNG_EDGE_HU, bounding_box

TISSUE_HU: dict[str, tuple[float, float]] = {  # [above, below) HU of a tissue's partial-volume edge
    "lung": (-np.inf, LUNG_EDGE_HU),
    "bone": (BONE_EDGE_HU, np.inf),
}
LABEL_BITS = 5  # label values below 32 share the byte with the rule number
MAX_RULES = (1 << (8 - LABEL_BITS)) - 1


@dataclass(frozen=True)
class EdgeRule:
    """`label` takes the `host` voxels of its band whose HU is in [above, below)."""

    label: int
    host: int
    above: float
    below: float


def banded(labels: np.ndarray, rules: Sequence[EdgeRule]) -> np.ndarray:
    """`labels` with each rule's band (host voxels face-touching its label) marked by the rule's number
    (1-based) in the top bits; a voxel in two bands keeps the later rule."""
    if len(rules) > MAX_RULES or (labels.size and int(labels.max()) >= 1 << LABEL_BITS):
        raise ValueError(f"edge refinement takes at most {MAX_RULES} rules and label values below {1 << LABEL_BITS}")
    out = labels.copy()
    face = ndimage.generate_binary_structure(3, 1)
    for number, rule in enumerate(rules, start=1):
        mask = labels == rule.label
        if not mask.any():
            continue
        box = bounding_box(mask, 1)
        band = ndimage.binary_dilation(mask[box], face) & (labels[box] == rule.host)
        out[box][band] = (number << LABEL_BITS) | rule.host
    return out


def _finer(target: Grid, affine: np.ndarray) -> bool:
    """The target is finer than the model grid along some axis (by a quarter or more): on the model grid
    itself the band is the layer the post-processing's edge growth stopped before, not a finer look at the
    same edge."""
    model = np.linalg.norm(affine[:3, :3], axis=0)  # x, y, z
    return bool((np.asarray(target.spacing[::-1]) < 0.75 * model).any())


def labels_on_source(labels: np.ndarray, affine: np.ndarray, target: Grid, hu: np.ndarray | None,
                     rules: Sequence[EdgeRule]) -> np.ndarray:
    """`labels` (model grid, `affine`) resampled nearest onto `target`; with the target's `hu`, each rule's
    band voxels of the tissue's HU take its label (module docstring)."""
    if hu is None or not rules or not _finer(target, affine):
        return resample(labels, affine, target, order=0, fill=0)
    on = resample(banded(labels, rules), affine, target, order=0, fill=0)
    flat = on.reshape(-1)
    where = np.flatnonzero(flat >> LABEL_BITS)
    number = flat[where] >> LABEL_BITS
    values = hu.reshape(-1)[where]
    flat[where] &= (1 << LABEL_BITS) - 1
    for i, rule in enumerate(rules, start=1):
        take = (number == i) & (values >= rule.above) & (values < rule.below)
        flat[where[take]] = rule.label
    return on
