"""The label map on the CT's own grid: partial-volume edges drawn at its resolution, outward only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.bundle import BundleError, load_bundle
from appliance.inference.grid import grid_of, resample
from appliance.inference.source_grid import TISSUE_HU, EdgeRule, banded, labels_on_source

BUNDLE = Path(__file__).resolve().parent.parent / "models" / "ct_chest"
BONE_RULE = EdgeRule(2, 1, *TISSUE_HU["bone"])
LUNG_RULE = EdgeRule(3, 1, *TISSUE_HU["lung"])


def _coarse_and_fine():
    """A 3 mm model grid with a bone slab and a lung slab, and the 1 mm CT grid under it whose HU puts each
    true edge a millimetre beyond the coarse label."""
    coarse = np.ones((4, 8, 8), dtype=np.uint8)
    coarse[:, :, 1:3] = 2  # bone: x 3-9 mm
    coarse[:, :, 5:7] = 3  # lung: x 15-21 mm
    affine_coarse = np.diag([3.0, 3.0, 3.0, 1.0])
    affine_coarse[:3, 3] = 1.0  # voxel centres at 1, 4, 7 ... mm: the fine voxels 0-2 lie in coarse voxel 0
    fine = grid_of(np.zeros((12, 24, 24), dtype=np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    hu = np.full(fine.shape, 40.0, dtype=np.float32)
    hu[:, :, 3:9] = 700.0
    hu[:, :, 9] = 300.0  # bone's partial-volume edge, inside the coarse band (x 9-11 mm)
    hu[:, :, 10] = 100.0  # soft tissue in the same coarse voxel
    hu[:, :, 15:21] = -850.0
    hu[:, :, 14] = -300.0  # the lung's pleural shell, inside the coarse band (x 12-14 mm)
    hu[:, :, 12:14] = -60.0  # fat
    return coarse, affine_coarse, fine, hu


def test_the_ct_grid_takes_each_edge_voxel_of_the_tissue_beside_the_coarse_label_and_nothing_else():
    coarse, affine, fine, hu = _coarse_and_fine()
    plain = resample(coarse, affine, fine, order=0, fill=0)
    out = labels_on_source(coarse, affine, fine, hu, (BONE_RULE, LUNG_RULE))
    assert (out[:, :, 9] == 2).all() and (out[:, :, 10] == 1).all()
    assert (out[:, :, 14] == 3).all() and (out[:, :, 12:14] == 1).all()
    changed = out != plain
    assert np.array_equal(np.flatnonzero(changed.any(axis=(0, 1))), [9, 14])  # outward only, those columns


def test_without_hu_or_rules_or_a_finer_grid_the_labels_are_resampled_as_they_are():
    coarse, affine, fine, hu = _coarse_and_fine()
    plain = resample(coarse, affine, fine, order=0, fill=0)
    assert np.array_equal(labels_on_source(coarse, affine, fine, None, (BONE_RULE,)), plain)
    assert np.array_equal(labels_on_source(coarse, affine, fine, hu, ()), plain)
    same = grid_of(coarse, affine)  # the model grid itself: the post-processing drew its edges there
    hu_same = resample(hu, fine.affine, same, order=1)
    assert np.array_equal(labels_on_source(coarse, affine, same, hu_same, (BONE_RULE,)), coarse)


def test_the_band_rides_in_the_label_byte_and_refuses_what_does_not_fit():
    coarse, _, _, _ = _coarse_and_fine()
    marked = banded(coarse, (BONE_RULE, LUNG_RULE))
    assert np.array_equal(marked & 31, coarse)
    assert set(np.unique(marked >> 5)) == {0, 1, 2}
    with pytest.raises(ValueError, match="below 32"):
        banded(np.full((2, 2, 2), 40, dtype=np.uint8), (BONE_RULE,))


def test_the_shipped_bundle_redraws_bone_and_lung_edges_and_a_bad_rule_is_refused_by_name(tmp_path):
    spec = load_bundle(BUNDLE).mode("preview")
    assert {(e.tissue, e.label) for e in spec.source_edges} == {("bone", "bone"), ("lung", "lung_left"),
                                                                ("lung", "lung_right")}
    bad = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["modes"]["full"]["source_edges"][0]["label"] = "kidney"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="mode full source_edges 0: label 'kidney'"):
        load_bundle(bad, verify=False)


def test_a_bundle_whose_label_values_do_not_fit_beside_the_band_is_refused_at_load(tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["labels"][-1]["value"] = 40
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="source_edges: label 'liver' has a value of 32 or more"):
        load_bundle(bad, verify=False)
