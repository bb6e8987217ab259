"""Rule-based reference labeller: body, lungs (left/right), airway and bone from HU and morphology.

Slow and careful rather than fast: it makes the training targets and the evaluation references for
real CT that has no human labels. It runs on an LPS-aligned grid (x -> patient left, y -> posterior,
z -> superior; see `appliance.inference.grid.lps_grid`), typically the 1.5 mm model grid.

Where the rules cannot see an organ they say so instead of guessing: the result carries a per-voxel
`labelled` mask (False = no opinion: the losses and the evaluation ignore that voxel) and the set of
classes the volume has knowledge of (`known`). Organs the rules never label (heart, aorta, liver) are
not known; a voxel labelled body may then be any of them (see `compiler.train.losses`).

Rules:
* body: largest component of HU > -300 after an in-plane opening that detaches the table, grown back
  to the threshold mask near the surviving body, holes filled slice by slice;
* airway: a round air column near the midline, above the middle of the aerated lung, in the most
  superior slices of internal air (the trachea), region-grown at increasing HU thresholds until the
  volume jumps (a leak);
* lungs, as clinical contours draw them (the RTOG 1106 organ-at-risk atlas: Kong FM et al., Int J
  Radiat Oncol Biol Phys 2011;81(4):1442-1457; the ESTRO/RTOG lung atlases): each lung to its outer
  edge in a lung window, collapsed and partly aerated lung and the small vessels beyond the hilum
  included; the trachea and main bronchi, the hilar vessels outside the lung and the tumour left out.
  Aerated lung is air (< -500 HU) inside the body that is not airway and looks like parenchyma, not gas
  (`aerated_lung`: bowel gas is mostly below -950 HU, lung is not), split into left/right by components
  (eroding until two appear), vessels included by slice-wise closing. That stops near the -500 HU
  iso-line, a voxel or two inside the clinical edge, so each lung then grows face-connected through its
  partial-volume shell at the pleura and the diaphragm (`lung_edge`): body voxels under
  `LUNG_EDGE_HU` (-100: more than a trace of air; fat is -100 to -50 HU, muscle +40) up to
  `LUNG_EDGE_MM` (2 mm, at least one voxel), the two lungs in turn so neither takes the other's, never
  into the airway (or the voxel around it) or bone. If one side holds much less aerated lung than the
  mirror image of the other (collapse, consolidation, effusion), the mirrored region on that side is
  marked unlabelled: the rules cannot tell collapsed lung from effusion;
* bone, whole, as anatomical atlases and TotalSegmentator's expert-refined bone masks draw it: cortex
  and marrow, ribs included, out to the outer cortical surface. Cortex is HU > `CORTEX_HU` (250), minus
  contrast-filled vessels (thick and homogeneous, `_vessel_mask`), closed, with each slice's enclosed
  holes up to `MARROW_HOLE_MAX_MM2` (25 cm2: a vertebral body, not the inside of a skull) filled as
  marrow. An island is kept only if it has cortex and texture (`_has_cortex`: p95 >= 450 HU, and
  p95 - median >= 150 HU or p95 >= 800): contrast in the bowel, the kidneys or a vessel is dense but
  even. The cortex threshold leaves out the rim that partial volume blurs between cortex and soft
  tissue (inside an expert's bone boundary such voxels are about 100-365 HU, median about 200), so
  the bone then grows by `BONE_EDGE_MM` (1.5 mm, at least one voxel) into body voxels of at least
  `BONE_EDGE_HU` (150: above muscle, 40-60 HU) that are not vessel-like, lung or airway (`bone_edge`),
  and the slices' enclosed holes are filled again;
* marrow the cortex rule cannot see (`marrow_zone`): where the cortex is under 250 HU (thin slices
  resampled from thick ones: a vertebral cortex at 180-240 HU) the slice's ring is not closed and the
  marrow (90-250 HU) stays "body". Voxels that may be such marrow are marked bone-unknown
  (`class_unknown`), not asserted either way: the losses let them be bone or body, and the evaluation
  leaves them out of the bone score. Labelling them bone instead leaks into a contrast-filled heart and
  aorta, which are as dense and are surrounded by no cortex the rule can test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from compiler.labels.table import VALUE

log = logging.getLogger(__name__)

# what the labels mean, written into every manifest the compiler writes (provenance.label_conventions)
CONVENTIONS = {
    "lungs": "each lung to its outer edge as clinical contours draw it in a lung window (RTOG 1106 atlas, Kong "
             "et al., IJROBP 2011;81:1442): aerated lung, collapsed and partly aerated lung and the small "
             "vessels beyond the hilum, and its partial-volume shell (body voxels under -100 HU within 2 mm); "
             "not the trachea and main bronchi, the hilar vessels outside the lung or the tumour",
    "bone": "the whole bone, cortex and marrow, ribs included, to its outer cortical surface (its edge: body "
            "voxels of 150 HU or more within 1.5 mm, contrast-filled vessels excluded)",
}

RULE_CLASSES = frozenset({0, 1, 2, 3, 4, 5})
CORTEX_HU = 250.0  # dense enough to be cortex (or contrast: the island and vessel tests sort that out)
MARROW_HOLE_MAX_MM2 = 2500.0  # a lumbar vertebral body's cross-section; the inside of a skull is larger
ISLAND_CORTEX_HU = 450.0  # a bone island's 95th percentile reaches this: it has cortex
ISLAND_TEXTURE_HU = 150.0  # ... and bone is uneven (p95 - median), where contrast in a lumen is even
ISLAND_VERY_DENSE_HU = 800.0  # ... unless its p95 is this dense (thick cortex, a femoral shaft)
ISLAND_MIN_ML = 0.1  # smaller islands are too few voxels to judge
BONE_EDGE_HU = 150.0  # the cortex's partial-volume rim; muscle is 40-60 HU, cancellous bone 100-300
BONE_EDGE_MM = 1.5  # the rim's depth: one layer of 1.5 mm voxels
LUNG_EDGE_HU = -100.0  # more than a trace of air: fat is about -100 to -50 HU, muscle +40
LUNG_EDGE_MM = 2.0  # the lung's partial-volume shell at the pleura and the diaphragm
MARROW_MIN_HU = 90.0  # cancellous bone; above muscle (40-60 HU), the spinal canal and fatty tissue
MARROW_REACH_MM = 15.0  # from the rule bone: half a lumbar vertebral body's depth
MARROW_RING_HU = 150.0  # a sub-threshold cortex at partial volume
MARROW_RING_REACH_MM = 25.0
MARROW_RING_DIRECTIONS = 5  # of 8 in-plane: bone around it, not beside it (an aorta by the spine has 3)


@dataclass
class ReferenceLabels:
    """Labels (uint8, label-table values), `labelled` (bool: False = ignore), `known` class values."""

    labels: np.ndarray
    labelled: np.ndarray
    known: frozenset[int]
    notes: list[str] = field(default_factory=list)
    # class value -> voxels where that class alone is unknown (the label there may hide it)
    class_unknown: dict[int, np.ndarray] = field(default_factory=dict)


def _disk(radius_vox: float) -> np.ndarray:
    r = max(1, int(round(radius_vox)))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r)[None]


def _ball(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    rz, ry, rx = (max(1, int(round(radius_mm / s))) for s in spacing)
    z, y, x = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    return ((z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2) <= radius_mm**2 + 1e-6


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_fill_holes(mask[k])
    return out


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding `mask`'s voxels, widened by `margin` voxels (within the array)."""
    box = []
    for axis, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, int(hit.min()) - margin), min(n, int(hit.max()) + 1 + margin)))
    return tuple(box)


def _fill_marrow(mask: np.ndarray, spacing) -> np.ndarray:
    """`mask` plus, in each axial slice, the holes it encloses that are no larger than
    `MARROW_HOLE_MAX_MM2` (a vertebral body's marrow, not the brain inside a skull)."""
    limit = MARROW_HOLE_MAX_MM2 / (spacing[1] * spacing[2])  # voxels
    out = mask.copy()
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        enclosed = ndimage.binary_fill_holes(mask[k])
        enclosed &= ~mask[k]
        holes, n = ndimage.label(enclosed)
        if n == 0:
            continue
        area = np.bincount(holes.ravel(), minlength=n + 1)
        fill = area <= limit
        fill[0] = False
        out[k] |= fill[holes]
    return out


def _has_cortex(hu: np.ndarray, islands: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) bool over the labelled `islands` (0 = none, always False): an island is bone when its
    95th percentile HU reaches `ISLAND_CORTEX_HU` and it is textured (p95 - median >=
    `ISLAND_TEXTURE_HU`) or very dense (p95 >= `ISLAND_VERY_DENSE_HU`). Contrast in the bowel, a kidney
    or a vessel is dense but even; an island without cortex is not bone."""
    out = np.zeros(n + 1, dtype=bool)
    inside = islands > 0
    if n == 0 or not inside.any():
        return out
    ids, values = islands[inside], hu[inside].astype(np.float64)
    order = np.lexsort((values, ids))  # by island, then by HU
    ids, values = ids[order], values[order]
    start = np.searchsorted(ids, np.arange(n + 1), side="left")
    count = np.diff(np.append(start, ids.size))

    def quantile(q: float) -> np.ndarray:  # linear interpolation between order statistics (numpy's default)
        pos = q * np.maximum(count - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
        base = np.minimum(start, ids.size - 1)
        a, b = values[base + lo], values[base + hi]
        return a + (pos - lo) * (b - a)

    p95, median = quantile(0.95), quantile(0.5)
    out[:] = (count > 0) & (p95 >= ISLAND_CORTEX_HU) & (
        (p95 - median >= ISLAND_TEXTURE_HU) | (p95 >= ISLAND_VERY_DENSE_HU))
    out[0] = False
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def body_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Skin surface with holes filled; the table (thin, attached at most by padding) removed."""
    dense = hu > -300
    r = 6.0 / spacing[1]
    opened = ndimage.binary_opening(dense, structure=_disk(r))
    core = _largest(opened)
    grown = ndimage.binary_dilation(core, structure=_disk(r + 1)) & dense
    return _fill_slices(_largest(grown | core))


def _trachea_seed(air: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing) -> tuple[int, int, int] | None:
    """A voxel of the trachea: a small round air region near the midline in the top slices of the air."""
    vox_area = spacing[1] * spacing[2]
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    if xs.size == 0:
        return None
    mid_x = 0.5 * (xs[0] + xs[-1])
    pure = air & (hu < -900)
    # the trachea runs above the middle of the lungs; bowel gas lies below them
    lungs = aerated_lung(air, hu, spacing)
    if lungs.sum() * np.prod(spacing) / 1000.0 < 100.0:
        return None
    z_lungs = float(np.nonzero(lungs.any(axis=(1, 2)))[0].mean())
    zs = np.nonzero(pure.any(axis=(1, 2)))[0]
    for k in zs[::-1]:
        if k <= z_lungs:
            break
        lab, n = ndimage.label(pure[k])
        for i in range(1, n + 1):
            comp = lab == i
            area = comp.sum() * vox_area
            if not 40.0 <= area <= 900.0:
                continue
            yy, xx = np.nonzero(comp)
            if abs(xx.mean() - mid_x) * spacing[2] > 35.0:
                continue
            # the column must go on (connected in 3D) for at least 2 cm below
            depth = max(2, int(20.0 / spacing[0]))
            if k - depth < 0:
                continue
            lab3, _ = ndimage.label(pure[k - depth : k + 1])
            ids = np.unique(lab3[-1][comp])
            if not np.isin(lab3[0], ids[ids > 0]).any():
                continue
            return int(k), int(round(yy.mean())), int(round(xx.mean()))
    return None


def airway_mask(hu: np.ndarray, body: np.ndarray, spacing) -> np.ndarray | None:
    """Trachea and main bronchi by leak-controlled region growing; None when no trachea is visible."""
    air = body & (hu < -500)
    seed = _trachea_seed(air, hu, body, spacing)
    if seed is None:
        return None
    vox_ml = np.prod(spacing) / 1000.0
    best = None
    prev = 0.0
    for thr in (-980, -960, -940, -920, -900, -880, -860):
        lab, _ = ndimage.label((hu < thr) & body)
        if lab[seed] == 0:
            continue
        comp = lab == lab[seed]
        vol = comp.sum() * vox_ml
        if vol > 250.0 or (prev > 0 and vol > 2.2 * prev and vol > 20.0):
            break  # leaked into the lungs
        best, prev = comp, vol
    if best is None:
        return None
    return ndimage.binary_closing(best, structure=_ball(1.0 * max(spacing), spacing)) | best


def aerated_lung(air: np.ndarray, hu: np.ndarray, spacing) -> np.ndarray:
    """The components of internal air that look like aerated lung rather than gas.

    Lung parenchyma mixes air with vessels and interstitium: under 25% of its voxels are below -950 HU
    (measured: 0-13% on our chest and abdomen cases), where bowel gas has 39-62%. A component needs
    40 ml, or 20 ml where the top of the scan cuts it (a lung base of an abdominal scan); very large
    components (> 1 l, e.g. emphysema) count as lung whatever their texture.
    """
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    idx = np.arange(n + 1)
    ml = np.bincount(lab.ravel(), minlength=n + 1) * (np.prod(spacing) / 1000.0)
    mean = np.asarray(ndimage.mean(hu, lab, idx))
    gas_fraction = np.asarray(ndimage.mean(hu < -950, lab, idx))
    top = np.zeros(n + 1, dtype=bool)
    top[np.unique(lab[-1])] = True  # z grows superior on the LPS grid
    parenchyma = (gas_fraction < 0.25) | (ml > 1000.0)
    keep = (mean > -970.0) & parenchyma & ((ml > 40.0) | (top & (ml > 20.0)))
    keep[0] = False
    return keep[lab]


def _split_lungs(lungs: np.ndarray, mid_x: float) -> tuple[np.ndarray, np.ndarray]:
    """(left, right): left is on the high-x side (LPS +x = patient left)."""
    mask = lungs
    for _ in range(8):
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel())[1:]
        if n >= 2:
            order = np.argsort(sizes)[::-1]
            xs = [np.nonzero(lab == c + 1)[2].mean() for c in order[:2]]
            opposite = (xs[0] - mid_x) * (xs[1] - mid_x) < 0
            if sizes[order[1]] > 0.15 * sizes[order[0]] and opposite:
                seeds = np.zeros(lungs.shape, dtype=np.int8)
                for side, comp in ((1, order[0] + 1), (2, order[1] + 1)):
                    seeds[lab == comp] = side
                # give every lung voxel the side of its nearest seed
                _, (iz, iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
                sides = seeds[iz, iy, ix]
                a, b = sides == 1, sides == 2
                xa = np.nonzero(a & lungs)[2].mean()
                xb = np.nonzero(b & lungs)[2].mean()
                left_side = a if xa > xb else b
                return lungs & left_side, lungs & ~left_side
        if n == 0:
            break
        mask = ndimage.binary_erosion(mask)
    # one lung or fused: split at the midline
    x = np.arange(lungs.shape[2])[None, None, :]
    return lungs & (x >= mid_x), lungs & (x < mid_x)


def _close_lung(mask: np.ndarray, spacing) -> np.ndarray:
    closed = ndimage.binary_closing(mask, structure=_disk(3.0 / spacing[1]), border_value=0)
    return _fill_slices(closed | mask)


def _edge_layers(edge_mm: float, spacing) -> int:
    return max(1, int(round(edge_mm / min(spacing))))


def lung_edge(left: np.ndarray, right: np.ndarray, free: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) grown face-connected into `free` (the voxels a lung may take) by `LUNG_EDGE_MM`,
    one layer at a time, the two lungs in turn (the side that goes first alternates), so neither takes
    a voxel the other holds."""
    face = ndimage.generate_binary_structure(3, 1)
    grown = [left.copy(), right.copy()]
    for layer in range(_edge_layers(LUNG_EDGE_MM, spacing)):
        for side in ((0, 1) if layer % 2 == 0 else (1, 0)):
            other = grown[1 - side]
            grown[side] |= ndimage.binary_dilation(grown[side], face) & free & ~other
    return grown[0], grown[1]


def lung_masks(
    hu: np.ndarray, body: np.ndarray, airway: np.ndarray | None, spacing, bone: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(left, right, unlabelled region, notes). `bone` (the cortex rule's) is never lung."""
    notes: list[str] = []
    vox_ml = np.prod(spacing) / 1000.0
    air = body & (hu < -500)
    if airway is not None:
        air &= ~ndimage.binary_dilation(airway, iterations=1)
    lungs = aerated_lung(air, hu, spacing)
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    mid_x = 0.5 * (xs[0] + xs[-1]) if xs.size else lungs.shape[2] / 2
    if airway is not None and airway.any():
        mid_x = float(np.nonzero(airway)[2].mean())
    empty = np.zeros_like(lungs)
    if not lungs.any():
        return empty, empty, empty, notes
    left, right = _split_lungs(lungs, mid_x)
    left, right = _close_lung(left, spacing), _close_lung(right, spacing)
    right &= ~left
    # the partial-volume shell at the pleura and the diaphragm (module docstring)
    free = body & (hu < LUNG_EDGE_HU)
    if airway is not None:
        free &= ~ndimage.binary_dilation(airway, iterations=1)
    if bone is not None:
        free &= ~bone
    left, right = lung_edge(left, right, free, spacing)
    unlabelled = np.zeros_like(lungs)
    vl, vr = left.sum() * vox_ml, right.sum() * vox_ml
    for small, big, name in ((right, left, "right"), (left, right, "left")):
        vs, vb = small.sum() * vox_ml, big.sum() * vox_ml
        if vb > 200.0 and vs < 0.6 * vb:
            # mirror the healthy side across the midline: where this side's lung should be
            xi = np.arange(lungs.shape[2])
            src = np.clip(np.rint(2 * mid_x - xi).astype(int), 0, lungs.shape[2] - 1)
            mirrored = big[:, :, src]
            region = ndimage.binary_dilation(mirrored, structure=_ball(10.0, spacing)) & body & ~small & ~big
            unlabelled |= region
            notes.append(f"{name} lung {vs:.0f} ml vs {vb:.0f} ml on the other side: mirrored region unlabelled")
    log.info("event=reference_lungs left_ml=%.0f right_ml=%.0f unlabelled_ml=%.0f", vl, vr,
             unlabelled.sum() * vox_ml)
    return left, right, unlabelled, notes


def _vessel_mask(hu: np.ndarray, dense: np.ndarray, spacing) -> np.ndarray:
    """Contrast-filled vessels and heart chambers among dense voxels, by shape and texture: the lumen is
    thick (>= 3 mm from the edge of the dense region) and homogeneous (local SD < 90 HU over 5 voxels)
    at a moderate mean, where trabecular bone is textured and cortex is thin or brighter."""
    dist = ndimage.distance_transform_edt(dense, sampling=spacing)
    mean = ndimage.uniform_filter(hu, 5)
    sd = np.sqrt(np.maximum(ndimage.uniform_filter(hu * hu, 5) - mean * mean, 0.0))
    seeds = (dist >= 3.0) & (sd < 90.0) & (mean > 180.0) & (mean < 1500.0)
    grown = ndimage.binary_dilation(seeds, structure=_ball(3.5, spacing))
    return grown & dense & (hu < 2000)


def bone_mask(hu: np.ndarray, body: np.ndarray, spacing) -> np.ndarray:
    """Cortex threshold, marrow filled; contrast-filled vessels (by shape) and homogeneous or
    cortex-free components (bowel contrast, kidneys) rejected."""
    dense = (hu > CORTEX_HU) & body
    dense &= ~_vessel_mask(hu, dense, spacing)
    dense = ndimage.binary_closing(dense, structure=_ball(1.0 * max(spacing), spacing)) | dense
    filled = _fill_marrow(dense, spacing)
    lab, n = ndimage.label(filled)
    if n == 0:
        return filled
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = _has_cortex(hu, lab, n) & (sizes * (np.prod(spacing) / 1000.0) >= ISLAND_MIN_ML)
    return keep[lab]


def bone_edge(hu: np.ndarray, body: np.ndarray, bone: np.ndarray, not_bone: np.ndarray, spacing) -> np.ndarray:
    """`bone` with its partial-volume rim: grown face-connected by `BONE_EDGE_MM` into body voxels of at
    least `BONE_EDGE_HU` that are neither a contrast-filled lumen (`_vessel_mask` among the voxels that
    dense outside the bone) nor `not_bone` (lungs, airway); then each slice's enclosed holes are filled
    again (marrow)."""
    layers = _edge_layers(BONE_EDGE_MM, spacing)
    if not bone.any():
        return bone
    box = _box(bone, layers + 12)  # room for the vessel test's filters
    h, b, inside = hu[box], bone[box], body[box] & ~not_bone[box]
    rim = (h >= BONE_EDGE_HU) & inside & ~b  # marrow inside the bone is not a vessel's lumen
    free = rim & ~_vessel_mask(h, rim, spacing)
    face = ndimage.generate_binary_structure(3, 1)
    grown = b.copy()
    for _ in range(layers):
        grown |= ndimage.binary_dilation(grown, face) & free
    grown = _fill_marrow(grown, spacing) & ~not_bone[box]
    out = bone.copy()
    out[box] |= grown
    return out


def _enclosing_directions(mask: np.ndarray, spacing, reach_mm: float) -> np.ndarray:
    """Per voxel, in how many of the 8 in-plane directions (axes and diagonals) `mask` lies within
    `reach_mm` (uint8, 0-8)."""
    count = np.zeros(mask.shape, dtype=np.uint8)
    ny, nx = mask.shape[1:]
    for dy, dx in ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)):
        steps = int(round(reach_mm / (np.hypot(dy * spacing[1], dx * spacing[2]))))
        hit = np.zeros_like(mask)
        for k in range(1, steps + 1):  # hit[y, x] |= mask[y + k dy, x + k dx]
            oy, ox = k * dy, k * dx
            if abs(oy) >= ny or abs(ox) >= nx:
                break
            hit[:, max(0, -oy):ny - max(0, oy), max(0, -ox):nx - max(0, ox)] |= \
                mask[:, max(0, oy):ny + min(0, oy), max(0, ox):nx + min(0, ox)]
        count += hit
    return count


def marrow_zone(hu: np.ndarray, body: np.ndarray, bone: np.ndarray, spacing) -> np.ndarray:
    """Voxels that may be marrow the cortex rule missed (module docstring): grown from the rule bone
    through marrow-dense tissue (not contrast-vessel-like) up to `MARROW_REACH_MM`, and beyond 3 mm
    of it only where bone (the rule's, or a sub-threshold cortex) surrounds the voxel in the slice."""
    if not bone.any():
        return np.zeros_like(bone)
    box = _box(bone, 12)
    h, b, inside = hu[box], bone[box], body[box]
    free = (h >= MARROW_MIN_HU) & inside & ~b & ~_vessel_mask(h, (h > MARROW_RING_HU) & inside, spacing)
    grown = b.copy()
    face = ndimage.generate_binary_structure(3, 1)
    for _ in range(int(round(MARROW_REACH_MM / min(spacing)))):
        step = grown | (ndimage.binary_dilation(grown, face) & free)
        if np.array_equal(step, grown):
            break
        grown = step
    ring = b | (grown & (h >= MARROW_RING_HU))
    far = ndimage.distance_transform_edt(~b, sampling=spacing) > 3.0
    grown &= ~(far & (_enclosing_directions(ring, spacing, MARROW_RING_REACH_MM) < MARROW_RING_DIRECTIONS))
    out = np.zeros_like(bone)
    out[box] = grown & ~b
    return out


def reference_labels(hu: np.ndarray, spacing: tuple[float, float, float]) -> ReferenceLabels:
    """Label one LPS-aligned HU volume (z, y, x) with spacing (sz, sy, sx) mm."""
    hu = np.asarray(hu, dtype=np.float32)
    body = body_mask(hu, spacing)
    airway = airway_mask(hu, body, spacing)
    cortex_bone = bone_mask(hu, body, spacing)
    left, right, unlabelled, notes = lung_masks(hu, body, airway, spacing, bone=cortex_bone)
    air_organs = left | right
    if airway is not None:
        air_organs |= airway
    bone = bone_edge(hu, body, cortex_bone, air_organs, spacing)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[body] = VALUE["body"]
    labels[left] = VALUE["lung_left"]
    labels[right] = VALUE["lung_right"]
    known = set(RULE_CLASSES)
    if airway is not None:
        labels[airway & body] = VALUE["airway"]
    elif left.any() or right.any():
        known.discard(VALUE["airway"])
        notes.append("no trachea visible: airway unknown")
    labels[bone] = VALUE["bone"]
    marrow = marrow_zone(hu, body, bone, spacing) & (labels == VALUE["body"])
    labelled = ~unlabelled
    return ReferenceLabels(labels, labelled, frozenset(known), notes, {VALUE["bone"]: marrow})
