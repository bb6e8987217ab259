"""dicom_node.pixels: every transfer syntax we accept decodes (HU-exact where lossless); bad data is refused."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from dicom_node.pixels import (
    TRANSFER_SYNTAXES_ACCEPTED,
    PixelDecodeError,
    check_decodable,
    decode_frames,
    to_hu,
)

SAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom_ts_samples"
CS = SAMPLES / "cornerstone"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared transfer-syntax samples not present")

LOSSLESS_CTIMAGE = {
    "1.2.840.10008.1.2": "CTImage.dcm_LittleEndianImplicitTransferSyntax_1.2.840.10008.1.2.dcm",
    "1.2.840.10008.1.2.1.99": "CTImage.dcm_DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99.dcm",
    "1.2.840.10008.1.2.2": "CTImage.dcm_BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2.dcm",
    "1.2.840.10008.1.2.4.57": "CTImage.dcm_JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57.dcm",
    "1.2.840.10008.1.2.4.70": "CTImage.dcm_JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70.dcm",
    "1.2.840.10008.1.2.4.80": "CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm",
    "1.2.840.10008.1.2.4.90": "CTImage.dcm_JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90.dcm",
    "1.2.840.10008.1.2.5": "CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm",
}
LOSSY_CTIMAGE = {
    "1.2.840.10008.1.2.4.50": "CTImage.dcm_JPEGProcess1TransferSyntax_1.2.840.10008.1.2.4.50.dcm",
    "1.2.840.10008.1.2.4.51": "CTImage.dcm_JPEGProcess2_4TransferSyntax_1.2.840.10008.1.2.4.51.dcm",
    "1.2.840.10008.1.2.4.81": "CTImage.dcm_JPEGLSLossyTransferSyntax_1.2.840.10008.1.2.4.81.dcm",
    "1.2.840.10008.1.2.4.91": "CTImage.dcm_JPEG2000TransferSyntax_1.2.840.10008.1.2.4.91.dcm",
}
RETIRED = {
    "1.2.840.10008.1.2.4.53": "CTImage.dcm_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm",
    "1.2.840.10008.1.2.4.55": "CTImage.dcm_JPEGProcess10_12TransferSyntax_1.2.840.10008.1.2.4.55.dcm",
}
OTHER_SAMPLES = [
    "cornerstone/CT1_J2KR",
    "cornerstone/CT2_J2KR",
    "pylibjpeg_data/CT1_JLSN.dcm",
    "pylibjpeg_data/ELSCINT1_JP2vsJ2K.dcm",
    "pylibjpeg_data/MAROTECH_CT_JP2Lossy.dcm",
    "pylibjpeg_data/TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
    "pydicom_data/eCT_Supplemental.dcm",
]


def _hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return to_hu(ds, decode_frames(ds))


@pytest.fixture(scope="module")
def reference_hu() -> np.ndarray:
    return _hu(CS / "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm")


def test_accepted_syntaxes_are_the_decodable_ones_and_exclude_retired_jpeg():
    expected = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", *LOSSLESS_CTIMAGE, *LOSSY_CTIMAGE}
    assert expected <= set(TRANSFER_SYNTAXES_ACCEPTED)
    assert not set(RETIRED) & set(TRANSFER_SYNTAXES_ACCEPTED)


@pytest.mark.parametrize("ts", sorted(LOSSLESS_CTIMAGE))
def test_lossless_syntax_decodes_hu_exact_vs_uncompressed_twin(ts, reference_hu):
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE[ts])
    assert ds.file_meta.TransferSyntaxUID == ts
    hu = to_hu(ds, decode_frames(ds))
    assert hu.dtype == np.int16
    assert hu.dtype.isnative
    np.testing.assert_array_equal(hu, reference_hu)


@pytest.mark.parametrize("ts", sorted(LOSSY_CTIMAGE))
def test_lossy_syntax_decodes_close_to_twin(ts, reference_hu):
    hu = _hu(CS / LOSSY_CTIMAGE[ts])
    assert hu.shape == reference_hu.shape
    inside = reference_hu > -2000  # skip the padding outside the reconstruction circle
    err = np.abs(hu.astype(np.float32) - reference_hu)[inside]
    assert np.median(err) < 30.0


@pytest.mark.parametrize(
    "lossless,twin",
    [
        ("pydicom_data/693_J2KR.dcm", "pydicom_data/693_UNCR.dcm"),
        # same SOP instance; the codestream is signed although PixelRepresentation says unsigned
        ("pylibjpeg_data/TOSHIBA_J2K_SIZ1_PixRep0.dcm", "pylibjpeg_data/TOSHIBA_J2K_SIZ0_PixRep1.dcm"),
    ],
)
def test_j2k_samples_decode_hu_exact_vs_twin(lossless, twin):
    np.testing.assert_array_equal(_hu(SAMPLES / lossless), _hu(SAMPLES / twin))


@pytest.mark.parametrize("name", OTHER_SAMPLES)
def test_other_samples_decode_to_plausible_ct(name):
    ds = pydicom.dcmread(SAMPLES / name)
    frames = decode_frames(ds)
    assert frames.shape == (int(ds.get("NumberOfFrames", 1) or 1), ds.Rows, ds.Columns)
    hu = to_hu(ds, frames)
    assert -3100 <= hu.min() < -500 and 0 < hu.max() < 4000
    check_decodable(ds)


@pytest.mark.parametrize("ts", sorted(RETIRED))
def test_retired_jpeg_syntax_is_refused_cleanly(ts):
    ds = pydicom.dcmread(CS / RETIRED[ts])
    with pytest.raises(PixelDecodeError, match="unsupported transfer syntax"):
        decode_frames(ds)
    with pytest.raises(PixelDecodeError):
        check_decodable(ds)


def test_missing_pixel_data_is_refused():
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE["1.2.840.10008.1.2"], stop_before_pixels=True)
    with pytest.raises(PixelDecodeError, match="no pixel data"):
        check_decodable(ds)


def test_truncated_native_pixel_data_is_refused():
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE["1.2.840.10008.1.2"])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(PixelDecodeError, match="truncated"):
        check_decodable(ds)


@pytest.mark.parametrize(
    "ts",
    [
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
    ],
)
def test_truncated_compressed_frame_is_refused_not_half_decoded(ts):
    # libjpeg happily decodes a truncated JPEG(-LS) stream into a half-blank image: we must not
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE[ts])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    with pytest.raises(PixelDecodeError, match="truncated|decoder failure"):
        decode_frames(ds)


def test_garbage_j2k_stream_is_a_decoder_failure():
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE["1.2.840.10008.1.2.4.90"])
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 200 + b"\xff\xd9"])
    with pytest.raises(PixelDecodeError, match="decoder failure"):
        decode_frames(ds)


def test_colour_image_is_refused():
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE["1.2.840.10008.1.2"])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(PixelDecodeError, match="SamplesPerPixel=3"):
        check_decodable(ds)


def test_dataset_without_file_meta_needs_explicit_transfer_syntax(reference_hu):
    ds = pydicom.dcmread(CS / "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm")
    bare = Dataset()
    bare.update(ds)
    with pytest.raises(PixelDecodeError, match="transfer syntax"):
        decode_frames(bare)
    frames = decode_frames(bare, transfer_syntax_uid="1.2.840.10008.1.2.1")
    np.testing.assert_array_equal(to_hu(bare, frames), reference_hu)


def test_enhanced_ct_rescale_comes_from_per_frame_functional_groups():
    ds = pydicom.dcmread(SAMPLES / "pydicom_data/eCT_Supplemental.dcm")
    frames = decode_frames(ds)
    base = to_hu(ds, frames)
    np.testing.assert_array_equal(base, frames.astype(np.int32) - 1024)  # shared group: intercept -1024
    changed = copy.deepcopy(ds)
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", "-1000", "HU"
    changed.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence = [pvt]
    hu = to_hu(changed, frames)
    np.testing.assert_array_equal(hu[0], base[0])
    np.testing.assert_array_equal(hu[1], base[1] + 24)
    single = to_hu(changed, decode_frames(changed, index=1), frame_index=1)
    np.testing.assert_array_equal(single[0], hu[1])


def test_non_integral_rescale_gives_float32():
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE["1.2.840.10008.1.2"])
    frames = decode_frames(ds)
    ds.RescaleSlope = "0.5"
    hu = to_hu(ds, frames)
    assert hu.dtype == np.float32
    np.testing.assert_allclose(hu, frames * 0.5 + float(ds.RescaleIntercept))


def test_rescale_that_overflows_int16_gives_float32():
    ds = pydicom.dcmread(CS / LOSSLESS_CTIMAGE["1.2.840.10008.1.2"])
    frames = decode_frames(ds)
    ds.RescaleSlope = "40"
    assert to_hu(ds, frames).dtype == np.float32
