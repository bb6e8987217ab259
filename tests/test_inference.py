"""appliance.inference: grids and resampling, sliding-window blending, the model bundle's integrity
checks, backend probing, and `isonode segment` on a phantom DICOM series (committed bundle)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.backends import _ort_gpu_reason, _tensorrt_reason, choose_backend
from appliance.inference.bundle import BundleError, load_bundle
from appliance.inference.crop import tissue_box
from appliance.inference.grid import Grid, grid_of, lps_grid, resample
from appliance.inference.normalise import enclosed_air, network_input
from appliance.inference.postprocess import (
    airway_beside_lumen,
    airway_is_air,
    bone_edge,
    confine_experimental,
    drop_bone_outside_patient,
    drop_bone_with_soft_surface,
    drop_bone_without_cortex,
    drop_implausible_airway,
    extend_airway_through_air,
    fill_airway_lumen,
    fill_bone_marrow,
    grow_lungs_into_air,
    keep_airway_tree,
    keep_largest_components,
    keep_patient,
    keep_single_structures,
    lung_edge,
    trim_bone_surface,
)
from appliance.inference.segment import segment_array
from appliance.inference.sliding import gaussian_weights, sliding_window, window_starts

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "ct_chest"


def test_lps_grid_of_a_flipped_stack_resamples_to_the_same_anatomy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 7, 8)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    flipped_aff = aff.copy()
    flipped_aff[:3, 0] *= -1  # x runs right-to-left in the file
    flipped_aff[:3, 3] = [14.0, 0.0, 0.0]
    grid = lps_grid(grid_of(a, aff), (3.0, 2.0, 2.0))
    assert grid.shape == a.shape
    np.testing.assert_allclose(resample(a, aff, grid), a, atol=1e-5)
    np.testing.assert_allclose(resample(a[:, :, ::-1], flipped_aff, grid), a, atol=1e-5)


def test_general_affine_path_agrees_with_the_separable_path():
    z, y, x = np.mgrid[0:10, 0:12, 0:14].astype(np.float32)
    a = 3 * x + 2 * y + z  # linear: trilinear interpolation is exact
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    theta = np.deg2rad(10)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    dst = Grid((4, 4, 4), rot @ np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 4.0], [0, 0, 0, 4.0], [0, 0, 0, 3.0], [0, 0, 0, 0]]))
    out = resample(a, aff, dst)
    pts = dst.affine @ np.stack([g.ravel() for g in np.mgrid[0:4, 0:4, 0:4][::-1]] + [np.ones(64)])
    expect = (3 * pts[0] + 2 * pts[1] + pts[2]).reshape(4, 4, 4)
    np.testing.assert_allclose(out, expect, atol=1e-3)


def test_windows_cover_the_volume_and_gaussian_weights_peak_in_the_centre():
    assert window_starts(10, 16, 0.25) == [0]
    s = window_starts(100, 32, 0.25)
    assert s[0] == 0 and s[-1] == 68 and all(b - a <= 24 for a, b in zip(s, s[1:], strict=False))
    w = gaussian_weights((8, 8, 8))
    assert w.max() == pytest.approx(1.0) and w[0, 0, 0] < w[4, 4, 4]


def test_sliding_window_blending_reproduces_a_pointwise_model_exactly():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 3, size=(21, 30, 17)).astype(np.float32)
    classes = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1, 1)

    def run(x):  # a voxel-wise model: the blend of overlapping windows must not change it
        return -((x - classes) ** 2)

    probs = sliding_window(img, (8, 16, 16), run, 4, overlap=0.5, batch=3)
    logits = -((img[None] - classes[0]) ** 2)
    e = np.exp(logits - logits.max(0))
    np.testing.assert_allclose(probs, e / e.sum(0), atol=1e-5)


def _patient_in_air(shape=(40, 120, 150), box=((5, 30), (40, 70), (20, 110))) -> np.ndarray:
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[tuple(slice(a, b) for a, b in box)] = 40.0
    hu[0, 0, 0] = 300.0  # a lone speck in the air: not a reason to widen the box
    return hu


def test_enclosed_air_marks_a_trachea_but_not_the_air_around_the_patient():
    hu = np.full((3, 40, 40), -1000.0, dtype=np.float32)
    hu[:, 10:30, 10:30] = 40.0  # a neck
    hu[:, 18:22, 18:22] = -1000.0  # its trachea
    hu[:, 0:10, 28:33] = 40.0  # tissue reaching the slice edge: the air beside it still touches an edge
    enclosed = enclosed_air(hu)
    assert enclosed[:, 18:22, 18:22].all()
    assert enclosed.sum() == 3 * 16
    both = network_input(hu, 1.0, channels=("hu", "x_coordinate", "enclosed_air"))
    assert both.shape == (3, *hu.shape) and np.array_equal(both[2], enclosed)
    with pytest.raises(ValueError, match="unknown network input channel"):
        network_input(hu, 1.0, channels=("hu", "density"))


def test_single_structure_keeps_its_largest_island_and_islands_take_their_surroundings_label():
    labels = np.ones((12, 30, 30), dtype=np.uint8)  # body
    labels[2:10, 5:25, 3:13] = 3  # left lung
    labels[2:10, 5:25, 17:27] = 4  # right lung
    labels[1:11, 13:16, 14:16] = 5  # trachea
    labels[5, 8, 6] = 5  # an airway speck inside the left lung
    labels[6, 2, 2] = 3  # a left-lung speck in the body
    labels[4:6, 10:12, 20:22] = 2  # bone is not one structure: two pieces stay
    labels[7:9, 18:20, 20:22] = 2
    labels[0:2, 0:2, 0:2] = 0  # an airway speck in a pocket of background (gas the network called air)...
    labels[0, 0, 0], labels[1, 1, 1] = 5, 1  # ...that touches the body once: the body gets it
    out = keep_largest_components(labels.copy(), [3, 4, 5])
    assert out[5, 8, 6] == 3 and out[6, 2, 2] == 1 and out[0, 0, 0] == 1
    assert (out == 5).sum() == 10 * 3 * 2 and (out == 2).sum() == (labels == 2).sum()
    assert np.array_equal(out[labels == 4], labels[labels == 4])


def test_airway_keeps_the_island_of_pure_air_over_a_larger_island_of_lung_density():
    labels = np.ones((12, 30, 30), dtype=np.uint8)
    hu = np.full(labels.shape, 40.0, dtype=np.float32)
    labels[2:10, 5:25, 3:13] = 3
    hu[2:10, 5:25, 3:13] = -850.0  # aerated lung
    labels[1:11, 13:16, 14:16] = 5  # trachea: 60 voxels of pure air
    hu[1:11, 13:16, 14:16] = -1000.0
    labels[3:8, 8:12, 5:9] = 5  # a false airway blob in the lung: 80 voxels at lung density
    out = keep_airway_tree(keep_single_structures(labels.copy(), [3]), hu, airway=5)
    assert (out[1:11, 13:16, 14:16] == 5).all() and (out == 5).sum() == 60
    assert (out[3:8, 8:12, 5:9] == 3).all()  # the blob went back to lung
    assert (keep_largest_components(labels.copy(), [5])[3:8, 8:12, 5:9] == 5).all()  # by voxels it would win


def test_an_experimental_organ_never_takes_a_voxel_the_validated_classes_call_bone_or_lung():
    probs = np.zeros((9, 1, 1, 4), dtype=np.float32)
    probs[7, 0, 0, :] = 0.5  # aorta wins the argmax everywhere
    probs[1, 0, 0, 0] = 0.3  # validated runner-up: body -> the aorta stands
    probs[3, 0, 0, 2] = 0.3  # left lung -> lung
    probs[1, 0, 0, 3], probs[8, 0, 0, 3], probs[0, 0, 0, 3] = 0.1, 0.6, 0.3  # liver, then air, then body
    probs[1, 0, 0, 1] = 0.3
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    out = confine_experimental(labels, probs, [1, 2, 3, 4, 5], [6, 7, 8], host=1, bone=2)
    assert out.ravel().tolist() == [7, 7, 3, 8]  # never a hole of background inside the patient


def test_organ_voxels_that_look_like_bone_are_marrow_where_bone_surrounds_them_and_a_lumen_elsewhere():
    labels = np.ones((1, 20, 40), dtype=np.uint8)
    labels[0, 3:12, 3:12] = 2  # a vertebral body's cortex ...
    labels[0, 5:10, 5:10] = 7  # ... whose marrow the network called aorta
    labels[0, 3:12, 16:20] = 2  # an open cortex: bone on one side only (7 of the 20 voxels around)
    labels[0, 5:10, 20:23] = 7
    labels[0, 5:10, 30:37] = 6  # a contrast-filled heart chamber, no bone around it
    probs = 0.6 * (np.arange(9).reshape(9, 1, 1, 1) == labels[None]).astype(np.float32)  # the argmax
    probs[2][np.isin(labels, (6, 7))] = 0.3  # bone is the best validated class in both
    probs[1][np.isin(labels, (6, 7))] = 0.1
    out = confine_experimental(labels.copy(), probs, [1, 2, 3, 4, 5], [6, 7, 8], host=1, bone=2)
    assert (out[0, 5:10, 5:10] == 2).all() and (out[0, 5:10, 20:23] == 2).all()
    assert (out[0, 5:10, 30:37] == 6).all()


def test_a_bone_island_without_cortex_or_of_even_density_takes_its_surroundings_label():
    labels = np.ones((12, 40, 60), dtype=np.uint8)
    hu = np.full(labels.shape, 40.0, dtype=np.float32)
    labels[2:10, 4:14, 4:14], hu[2:10, 4:14, 4:14] = 2, 900.0  # a vertebra: cortex ...
    hu[2:10, 6:12, 6:12] = 200.0  # ... around marrow
    labels[2:10, 4:14, 24:34], hu[2:10, 4:14, 24:34] = 2, 420.0  # 2.7 ml of oral contrast, even
    labels[2:10, 20:30, 44:54], hu[2:10, 20:30, 44:54] = 2, 330.0  # no cortex at all
    hu[2:10, 20:30, 44:54] += np.linspace(0, 100, 10)
    labels[5:7, 30:33, 10:13], hu[5:7, 30:33, 10:13] = 2, 420.0  # 0.06 ml: too small to judge
    out = drop_bone_without_cortex(labels.copy(), hu, bone=2, spacing=(1.5, 1.5, 1.5))
    assert (out[2:10, 4:14, 4:14] == 2).all() and (out[5:7, 30:33, 10:13] == 2).all()
    assert (out[2:10, 4:14, 24:34] == 1).all() and (out[2:10, 20:30, 44:54] == 1).all()


def test_a_kidney_with_contrast_in_its_pelvis_is_not_bone_but_a_vertebra_with_soft_marrow_stays_bone():
    labels = np.ones((12, 40, 60), dtype=np.uint8)
    hu = np.full(labels.shape, 40.0, dtype=np.float32)
    labels[2:10, 4:16, 4:16], hu[2:10, 4:16, 4:16] = 2, 300.0  # a vertebra: a 260-340 HU cortex (5 mm scan) ...
    hu[2:10, 4:16, 4:16] += np.linspace(-40, 40, 12)[:, None]
    hu[3:9, 6:14, 6:14] = 120.0  # ... around marrow softer than the kidney below
    labels[2:10, 4:18, 30:44], hu[2:10, 4:18, 30:44] = 2, 210.0  # enhanced renal parenchyma ...
    hu[4:8, 8:14, 34:40] = 1200.0  # ... around excreted contrast: bone_like passes it (p95 >= 800)
    labels[2:10, 20:34, 30:44] = 3  # an organ beside the kidney, touching it on one side
    out = drop_bone_with_soft_surface(labels.copy(), hu, bone=2, spacing=(1.5, 1.5, 1.5))
    assert (out[2:10, 4:16, 4:16] == 2).all()
    assert (out[2:10, 4:18, 30:44] == 1).all()  # body surrounds it most
    assert (out[labels != 2] == labels[labels != 2]).all()


def test_airway_the_network_painted_on_soft_tissue_becomes_body_and_its_air_stays_airway():
    labels = np.full((1, 1, 4), 5, dtype=np.uint8)
    hu = np.array([[[-1000.0, -450.0, -350.0, 60.0]]], dtype=np.float32)
    assert airway_is_air(labels, hu, airway=5, host=1).ravel().tolist() == [5, 5, 1, 1]


def test_airway_that_touches_no_pure_air_is_the_lung_around_it_and_the_lumen_with_its_wall_stays_airway():
    labels = np.ones((6, 20, 20), dtype=np.uint8)  # body
    hu = np.full(labels.shape, 40.0, dtype=np.float32)
    labels[:, 2:18, 1:12], hu[:, 2:18, 1:12] = 3, -850.0  # left lung
    labels[:, 8:12, 12:18], hu[:, 8:12, 12:18] = 5, -600.0  # the trachea's wall, painted airway
    hu[:, 9:11, 14:16] = -1000.0  # its lumen
    labels[:, 9:11, 4:12] = 5  # lung beside the trachea painted airway (-850 HU, no lumen)
    out = airway_beside_lumen(labels.copy(), hu, airway=5)
    assert (out[:, 8:12, 13:17] == 5).all()  # the lumen and the wall that touches it
    assert (out[:, 9:11, 4:12] == 3).all()  # the painted lung is lung again
    assert (out[:, 8:12, 12] == 3).all() and (out[:, 8:12, 17] == 1).all()  # wall a voxel off the lumen: surroundings
    assert (out[labels != 5] == labels[labels != 5]).all()


def test_an_airway_island_below_the_lung_bases_or_without_pure_air_goes_back_to_its_surroundings():
    labels = np.ones((30, 20, 20), dtype=np.uint8)  # body; z grows superior
    hu = np.full(labels.shape, 40.0, dtype=np.float32)
    labels[12:28, 4:16, 2:8] = 3  # left lung from slice 12 up
    labels[12:28, 4:16, 12:18] = 4
    hu[np.isin(labels, (3, 4))] = -850.0
    labels[2:6, 8:11, 8:11], hu[2:6, 8:11, 8:11] = 5, -1000.0  # gas in the abdomen, below slice 12
    labels[18:30, 9:11, 9:11], hu[18:30, 9:11, 9:11] = 5, -1000.0  # the trachea, between the lungs
    labels[14:17, 6:9, 3:6] = 5  # lung tissue by the hilum (-850 HU): no lumen
    out = drop_implausible_airway(labels.copy(), hu, airway=5, lungs=(3, 4))
    assert (out[2:6, 8:11, 8:11] == 1).all() and (out[14:17, 6:9, 3:6] == 3).all()
    assert (out[18:30, 9:11, 9:11] == 5).all()
    no_lungs = np.where(np.isin(labels, (3, 4)), 1, labels).astype(np.uint8)
    out = drop_implausible_airway(no_lungs.copy(), hu, 5, (3, 4))  # judged by its air alone
    assert (out[2:6, 8:11, 8:11] == 5).all() and (out[14:17, 6:9, 3:6] == 1).all()


def test_air_the_network_left_background_inside_the_trachea_becomes_airway_but_outside_air_does_not():
    labels = np.zeros((6, 30, 30), dtype=np.uint8)
    labels[:, 5:25, 5:25] = 1  # the patient
    labels[:, 12:19, 12:19] = 5  # the trachea's wall...
    labels[:, 14:17, 14:17] = 0  # ...and its lumen, called outside air
    enclosed = np.zeros(labels.shape, dtype=np.float32)
    enclosed[:, 14:17, 14:17] = 1.0
    labels[:, 10, 10], enclosed[:, 10, 10] = 0, 1.0  # gas beside the trachea, nearer the body: not lumen
    out = fill_airway_lumen(labels.copy(), enclosed, airway=5)
    assert (out[:, 14:17, 14:17] == 5).all() and (out[:, 10, 10] == 0).all()
    assert np.array_equal(out[labels != 0], labels[labels != 0])


def test_aerated_air_the_network_left_beside_a_lung_joins_the_nearer_lung_but_bowel_gas_and_airway_do_not():
    labels = np.ones((4, 40, 60), dtype=np.uint8)  # body, 2 mm voxels
    hu = np.full(labels.shape, 40.0, dtype=np.float32)
    labels[:, 5:25, 5:25], labels[:, 5:25, 35:55] = 4, 3  # right and left lung
    hu[:, 5:25, 5:55] = -800.0  # aerated from one lung to the other
    labels[:, 5:25, 25:35] = 1  # the network called the air between them body...
    labels[:, 10:15, 10:15] = 0  # ...and a hole by the hilum outside air
    labels[:, 5:8, 28:32] = 5  # a bronchus stays airway
    hu[:, 30:36, 20:40], labels[:, 30:36, 20:40] = -900.0, 1  # bowel gas below soft tissue: not touching
    hu[:, 26:28, 5:55] = 20.0  # the diaphragm
    enclosed = (hu < -400).astype(np.float32)
    enclosed[:, 12, 12] = 0.0  # air the slice does not enclose stays what it was
    out = grow_lungs_into_air(labels.copy(), hu, enclosed, (3, 4), (0, 1), spacing=(2.0, 2.0, 2.0))
    assert (out[:, 5:25, 25:30] != 3).all() and (out[:, 8:25, 25:30] == 4).all()  # split by distance
    assert (out[:, 8:25, 30:35] == 3).all()
    assert (out[:, 5:8, 28:32] == 5).all() and (out[:, 30:36, 20:40] == 1).all()
    assert (out[:, 10:15, 10:15][enclosed[:, 10:15, 10:15] > 0] == 4).all() and (out[:, 12, 12] == 0).all()
    far = grow_lungs_into_air(labels.copy(), hu, enclosed, (3, 4), (0, 1), spacing=(2.0, 2.0, 2.0), max_mm=4.0)
    assert (far[:, 15, 27:33] == 1).all()  # at most 4 mm (two voxels) from each lung


def test_bone_loses_one_layer_of_soft_tissue_at_its_surface_but_keeps_dense_surface_and_marrow():
    labels = np.ones((9, 20, 20), dtype=np.uint8)
    hu = np.full(labels.shape, 60.0, dtype=np.float32)
    labels[1:8, 3:17, 3:17] = 2  # bone painted a voxel too thick around cortex 4:16
    hu[2:7, 4:16, 4:16] = 700.0
    hu[3:6, 6:14, 6:14] = 150.0  # marrow, as soft as the false shell but inside
    out = trim_bone_surface(labels.copy(), hu, bone=2, host=1)
    assert (out[2:7, 4:16, 4:16] == 2).all()
    assert ((out == 2) == (hu >= 150)).all() and (out[labels != 2] == 1).all()
    twice = trim_bone_surface(out.copy(), hu, bone=2, host=1)
    assert np.array_equal(twice, out)  # dense cortex now forms the surface: nothing more goes


def test_lungs_take_their_partial_volume_edge_up_to_two_mm_but_not_fat_muscle_or_the_other_lung():
    labels = np.ones((12, 30, 30), dtype=np.uint8)
    hu = np.full(labels.shape, 40.0, dtype=np.float32)  # chest wall: muscle
    labels[2:10, 4:26, 4:14] = 3
    labels[2:10, 4:26, 16:26] = 4
    hu[labels > 1] = -850.0
    hu[1, 4:26, 4:26] = -300.0  # the pleural shell below the lungs: air and tissue in one voxel
    hu[2:10, 4:26, 14:16] = -400.0  # between the lungs: each takes the layer beside it
    hu[2:10, 3, 4:26] = -80.0  # fat beside the lungs: not lung
    hu[0, 4:26, 4:26] = -300.0  # a second shell layer, beyond the 2 mm at 1.5 mm voxels
    out = lung_edge(labels.copy(), hu, (3, 4), host=1, spacing=(1.5, 1.5, 1.5))
    assert (out[1, 4:26, 4:14] == 3).all() and (out[1, 4:26, 16:26] == 4).all()
    assert (out[2:10, 4:26, 14] == 3).all() and (out[2:10, 4:26, 15] == 4).all()
    assert (out[2:10, 3, 4:26] == 1).all() and (out[0] == 1).all()
    assert (out[hu == 40.0] == 1).all()
    two_layers = lung_edge(labels.copy(), hu, (3, 4), host=1, spacing=(1.0, 1.0, 1.0))  # 2 mm: two voxels
    assert (two_layers[0, 4:26, 4:14] == 3).all()


def test_bone_takes_its_partial_volume_edge_and_the_marrow_it_then_encloses_but_not_soft_tissue():
    labels = np.ones((6, 30, 30), dtype=np.uint8)
    hu = np.full(labels.shape, 60.0, dtype=np.float32)
    ring = np.zeros((30, 30), dtype=bool)
    ring[8:22, 8:22] = True
    ring[10:20, 10:20] = False
    ring[10:20, 10] = False  # a gap in the network's cortex, dense at the edge: partial volume
    hu[:, ring] = 700.0
    hu[:, 10:20, 10] = 200.0
    hu[:, 11:19, 11:19] = 120.0  # marrow
    labels[:, ring] = 2
    hu[:, 5, 5] = 120.0  # dense soft tissue far from bone stays body
    hu[:, 7, 8:22] = 100.0  # under the edge threshold beside the cortex: body
    out = bone_edge(labels.copy(), hu, bone=2, host=1, spacing=(1.5, 1.5, 1.5))
    assert (out[:, 10:20, 10] == 2).all() and (out[:, 11:19, 11:19] == 2).all()
    assert (out[:, 7, 8:22] == 1).all() and (out[:, 5, 5] == 1).all()


def test_foreground_detached_from_the_patient_becomes_background_whatever_its_label():
    labels = np.zeros((10, 40, 40), dtype=np.uint8)
    labels[:, 5:30, 5:30] = 1  # the patient
    labels[2:8, 10:20, 8:14] = 3  # a lung inside it
    labels[:, 30:33, 30:33] = 2  # bone touching the patient only at an edge (26-connected) stays
    labels[3:6, 34:38, 34:38] = 1  # "body" in the air outside (a blanket)
    labels[8, 36, 2] = 2  # a speck of "bone" there too
    kept = (labels > 0).copy()
    kept[3:6, 34:38, 34:38] = False
    kept[8, 36, 2] = False
    out = keep_patient(labels.copy())
    assert np.array_equal(out > 0, kept)
    assert np.array_equal(out[kept], labels[kept])  # what stays keeps its label
    assert (keep_patient(np.zeros((3, 3, 3), dtype=np.uint8)) == 0).all()


def test_a_bone_island_ringed_by_background_is_the_table_but_a_truncated_arm_stays_bone():
    labels = np.zeros((6, 40, 40), dtype=np.uint8)
    labels[:, 5:30, 5:35] = 1  # the patient, cut by the field of view at x = 35
    labels[:, 32:34, 5:35] = 2  # the table below the patient: background around it
    labels[:, 10:20, 30:35] = 2  # an arm's bone at the edge of the field of view
    labels[:, 10:20, 35:40] = 0
    out = drop_bone_outside_patient(labels.copy(), bone=2)
    assert (out[:, 32:34, 5:35] == 0).all() and (out[:, 10:20, 30:35] == 2).all()


def test_the_airway_follows_its_lumen_of_pure_air_into_the_lung_but_not_into_emphysema_or_beyond_30_mm():
    labels = np.full((30, 20, 40), 3, dtype=np.uint8)  # lung, 3 mm voxels
    hu = np.full(labels.shape, -850.0, dtype=np.float32)
    labels[:3, 5:7, 5:7] = 5  # the network's airway stops at z = 3...
    hu[:25, 5:7, 5:7] = -1000.0  # ...its lumen goes on to z = 25
    hu[:, 5:7, 9:10] = -990.0  # a wall of -850 HU tissue keeps the parallel column apart
    out = extend_airway_through_air(labels.copy(), hu, airway=5, hosts=(1, 3, 4), spacing=(3.0, 3.0, 3.0))
    assert (out[:13, 5:7, 5:7] == 5).all() and (out[14:, 5:7, 5:7] == 3).all()  # 30 mm: 10 voxels of growth
    assert (out[:, 5:7, 9:10] == 3).all() and (out[hu > -950] == labels[hu > -950]).all()
    emphysema = hu.copy()
    emphysema[6:30, :, 7:40] = -1000.0  # pure-air lung beside the bronchus from z = 6 on
    leak = extend_airway_through_air(labels.copy(), emphysema, airway=5, hosts=(1, 3, 4), spacing=(3.0, 3.0, 3.0))
    assert (leak[:6, 5:7, 5:7] == 5).all()  # the bronchus above the emphysema is airway...
    assert (leak[6:, :, 9:] == 3).all()  # ...which does not spread into it


def test_bone_takes_the_marrow_its_cortex_encloses_but_not_a_skull_interior_a_sinus_or_another_organ():
    labels = np.ones((4, 60, 60), dtype=np.uint8)  # body, 1 x 2 x 2 mm voxels
    hu = np.full(labels.shape, 150.0, dtype=np.float32)
    labels[:, 5:15, 5:15] = 2  # a vertebral body's cortex around 6x6 voxels of marrow
    labels[:, 7:13, 7:13] = 1
    labels[1, 9, 9] = 3  # a voxel of another structure inside the ring is left alone
    labels[:, 5:15, 30:40] = 2  # a paranasal sinus: a ring of bone around air
    labels[:, 7:13, 32:38], hu[:, 7:13, 32:38] = 1, -900.0
    labels[:, 20:58, 0:38] = 2  # a skull around 36x36 voxels
    labels[:, 21:57, 1:37] = 1
    out = fill_bone_marrow(labels.copy(), hu, bone=2, host=1, spacing=(1.0, 2.0, 2.0))  # 4 mm2 a voxel
    assert (out[:, 7:13, 7:13] == 2).sum() == 4 * 36 - 1 and out[1, 9, 9] == 3
    assert (out[:, 7:13, 32:38] == 1).all()  # air is never marrow
    assert (out[:, 21:57, 1:37] == 1).all()  # 36*36*4 mm2 = 5184 mm2: the inside of a skull stays open
    assert (out[:, 16:19, :] == 1).all() and (out[:, :, 45:] == 1).all()  # nothing outside a ring changes


def test_bundle_modes_declare_which_labels_are_one_connected_structure(bundle_copy):
    modes = load_bundle(bundle_copy).manifest.modes
    full = set(modes["full"].keep_largest_component)
    assert {"lung_left", "lung_right", "airway"} <= full and not full & {"body", "bone"}
    assert {"lung_left", "lung_right"} <= set(modes["preview"].keep_largest_component)


def test_tissue_box_keeps_a_margin_around_the_patient_and_drops_the_air():
    box = tissue_box(_patient_in_air(), margin=4, min_shape=(8, 8, 8))
    assert [(s.start, s.stop) for s in box] == [(1, 34), (36, 74), (16, 114)]


def test_tissue_box_is_never_smaller_than_a_patch_and_stays_inside_the_image():
    box = tissue_box(_patient_in_air(), margin=4, min_shape=(64, 64, 64))
    assert [(s.start, s.stop) for s in box] == [(0, 40), (23, 87), (16, 114)]
    edge = tissue_box(_patient_in_air(box=((5, 30), (100, 120), (0, 10))), margin=2, min_shape=(8, 32, 32))
    assert [(s.start, s.stop) for s in edge] == [(3, 32), (88, 120), (0, 32)]


def test_tissue_box_of_pure_air_is_the_whole_image():
    hu = np.full((10, 20, 30), -1000.0, dtype=np.float32)
    assert tissue_box(hu, margin=4, min_shape=(8, 8, 8)) == (slice(0, 10), slice(0, 20), slice(0, 30))


class _ThresholdNet:
    """A voxel-wise stand-in for the network: body where the input is denser than air; counts its calls."""

    name = "threshold"

    def __init__(self) -> None:
        self.patches = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.patches += x.shape[0]
        logits = np.zeros((x.shape[0], 9, *x.shape[2:]), dtype=np.float32)
        logits[:, 1] = (x[:, 0] > -0.5) * 10.0
        return logits


def test_segment_runs_the_network_only_around_the_patient_and_labels_the_rest_background(bundle_copy):
    bundle = load_bundle(bundle_copy)
    patch = bundle.mode("full").patch
    hu = _patient_in_air(shape=(70, 300, 300), box=((10, 60), (100, 200), (90, 210)))
    hu[0, 0, 0] = -1000.0
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    net = _ThresholdNet()
    res = segment_array(hu, affine, bundle, "full", net, keep_probabilities=True)
    np.testing.assert_array_equal(res.labels_on(grid_of(hu, affine)), (hu > -500).astype(np.uint8))
    assert res.probabilities[0, 0, 0, 0] == 1.0 and res.probabilities.shape[1:] == hu.shape
    whole_grid = np.prod([len(window_starts(n, p, 0.25)) for n, p in zip(hu.shape, patch, strict=True)])
    assert net.patches < whole_grid


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    if not (BUNDLE / "manifest.json").exists():
        pytest.fail(f"the committed model bundle is missing at {BUNDLE}: `make model` rebuilds it")
    dst = tmp_path_factory.mktemp("bundle") / "ct_chest"
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("engines"))
    return dst


def test_committed_bundle_verifies_and_carries_the_label_table(bundle_copy):
    b = load_bundle(bundle_copy)
    assert {"preview", "full"} <= set(b.manifest.modes)
    assert b.label_names() == {1: "body", 2: "bone", 3: "lung_left", 4: "lung_right", 5: "airway",
                               6: "heart", 7: "aorta", 8: "liver"}  # fmt: skip
    students = [m for m in b.manifest.modes.values() if m.student.startswith("pruned student")]
    assert students and all((bundle_copy / m.int8).stat().st_size < 2_000_000 for m in students)
    assert all(lab.category.scheme == "SCT" for lab in b.manifest.labels)


def test_corrupt_or_incomplete_bundle_is_refused_naming_the_file(bundle_copy, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_copy, bad)
    int8 = load_bundle(bad).manifest.modes["preview"].int8
    with (bad / int8).open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match=rf"{int8}.*corrupt"):
        load_bundle(bad)
    (bad / int8).unlink()
    with pytest.raises(BundleError, match=rf"{int8} is missing"):
        load_bundle(bad)
    raw = json.loads((bad / "manifest.json").read_text())
    del raw["normalisation"]
    (bad / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="normalisation"):
        load_bundle(bad)


def test_backend_probe_falls_back_to_ort_cpu_and_says_why_gpu_paths_were_skipped(bundle_copy):
    b = load_bundle(bundle_copy)
    choice = choose_backend(b, b.mode("preview"), preference="auto", threads=1, precision="fp32")
    if choice.precision is not None:  # no GPU here: the CPU, in the precision asked for
        assert set(choice.skipped) == {"tensorrt", "ort-gpu"}
        assert all(choice.skipped.values())
        assert choice.backend.name in ("ort-cpu-fp32", "openvino-fp32")
        assert choice.precision.precision == "fp32"


def test_ort_gpu_backend_runs_where_onnxruntime_gpu_and_a_gpu_exist(bundle_copy):
    reason = _ort_gpu_reason()
    if reason:
        pytest.skip(f"ORT GPU path: {reason}")
    b = load_bundle(bundle_copy)
    choice = choose_backend(b, b.mode("preview"), preference="ort-gpu")
    x = np.zeros((1, len(b.manifest.normalisation.channels), *b.mode("preview").patch), dtype=np.float32)
    assert choice.backend.run(x).shape[1] == 9


def test_tensorrt_backend_builds_and_caches_an_engine_where_tensorrt_and_a_gpu_exist(bundle_copy):
    reason = _tensorrt_reason()
    if reason:
        pytest.skip(f"TensorRT path: {reason}")
    b = load_bundle(bundle_copy)
    choice = choose_backend(b, b.mode("preview"), preference="tensorrt")
    assert choice.backend.name == "tensorrt"
    assert list((bundle_copy / "engines").glob("*.engine"))


def test_isonode_segment_writes_labels_on_the_original_ct_grid(bundle_copy, tmp_path):
    import nibabel as nib

    from compiler.phantom import make_phantom, write_ct_series

    ph = make_phantom((40, 96, 96), (5.0, 3.5, 3.5), seed=5)
    series = tmp_path / "series"
    write_ct_series(ph.hu, series, spacing=ph.spacing, origin=ph.origin)
    out = tmp_path / "seg.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "segment", str(series), "--mode", "preview",
                           "--out", str(out), "--bundle", str(bundle_copy), "--threads", "1", "--backend", "ort-cpu",
                           "--precision", "fp32"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "network_s" in proc.stdout and "total" in proc.stdout
    assert "\nbackend ort-cpu-fp32" in "\n" + proc.stdout and "precision ort-cpu fp32 (requested" in proc.stdout
    img = nib.load(str(out))
    assert img.shape == (96, 96, 40)  # x, y, z of the CT
    ras0 = img.affine @ [0, 0, 0, 1]
    assert np.allclose(ras0[:3], [-ph.origin[0], -ph.origin[1], ph.origin[2]], atol=1e-3)
    data = np.asanyarray(img.dataobj)
    assert set(np.unique(data)) <= set(range(9)) and (data > 0).mean() > 0.1
    names = json.loads((tmp_path / "seg.labels.json").read_text())
    assert names["1"] == "body" and names["3"] == "lung_left"


def test_segment_refuses_a_corrupt_bundle_with_a_clear_message(bundle_copy, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_copy, bad)
    (bad / "preview.fp32.onnx").write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "segment", str(tmp_path), "--out",
                           str(tmp_path / "x.nii.gz"), "--bundle", str(bad)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert "preview.fp32.onnx is corrupt" in proc.stderr
