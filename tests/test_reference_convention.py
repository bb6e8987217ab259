"""The reference labeller follows the clinical convention for lungs (RTOG 1106: to the lung's outer edge,
its partial-volume shell included, the airway left out) and bone (whole bone to the outer cortical
surface), and owns its rules: nothing of the product's post-processing (issue 30). Synthetic volumes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from compiler.labels import reference
from compiler.labels.reference import LUNG_EDGE_MM, reference_labels
from compiler.labels.table import VALUE

REPO = Path(__file__).resolve().parents[1]


def test_the_labeller_imports_nothing_of_the_products_post_processing():
    tree = ast.parse((REPO / "compiler/labels/reference.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" for a in node.names)
    assert not {m for m in imported if m.startswith("appliance.inference.postprocess")}
    assert not hasattr(reference, "RULES_VERSION")  # the cache is keyed by the labeller's content


def _chest():
    """A muscle torso (1 mm voxels) with two aerated lungs (-850 HU) and a trachea (-1000 HU) whose
    main bronchi open into them. The left lung (patient left, +x) has a graded partial-volume shell:
    -400 HU to 1 mm, -200 HU to 2 mm, then -150 HU to 4 mm (beyond the shell's 2 mm); the right lung
    is wrapped in 4 mm of fat (-80 HU). The airway's wall outside the lungs is at -300 HU."""
    shape, sp = (72, 110, 150), (1.0, 1.0, 1.0)
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[np.broadcast_to(((yy - 55) / 50.0) ** 2 + ((xx - 75) / 70.0) ** 2 < 1.0, shape)] = 40.0  # muscle
    # distance from each lung's centre, mm in-plane (the lungs are 1.2 times taller than wide)
    rl, rr = (np.sqrt(((zz - 32) / 1.2) ** 2 + (yy - 55) ** 2 + (xx - cx) ** 2) for cx in (107, 43))
    R = 25.0
    hu[(rl >= R + 2) & (rl < R + 4)] = -150.0
    hu[(rl >= R + 1) & (rl < R + 2)] = -200.0
    hu[(rl >= R) & (rl < R + 1)] = -400.0
    hu[(rr >= R) & (rr < R + 4)] = -80.0
    rng = np.random.default_rng(4)
    for r in (rl, rr):
        core = r < R
        hu[core] = rng.normal(-850.0, 30.0, int(core.sum()))
    # trachea down the midline from the top, main bronchi into each lung's upper part
    trachea = np.broadcast_to((zz >= 40) & ((yy - 55) ** 2 + (xx - 75) ** 2 <= 36), shape)
    bronchi = np.zeros(shape, dtype=bool)
    for cx in (107, 43):
        t = np.linspace(0.0, 1.0, 200)
        for z, x in zip(40 + 4 * t, 75 + (cx - 75) * 0.85 * t, strict=True):
            bronchi[int(round(z)) - 2 : int(round(z)) + 3, 53:58, int(round(x)) - 2 : int(round(x)) + 3] = True
    airway = trachea | bronchi
    wall = ndimage.binary_dilation(airway) & ~airway & (rl >= R) & (rr >= R)  # outside the lungs
    hu[wall] = -300.0  # the bronchial wall at partial volume
    hu[airway] = -1000.0
    return hu, sp, rl, rr, R, airway, wall


@pytest.fixture(scope="module")
def chest():
    volume = _chest()
    return (*volume, reference_labels(volume[0], volume[1]))


def test_the_lung_takes_its_partial_volume_shell_up_to_2_mm(chest):
    hu, sp, rl, rr, R, airway, wall, ref = chest
    left = ref.labels == VALUE["lung_left"]
    away = ~airway & (np.abs(np.arange(hu.shape[0]) - 32)[:, None, None] < 20)  # clear of bronchi and the ends
    assert LUNG_EDGE_MM == 2.0
    assert left[(rl < R - 1) & away].mean() > 0.99
    assert left[(rl >= R) & (rl < R + 1) & away].mean() > 0.95  # -400 HU: partial volume, lung
    assert left[(rl >= R + 1) & (rl < R + 1.6) & away].mean() > 0.8  # -200 HU within 2 mm: lung
    assert not left[(rl >= R + 2.6) & away].any()  # beyond 2 mm stays body, -150 HU or not
    assert (ref.labels[(rl >= R + 2.6) & (rl < R + 4)] == VALUE["body"]).mean() > 0.95


def test_fat_and_muscle_around_a_lung_are_body(chest):
    hu, sp, rl, rr, R, airway, wall, ref = chest
    right = ref.labels == VALUE["lung_right"]
    fat = (rr >= R) & (rr < R + 4) & ~airway
    assert right[(rr < R - 1) & ~airway].mean() > 0.99
    assert not right[fat].any()
    assert not ((ref.labels == VALUE["lung_left"]) | right)[hu == 40.0].any()  # muscle


def test_the_lungs_never_take_the_airway(chest):
    hu, sp, rl, rr, R, airway, wall, ref = chest
    assert VALUE["airway"] in ref.known
    lungs = (ref.labels == VALUE["lung_left"]) | (ref.labels == VALUE["lung_right"])
    assert (ref.labels[airway] == VALUE["airway"]).mean() > 0.9
    assert not lungs[airway].any()
    # nor its wall (-300 HU, partial volume like the lung's shell) where it runs outside the lungs
    assert not lungs[wall].any()


def _rib_beside_a_vessel():
    """A rib-like bone along z (1.5 mm voxels): marrow (200 HU) inside a 700 HU cortex, wrapped in a
    one-voxel partial-volume edge of 200 HU; on its anterior side a 100 HU neighbour replaces the edge,
    on its left side an even 200 HU contrast-filled vessel touches the cortex."""
    shape, sp = (24, 100, 100), (1.5, 1.5, 1.5)
    _, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    y, x = (yy - 50) * sp[1], (xx - 50) * sp[2]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[np.broadcast_to(y**2 + x**2 < 70**2, shape)] = 40.0
    r = np.broadcast_to(np.sqrt(y**2 + x**2), shape)
    vessel = np.broadcast_to(np.sqrt(y**2 + (x - 16.0) ** 2) < 7.0, shape)
    neighbour = np.broadcast_to((y < -8.5) & (y > -20.0) & (np.abs(x) < 6.0), shape)
    cortex = r < 9.0
    rim = ndimage.binary_dilation(cortex, ndimage.generate_binary_structure(3, 1)) & ~cortex  # one voxel
    edge = rim & ~vessel & ~neighbour
    hu[edge] = 200.0
    hu[neighbour] = 100.0
    hu[vessel & (r >= 9.0)] = 200.0
    hu[r < 9.0] = 700.0
    hu[r < 7.0] = 200.0
    hu += np.random.default_rng(5).normal(0, 10, shape).astype(np.float32)
    return hu, sp, r, rim, edge, neighbour & (r >= 9.0), vessel & (r >= 9.0)


def test_bone_takes_its_partial_volume_edge_but_not_a_soft_neighbour_nor_a_vessel():
    hu, sp, r, rim, edge, neighbour, vessel = _rib_beside_a_vessel()
    ref = reference_labels(hu, sp)
    bone = ref.labels == VALUE["bone"]
    inner = slice(2, -2)
    assert bone[inner][(r < 9.0)[inner]].mean() > 0.99  # cortex and marrow
    # the 200 HU edge around the cortex (where it touches the vessel it cannot be told from the lumen)
    clear = edge & (ndimage.distance_transform_edt(~vessel, sampling=sp) > 3.0)
    assert clear.sum() > 0.7 * edge.sum()
    assert bone[inner][clear[inner]].mean() > 0.95
    assert not bone[neighbour].any()  # 100 HU beside the cortex: soft tissue
    assert bone[vessel].mean() < 0.02  # an even contrast-filled lumen touching the cortex
    assert not bone[(r >= 9.0) & ~rim].any()  # one layer, no further
