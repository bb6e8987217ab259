"""compiler.phantom: labelled anatomy with plausible HU, and CT series that validate and round-trip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from compiler.phantom import LABELS, make_phantom, write_ct_series
from dicom_node.volume import assemble_volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((96, 128, 128), (2.5, 2.5, 2.5), seed=0)


def test_label_values_follow_the_shared_contract():
    assert LABELS == {
        "background": 0, "body": 1, "bone": 2, "lung_left": 3, "lung_right": 4,
        "airway": 5, "heart": 6, "aorta": 7, "liver": 8,
    }  # fmt: skip


def test_every_structure_is_present_with_plausible_hu(phantom):
    hu, lab = phantom.hu, phantom.labels
    assert hu.dtype == np.int16 and lab.dtype == np.uint8 and hu.shape == lab.shape == (96, 128, 128)
    expected_mean = {1: (-60, 60), 3: (-900, -780), 4: (-900, -780), 5: (-1024, -960), 6: (20, 60),
                     7: (200, 300), 8: (40, 80)}  # fmt: skip
    for label, (lo, hi) in expected_mean.items():
        m = lab == label
        assert m.sum() > 200, f"label {label} too small"
        assert lo <= hu[m].mean() <= hi, f"label {label} mean {hu[m].mean():.0f}"
    bone = hu[lab == 2]
    assert np.percentile(bone, 90) > 600 and (np.abs(bone - 200) < 60).mean() > 0.1  # cortex and marrow


def test_left_lung_is_on_the_patient_left_and_liver_inferior(phantom):
    z, _, x = np.indices(phantom.labels.shape)
    lab = phantom.labels
    assert x[lab == 3].mean() > x[lab == 4].mean()  # LPS: +x is patient left = higher column index
    assert z[lab == 8].mean() < z[lab == 3].mean()  # slice 0 is inferior


def test_air_outside_and_table_is_not_body(phantom):
    hu, lab = phantom.hu, phantom.labels
    assert abs(hu[0, 0, :].mean() + 1000) < 10
    table = (lab == 0) & (hu > 0)
    assert table.sum() > 1000
    body_rows = np.nonzero((lab > 0).any(axis=(0, 2)))[0]
    table_rows = np.nonzero(table.any(axis=(0, 2)))[0]
    assert table_rows.min() > body_rows.max()  # the table lies posterior (higher row index), apart


def test_airway_is_a_tree_reaching_both_lungs(phantom):
    air = phantom.labels == 5
    assert air[-1].any()  # trachea leaves the top of the volume
    z, _, x = np.nonzero(air)
    low = z < np.percentile(z, 30)
    assert (x[low] < 50).any() and (x[low] > 78).any()  # bronchi to both sides


def test_seed_varies_sizes_and_same_seed_repeats():
    a, b = make_phantom((48, 64, 64), seed=1), make_phantom((48, 64, 64), seed=2)
    assert (a.labels == 8).sum() != (b.labels == 8).sum()
    again = make_phantom((48, 64, 64), seed=1)
    np.testing.assert_array_equal(a.hu, again.hu)
    np.testing.assert_array_equal(a.labels, again.labels)


def test_noise_sigma_is_configurable():
    flat = make_phantom((24, 64, 64), seed=0, noise_sigma=0)
    noisy = make_phantom((24, 64, 64), seed=0, noise_sigma=20)
    liver = flat.labels == 8
    assert flat.hu[liver].std() == 0
    assert 15 < noisy.hu[liver].std() < 25


def test_module_does_not_import_torch():
    code = "import sys, compiler.phantom; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("pixel_representation", [0, 1])
@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_round_trips_hu_exact(tmp_path, ts, pixel_representation):
    ph = make_phantom((6, 64, 48), (2.0, 1.0, 1.0), seed=2)
    files = write_ct_series(
        ph.hu, tmp_path, spacing=ph.spacing, origin=ph.origin, transfer_syntax=ts,
        pixel_representation=pixel_representation,
    )  # fmt: skip
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == ts
    assert int(ds.PixelRepresentation) == pixel_representation
    vol = assemble_volume(files)
    np.testing.assert_array_equal(vol.array, ph.hu)


def test_tilt_is_written_like_a_ge_scanner(tmp_path):
    hu = np.zeros((3, 16, 16), np.int16)
    files = write_ct_series(hu, tmp_path, spacing=(4.0, 0.5, 0.5), tilt_deg=18.5)
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    t = np.radians(18.5)
    np.testing.assert_allclose([float(v) for v in dss[0].ImageOrientationPatient],
                               [1, 0, 0, 0, np.cos(t), -np.sin(t)], atol=1e-6)  # fmt: skip
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
    np.testing.assert_allclose(np.diff(ipp, axis=0), [[0, 0, 4.0 / np.cos(t)]] * 2, atol=1e-5)
    assert float(dss[0].GantryDetectorTilt) == pytest.approx(18.5)


@pytest.mark.parametrize("enhanced", [False, True], ids=["ct_image", "enhanced_ct"])
def test_written_objects_pass_dciodvfy_without_errors(tmp_path, enhanced):
    ph = make_phantom((4, 32, 32), (2.0, 1.0, 1.0), seed=0)
    files = write_ct_series(ph.hu, tmp_path, spacing=ph.spacing, origin=ph.origin, enhanced=enhanced)
    assert dciodvfy_errors(files[-1]) == []
