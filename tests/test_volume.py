"""dicom_node.volume: geometry from IPP/IOP only, tilt/uneven resampling, and clear refusals."""

from __future__ import annotations

import random
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from compiler.phantom import make_phantom, slice_geometry, write_ct_series
from dicom_node.volume import Volume, VolumeError, assemble_volume, series_files_to_volume

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared CT data not present")
SPACING = (2.0, 1.5, 1.25)  # (sz, sy, sx)


def _files(case: str) -> list[Path]:
    return sorted(p for p in (DATA / case / "ct_dicom").iterdir() if p.is_file())


def _world(vol: Volume, k, j, i) -> np.ndarray:
    idx = np.stack([np.asarray(i, float), np.asarray(j, float), np.asarray(k, float), np.ones(np.shape(i))])
    return (vol.affine @ idx)[:3]


def _linear_field(points: np.ndarray) -> np.ndarray:
    """A smooth HU field of patient position: linear interpolation reproduces it exactly."""
    return 100.0 + 0.8 * points[..., 0] - 0.6 * points[..., 1] + 2.5 * points[..., 2]


def _field_series(tmp_path: Path, n: int = 12, rows: int = 40, cols: int = 48, **geom) -> list[Path]:
    """A series whose pixels are _linear_field at each pixel's true patient position."""
    g = slice_geometry(n, SPACING, origin=(-30.0, -20.0, 10.0), **geom)
    r, c = np.array(g.orientation[:3]), np.array(g.orientation[3:])
    jj, ii = np.mgrid[0:rows, 0:cols]
    hu = np.empty((n, rows, cols), np.int16)
    for k in range(n):
        pts = g.positions[k] + ii[..., None] * SPACING[2] * r + jj[..., None] * SPACING[1] * c
        hu[k] = np.rint(_linear_field(pts))
    return write_ct_series(hu, tmp_path, spacing=SPACING, origin=(-30.0, -20.0, 10.0), **geom)


def _assert_matches_field(vol: Volume, min_fraction: float = 0.6) -> None:
    k, j, i = np.indices(vol.array.shape)
    expected = _linear_field(_world(vol, k.ravel(), j.ravel(), i.ravel()).T).reshape(vol.array.shape)
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = True
    covered = ndimage.binary_erosion(vol.array > -900, structure=in_plane, iterations=2)
    assert covered.mean() > min_fraction
    err = np.abs(vol.array.astype(np.float64) - expected)[covered]
    assert err.max() <= 1.01, f"max error {err.max():.2f} HU"


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((16, 48, 40), (2.0, 1.5, 1.25), seed=1, noise_sigma=10)


@pytest.fixture
def phantom_files(tmp_path, phantom) -> list[Path]:
    return write_ct_series(phantom.hu, tmp_path / "ph", spacing=phantom.spacing, origin=phantom.origin)


# ---------------------------------------------------------------- real series


@needs_data
def test_lidc_sorted_by_ipp_not_instance_number_or_slice_location():
    files = _files("lidc_idri_0314_chest_1mm")
    vol = assemble_volume(reversed(files))  # order of input must not matter
    assert vol.array.shape == (275, 512, 512)
    assert vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, (0.78125, 0.78125, 1.0), atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 3], (-201.0, -59.0, -679.8), atol=1e-6)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)  # 0001.dcm: lowest z, InstanceNumber 275
    assert int(first.InstanceNumber) == 275
    assert vol.source_instances[0].sop_instance_uid == first.SOPInstanceUID
    assert vol.array.min() == -1000 and vol.array.max() == 1979
    assert vol.resampled_from is None


@needs_data
def test_crlm_keeps_padding_and_5mm_spacing():
    vol = series_files_to_volume(_files("crlm_ct_1006_ge_abdomen"))
    assert vol.array.shape == (51, 512, 512)
    assert vol.array.min() == -3024 and vol.array.max() == 1184
    assert vol.spacing[2] == pytest.approx(5.0)
    assert vol.affine[2, 3] == pytest.approx(-376.44)


@needs_data
def test_ge_gantry_tilt_is_resampled_along_the_slice_normal_and_lands_where_the_source_says():
    files = _files("dcmqa_ge_head_gantry_tilt")
    vol = assemble_volume(files)
    assert vol.resampled_from is not None and "tilt ~18.50 deg" in vol.resampled_from
    assert "uneven" in vol.resampled_from
    normal = np.cross([1, 0, 0], [0, 0.948324, -0.317305])
    third = vol.affine[:3, 2] / np.linalg.norm(vol.affine[:3, 2])
    np.testing.assert_allclose(third, normal / np.linalg.norm(normal), atol=1e-4)
    assert vol.spacing[2] == pytest.approx(1.08, abs=0.02)  # smallest gap of the stack
    # landmark: source pixels of the last (and an inner) slice, mapped through the affine
    inv = np.linalg.inv(vol.affine)
    arr = vol.array.astype(np.float32)
    for name in ("01.dcm", "10.dcm"):
        ds = pydicom.dcmread(DATA / "dcmqa_ge_head_gantry_tilt" / "ct_dicom" / name)
        src = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        r = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        c = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        dx = float(ds.PixelSpacing[1])
        jj, ii = np.mgrid[100:400:7, 100:400:7]
        pts = ipp + ii[..., None] * dx * r + jj[..., None] * dx * c
        vox = inv @ np.concatenate([pts.reshape(-1, 3).T, np.ones((1, pts[..., 0].size))])
        got = ndimage.map_coordinates(arr, vox[[2, 1, 0]], order=1)
        want = src[jj, ii].ravel()
        assert np.median(np.abs(got - want)) < 20.0
        # the same check with tilt ignored (source slice laid on the grid unshifted) must fail badly
        naive = arr[int(round(vox[2].mean()))][jj, ii].ravel()
        assert np.median(np.abs(naive - want)) > 3 * np.median(np.abs(got - want))


@needs_data
def test_j2k_series_with_empty_sop_uids_falls_back_to_file_meta():
    files = sorted((DATA / "ts_example_dicom_j2k" / "dicom").iterdir())
    vol = assemble_volume(files)
    assert vol.array.shape == (20, 512, 512)
    assert vol.spacing[2] == pytest.approx(2.0)
    metas = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in files}
    assert {s.sop_instance_uid for s in vol.source_instances} == metas
    assert all(s.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" for s in vol.source_instances)
    assert any("file meta" in w for w in vol.warnings)


@needs_data
def test_enhanced_ct_with_two_frames():
    vol = assemble_volume([DATA / "dicom_ts_samples" / "pydicom_data" / "eCT_Supplemental.dcm"])
    assert vol.array.shape == (2, 512, 512)
    assert vol.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    # IOP [-1,0,0, 0,1,0]: normal -z, so the frame at z=-149 comes first
    assert [s.frame_number for s in vol.source_instances] == [2, 1]
    np.testing.assert_allclose(vol.affine[:3, 3], (99.5, -301.5, -149.0))
    np.testing.assert_allclose(vol.affine[:3, 2], (0, 0, -10.0))


# ---------------------------------------------------------------- phantom series


def test_affine_maps_voxel_to_ipp_plus_row_and_column_steps(tmp_path):
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: rows along +y, columns along -z
    files = _field_series(tmp_path, orientation=iop)
    random.Random(0).shuffle(files)
    vol = assemble_volume(files)
    assert vol.resampled_from is None
    r, c = np.array(iop[:3]), np.array(iop[3:])
    by_pos = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_pos[ds.SOPInstanceUID] = np.array([float(v) for v in ds.ImagePositionPatient])
    for k in (0, 5, 11):
        ipp = by_pos[vol.source_instances[k].sop_instance_uid]
        for j, i in ((0, 0), (3, 7), (39, 47)):
            want = ipp + i * SPACING[2] * r + j * SPACING[1] * c
            np.testing.assert_allclose(_world(vol, k, j, i), want, atol=1e-6)
    _assert_matches_field(vol, min_fraction=0.8)


def test_shuffled_file_order_gives_the_same_volume(phantom, phantom_files):
    ref = assemble_volume(phantom_files)
    shuffled = list(phantom_files)
    random.Random(3).shuffle(shuffled)
    vol = assemble_volume(shuffled)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_array_equal(vol.array, phantom.hu)
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert vol.spacing == pytest.approx((1.25, 1.5, 2.0))


def test_datasets_in_memory_equal_paths(phantom_files):
    from_paths = assemble_volume(phantom_files)
    from_ds = assemble_volume([pydicom.dcmread(f) for f in reversed(phantom_files)])
    np.testing.assert_array_equal(from_ds.array, from_paths.array)
    assert from_ds.source_instances == from_paths.source_instances


def test_gantry_tilt_phantom_is_resampled_exactly(tmp_path):
    vol = assemble_volume(_field_series(tmp_path, tilt_deg=15.0))
    assert vol.resampled_from and "tilt ~15.00 deg" in vol.resampled_from
    t = np.radians(15.0)
    np.testing.assert_allclose(vol.affine[:3, 2] / vol.spacing[2], (0, np.sin(t), np.cos(t)), atol=1e-6)
    assert vol.spacing[2] == pytest.approx(SPACING[0], rel=1e-6)
    _assert_matches_field(vol)


def test_uneven_spacing_with_touching_slices_is_resampled_exactly(tmp_path):
    # 2 mm slices, then 3.5 mm gaps; SliceThickness 2 everywhere would leave holes, so write 4 mm thick
    pos = [0, 2, 4, 6, 8, 10, 13.5, 17, 20.5, 24, 27.5, 31]
    files = _field_series(tmp_path, slice_positions=pos)
    for f in files:  # thick enough to cover every gap: a legitimately uneven series
        ds = pydicom.dcmread(f)
        ds.SliceThickness = "4"
        ds.save_as(f)
    vol = assemble_volume(files)
    assert vol.resampled_from and "uneven" in vol.resampled_from
    # smallest gap (2 mm), shrunk to 31 / 16 so the grid ends exactly on the last slice
    assert vol.spacing[2] == pytest.approx(31 / 16)
    assert vol.array.shape[0] == 17
    _assert_matches_field(vol, min_fraction=0.8)


def test_missing_slice_is_an_error_naming_the_gap(phantom_files):
    files = [f for i, f in enumerate(phantom_files) if i != 7]
    with pytest.raises(VolumeError, match=r"missing slice.*gap of 4\.00 mm.*12\.00 and 16\.00 mm"):
        assemble_volume(files)


def test_duplicate_position_with_different_sop_is_an_error(tmp_path, phantom_files):
    ds = pydicom.dcmread(phantom_files[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dup.dcm")
    with pytest.raises(VolumeError, match="duplicate slice position"):
        assemble_volume([*phantom_files, tmp_path / "dup.dcm"])


def test_exact_duplicate_sop_instance_is_deduplicated(tmp_path, phantom, phantom_files):
    shutil.copy(phantom_files[3], tmp_path / "again.dcm")
    vol = assemble_volume([*phantom_files, tmp_path / "again.dcm"])
    np.testing.assert_array_equal(vol.array, phantom.hu)
    assert any("duplicate SOP instance" in w for w in vol.warnings)


def test_mixed_orientation_is_an_error(tmp_path, phantom_files):
    ds = pydicom.dcmread(phantom_files[5])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9998, 0.02]
    ds.save_as(tmp_path / "odd.dcm")
    files = [tmp_path / "odd.dcm" if i == 5 else f for i, f in enumerate(phantom_files)]
    with pytest.raises(VolumeError, match="mixed orientation"):
        assemble_volume(files)


def test_mixed_series_is_an_error(tmp_path, phantom, phantom_files):
    other = write_ct_series(phantom.hu[:2], tmp_path / "other", spacing=phantom.spacing, origin=(0, 0, 500))
    with pytest.raises(VolumeError, match="mixed series"):
        assemble_volume([*phantom_files, *other])


def test_mixed_pixel_spacing_is_an_error(tmp_path, phantom_files):
    ds = pydicom.dcmread(phantom_files[2])
    ds.PixelSpacing = [1.5, 1.3]
    ds.save_as(tmp_path / "odd.dcm")
    files = [tmp_path / "odd.dcm" if i == 2 else f for i, f in enumerate(phantom_files)]
    with pytest.raises(VolumeError, match="PixelSpacing"):
        assemble_volume(files)


def test_single_slice_uses_slice_thickness(phantom_files):
    vol = assemble_volume(phantom_files[4:5])
    assert vol.array.shape == (1, 48, 40)
    assert vol.spacing[2] == pytest.approx(2.0)


def test_enhanced_multiframe_equals_single_frame_series(tmp_path, phantom, phantom_files):
    enhanced = write_ct_series(
        phantom.hu, tmp_path / "mf", spacing=phantom.spacing, origin=phantom.origin, enhanced=True
    )
    assert len(enhanced) == 1
    mf = assemble_volume(enhanced)
    sf = assemble_volume(phantom_files)
    np.testing.assert_array_equal(mf.array, sf.array)
    np.testing.assert_allclose(mf.affine, sf.affine, atol=1e-9)
    assert [s.frame_number for s in mf.source_instances] == list(range(1, 17))


def test_assembly_peak_memory_stays_near_one_volume(tmp_path):
    hu = np.random.default_rng(0).integers(-1000, 2000, size=(48, 256, 256), dtype=np.int16)
    files = write_ct_series(hu, tmp_path, spacing=(1.0, 0.8, 0.8))
    tracemalloc.start()
    try:
        vol = assemble_volume(files)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(vol.array, hu)
    assert peak < 2.5 * vol.array.nbytes, (
        f"peak {peak / 1e6:.1f} MB for a {vol.array.nbytes / 1e6:.1f} MB volume"
    )


def test_a_grid_too_large_is_refused_before_it_is_allocated(tmp_path, phantom_files):
    # positions that drift 50 m sideways: the resampled grid would be ~16 x 48 x 40,000 voxels
    edited = []
    for i, f in enumerate(phantom_files):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 50_000.0 * i / (len(phantom_files) - 1), y, z]
        ds.save_as(tmp_path / f"drift{i:02d}.dcm")
        edited.append(tmp_path / f"drift{i:02d}.dcm")
    tracemalloc.start()
    with pytest.raises(VolumeError, match="resampled grid .* M voxels, more than processing.max_volume_voxels"):
        assemble_volume(edited, max_voxels=10_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 1024 * 1024
    with pytest.raises(VolumeError, match="the volume 16x48x40"):
        assemble_volume(phantom_files, max_voxels=1000)
