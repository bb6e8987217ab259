"""dicom_node.seg: the BINARY SEG on the source grid (regular stacks) or on the resampled volume grid
(gantry tilt), valid per dciodvfy, read back by highdicom, and clear refusals of bad input."""

from __future__ import annotations

import logging
import time
import warnings
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors, shared_case
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from compiler.phantom import make_phantom, write_ct_series
from dicom_node.derived import (
    AlgorithmInfo,
    Code,
    Equipment,
    ResultSeries,
    SegmentInfo,
    part10_bytes,
    srgb_to_dicom_lab,
)
from dicom_node.seg import SEGMENTATION_SOP_CLASS_UID, SegError, build_segmentation, tracking_uid
from dicom_node.volume import Volume, assemble_volume

ANATOMY = Code("123037004", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
# bundle label values 1, 2, 4 become segment numbers 1, 2, 3: the SEG must renumber
SEGMENTS = (
    SegmentInfo(1, 1, "body", ANATOMY, Code("38266002", "SCT", "Entire body"), (177, 122, 101), "body"),
    SegmentInfo(2, 2, "bone", TISSUE, Code("272673000", "SCT", "Bone"), (241, 214, 145), "bone"),
    SegmentInfo(3, 4, "lung_right", ANATOMY, Code("3341006", "SCT", "Right lung"), (111, 184, 210)),
)
ALGORITHM = AlgorithmInfo("isonode-ct-chest", "2026.12")
EQUIPMENT = Equipment(device_serial_number="TESTSERIAL01")


def _series(**kw: object) -> ResultSeries:
    base = ResultSeries(generate_uid(), 901, "isonode SEG (preview)", "PREVIEW", "AI segmentation")
    return replace(base, **kw)


def _labels(hu: np.ndarray) -> np.ndarray:
    """Realistic sizes without a model: body > -300 HU, bone > 300 HU, air inside the body's slice
    extent on the image left = right lung (label value 4)."""
    labels = np.zeros(hu.shape, np.uint8)
    body = hu > -300
    labels[body] = 1
    labels[hu > 300] = 2
    rows = body.any(axis=2, keepdims=True).cumsum(axis=1)
    inside = (rows > 0) & (rows < rows[:, -1:, :])
    cols = np.arange(hu.shape[2]) < hu.shape[2] // 2
    labels[(hu < -500) & inside & cols[None, None, :]] = 4
    return labels


def _headers_in_volume_order(paths: list[Path], vol: Volume) -> list[Dataset]:
    headers = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert "PixelData" not in ds  # headers only: the writer must not need pixels
        headers[ds.SOPInstanceUID] = ds
    return [headers[uid] for uid in dict.fromkeys(s.sop_instance_uid for s in vol.source_instances)]


def _write(seg: Dataset, path: Path) -> Path:
    path.write_bytes(part10_bytes(seg))
    return path


@dataclass
class Built:
    vol: Volume
    labels: np.ndarray
    headers: list[Dataset]
    series: ResultSeries
    path: Path
    seconds: float


def _build(paths: list[Path], out: Path, segments=SEGMENTS, labels: np.ndarray | None = None) -> Built:
    vol = assemble_volume(paths)
    headers = _headers_in_volume_order(paths, vol)
    labels = _labels(vol.array) if labels is None else labels
    series = _series()
    t0 = time.perf_counter()
    seg = build_segmentation(labels, vol.affine, headers, segments, ALGORITHM, EQUIPMENT, series,
                             resampled=vol.resampled_from is not None)
    seconds = time.perf_counter() - t0
    return Built(vol, labels, headers, series, _write(seg, out), seconds)


def _segment_numbers(labels: np.ndarray, segments=SEGMENTS) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for s in segments:
        lut[s.label_value] = s.number
    return lut[labels]


def _frames_on_grid(seg: Dataset, affine: np.ndarray) -> list[tuple[int, int, int]]:
    """(frame index, label slice k, segment number) of every frame, k from its Image Position: the
    position must lie exactly on slice k of the grid `affine` describes."""
    out = []
    step, origin = affine[:3, 2], affine[:3, 3]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = int(round(float((ipp - origin) @ step / (step @ step))))
        np.testing.assert_allclose(ipp, origin + k * step, atol=1e-3)
        out.append((i, k, int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)))
    return out


def _assert_frames_hold_labels(seg: Dataset, affine: np.ndarray, numbers: np.ndarray) -> None:
    """Every frame is its slice's mask of its segment, and exactly the non-empty (slice, segment) pairs
    have a frame (empty frames omitted)."""
    frames = _frames_on_grid(seg, affine)
    pixels = seg.pixel_array.reshape(len(frames), int(seg.Rows), int(seg.Columns))
    for i, k, number in frames:
        assert np.array_equal(pixels[i], numbers[k] == number), f"frame {i + 1} (slice {k}, segment {number})"
    present = {(k, n) for k in range(numbers.shape[0]) for n in np.unique(numbers[k]).tolist() if n}
    assert sorted((k, n) for _, k, n in frames) == sorted(present)


# --- a real regular series: GE abdomen, 41 slices -----------------------------------------------------


@pytest.fixture(scope="module")
def regular(tmp_path_factory) -> Built:
    case = shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom"
    out = tmp_path_factory.mktemp("seg") / "regular_seg.dcm"
    return _build(sorted(p for p in case.iterdir() if p.is_file()), out)


def test_seg_of_real_regular_series_passes_dciodvfy(regular):
    assert dciodvfy_errors(regular.path) == []


def test_seg_of_real_regular_series_reads_back_as_the_label_map_on_the_source_grid(regular):
    seg = hd.seg.segread(regular.path)
    uids = [h.SOPInstanceUID for h in regular.headers]
    back = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    assert np.array_equal(back, _segment_numbers(regular.labels))
    _assert_frames_hold_labels(seg, regular.vol.affine, _segment_numbers(regular.labels))
    assert (seg.Rows, seg.Columns) == regular.labels.shape[1:]


def test_every_frame_of_a_regular_series_references_the_source_slice_it_lies_on(regular):
    seg = pydicom.dcmread(regular.path)
    by_uid = {h.SOPInstanceUID: h for h in regular.headers}
    for item in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = item.DerivationImageSequence
        assert derivation.DerivationCodeSequence[0].CodeValue == "113076"  # Segmentation
        (source,) = derivation.SourceImageSequence
        assert source.SpatialLocationsPreserved == "YES"
        header = by_uid[source.ReferencedSOPInstanceUID]
        assert source.ReferencedSOPClassUID == header.SOPClassUID
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in header.ImagePositionPatient], atol=1e-4,
        )
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == regular.vol.series_instance_uid
    assert {r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence} == set(by_uid)


def test_seg_carries_the_result_series_equipment_and_source_study(regular):
    seg = pydicom.dcmread(regular.path)
    src = regular.headers[0]
    assert seg.SOPClassUID == SEGMENTATION_SOP_CLASS_UID and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY" and seg.BitsAllocated == 1
    assert seg.SeriesInstanceUID == regular.series.series_instance_uid
    assert seg.SeriesNumber == regular.series.series_number
    assert seg.SeriesDescription == regular.series.series_description
    assert seg.InstanceNumber == regular.series.instance_number
    assert seg.ContentLabel == "PREVIEW" and seg.ContentDescription == "AI segmentation"
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions, seg.DeviceSerialNumber) == (
        EQUIPMENT.manufacturer, EQUIPMENT.model_name, EQUIPMENT.software_version, "TESTSERIAL01")
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == src.PatientID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID


def test_segments_carry_codes_colour_algorithm_and_tracking(regular):
    seg = pydicom.dcmread(regular.path)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    for item, info in zip(seg.SegmentSequence, SEGMENTS, strict=True):
        assert item.SegmentLabel == info.label
        category, prop = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning) == (
            info.category.value, info.category.scheme, info.category.meaning)
        assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == (
            info.type.value, info.type.scheme, info.type.meaning)
        assert list(item.RecommendedDisplayCIELabValue) == list(srgb_to_dicom_lab(info.color_rgb))
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        (algo,) = item.SegmentationAlgorithmIdentificationSequence
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (ALGORITHM.name, ALGORITHM.version)
        family = algo.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == (ALGORITHM.family.value, ALGORITHM.family.scheme)
        if info.tracking_id:
            assert item.TrackingID == info.tracking_id
            assert item.TrackingUID == tracking_uid(regular.vol.series_instance_uid, info.tracking_id)
        else:
            assert "TrackingID" not in item and "TrackingUID" not in item


# --- a real gantry-tilted series: resampled, SEG on the volume grid -----------------------------------


@pytest.fixture(scope="module")
def tilted(tmp_path_factory) -> Built:
    case = shared_case("dcmqa_ge_head_gantry_tilt") / "ct_dicom"
    out = tmp_path_factory.mktemp("seg") / "tilted_seg.dcm"
    built = _build(sorted(p for p in case.iterdir() if p.is_file()), out)
    assert built.vol.resampled_from is not None
    return built


def test_seg_of_gantry_tilted_series_passes_dciodvfy(tilted):
    assert dciodvfy_errors(tilted.path) == []


def test_seg_of_gantry_tilted_series_lies_on_the_volume_grid(tilted):
    seg = hd.seg.segread(tilted.path)
    affine = tilted.vol.affine
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    dx, dy, _ = tilted.vol.spacing
    np.testing.assert_allclose(orientation[:3], affine[:3, 0] / dx, atol=1e-6)
    np.testing.assert_allclose(orientation[3:], affine[:3, 1] / dy, atol=1e-6)
    measures = shared.PixelMeasuresSequence[0]
    np.testing.assert_allclose([float(v) for v in measures.PixelSpacing], [dy, dx], rtol=1e-6)
    step = float(np.linalg.norm(affine[:3, 2]))
    assert float(measures.SpacingBetweenSlices) == pytest.approx(step, rel=1e-6)
    assert float(measures.SliceThickness) == pytest.approx(step, rel=1e-6)
    assert (seg.Rows, seg.Columns) == tilted.labels.shape[1:]
    assert seg.FrameOfReferenceUID == tilted.vol.frame_of_reference_uid
    _assert_frames_hold_labels(seg, affine, _segment_numbers(tilted.labels))


def test_seg_of_gantry_tilted_series_references_the_series_but_no_slice_per_frame(tilted):
    seg = pydicom.dcmread(tilted.path)
    assert all(len(item.DerivationImageSequence) == 0 for item in seg.PerFrameFunctionalGroupsSequence)
    (ref_series,) = seg.ReferencedSeriesSequence
    source_uids = {s.sop_instance_uid for s in tilted.vol.source_instances}
    assert {r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence} == source_uids
    assert {r.ReferencedSOPInstanceUID for r in seg.SourceImageSequence} == source_uids
    assert "resampled" in seg.DerivationDescription


def test_absent_type2_patient_attributes_are_written_empty_without_touching_the_caller_headers(tilted):
    # the GE tilt series has no PatientBirthDate / PatientSex (Type 2) and claims removed identity
    # without a method (Type 1C): the SEG fills both, the source headers stay as they were
    assert "PatientSex" not in tilted.headers[0] and not tilted.headers[0].get("DeidentificationMethod")
    seg = pydicom.dcmread(tilted.path)
    assert seg.PatientSex == "" and seg.PatientBirthDate == ""
    assert seg.DeidentificationMethod


# --- phantoms: geometry paths and refusals (fast) -----------------------------------------------------


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((20, 48, 48), (2.5, 2.0, 2.0), seed=3)


def _phantom_series(phantom, out: Path, **kw) -> tuple[Volume, list[Dataset]]:
    out.mkdir(parents=True, exist_ok=True)
    paths = write_ct_series(phantom.hu, out, spacing=(2.5, 2.0, 2.0), **kw)
    vol = assemble_volume(paths)
    return vol, _headers_in_volume_order(paths, vol)


@pytest.fixture(scope="module")
def plain(phantom, tmp_path_factory):
    return _phantom_series(phantom, tmp_path_factory.mktemp("plain"), patient_name="SECRETNAME",
                           patient_id="SECRETID77")


def _segments_of(labels: np.ndarray) -> list[SegmentInfo]:
    values = [int(v) for v in np.unique(labels) if v]
    return [SegmentInfo(i, v, f"label {v}", ANATOMY, Code(f"9{v}", "99TEST", f"thing {v}"), (10 * v, 0, 255))
            for i, v in enumerate(values, start=1)]


def _seg(vol: Volume, headers, labels, segments=None, **kw):
    segments = _segments_of(labels) if segments is None else segments
    kw.setdefault("resampled", vol.resampled_from is not None)
    return build_segmentation(labels, vol.affine, headers, segments, ALGORITHM, EQUIPMENT, _series(), **kw)


def test_phantom_label_map_round_trips_with_identity_numbering(plain, tmp_path):
    vol, headers = plain
    labels = _labels(vol.array)
    labels[labels == 4] = 3  # values 1..3 = segment numbers: passed through without a copy
    uid = generate_uid()
    path = _write(_seg(vol, headers, labels, sop_instance_uid=uid), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == uid
    back = hd.seg.segread(path).get_pixels_by_source_instance(
        [h.SOPInstanceUID for h in headers], combine_segments=True)
    assert np.array_equal(back, labels)


def test_enhanced_ct_frames_in_reverse_order_are_referenced_by_frame_number(phantom, tmp_path):
    # frame 1 is the top slice, so label slice k lies on frame n - k: highdicom alone would pair k with k + 1
    n = phantom.hu.shape[0]
    vol, headers = _phantom_series(phantom, tmp_path / "enh", enhanced=True,
                                   slice_positions=list(np.arange(n)[::-1] * 2.5))
    assert len(headers) == 1 and [s.frame_number for s in vol.source_instances][:2] == [n, n - 1]
    labels = _labels(vol.array)
    path = _write(_seg(vol, headers, labels, SEGMENTS), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    _assert_frames_hold_labels(seg, vol.affine, _segment_numbers(labels))
    for i, k, _ in _frames_on_grid(seg, vol.affine):
        (source,) = seg.PerFrameFunctionalGroupsSequence[i].DerivationImageSequence[0].SourceImageSequence
        assert int(source.ReferencedFrameNumber) == n - k and source.SpatialLocationsPreserved == "YES"


def test_evenly_spaced_tilt_gets_no_per_frame_source_links_even_where_frames_are_coplanar(phantom, tmp_path):
    # evenly spaced tilt: every resampled slice is coplanar with a source slice (shifted in-plane), and
    # highdicom links such frames to it; the SEG must not, and its look-up tables must follow
    vol, headers = _phantom_series(phantom, tmp_path / "tilt", tilt_deg=12.0)
    assert vol.resampled_from and "tilt" in vol.resampled_from
    labels = _labels(vol.array)
    seg = _seg(vol, headers, labels, SEGMENTS)
    assert all(len(item.DerivationImageSequence) == 0 for item in seg.PerFrameFunctionalGroupsSequence)
    assert np.array_equal(seg.get_segment_numbers(), [1, 2, 3])
    path = _write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    _assert_frames_hold_labels(hd.seg.segread(path), vol.affine, _segment_numbers(labels))


def test_resampled_volume_passed_as_regular_is_refused(phantom, tmp_path):
    vol, headers = _phantom_series(phantom, tmp_path / "tilt", tilt_deg=12.0)
    with pytest.raises(SegError, match="resampled=True"):
        _seg(vol, headers, _labels(vol.array), SEGMENTS, resampled=False)


def test_source_images_out_of_volume_order_are_refused(plain):
    vol, headers = plain
    swapped = [headers[1], headers[0], *headers[2:]]
    with pytest.raises(SegError, match=r"source_images are not in volume order: label slice 0"):
        _seg(vol, swapped, _labels(vol.array), SEGMENTS)


def test_empty_segment_is_refused_by_name(plain):
    vol, headers = plain
    labels = _labels(vol.array)
    labels[labels == 2] = 1  # no bone left
    with pytest.raises(SegError, match=r"segment 2 \(bone\) is empty"):
        _seg(vol, headers, labels, SEGMENTS)


def test_label_value_without_segment_is_refused(plain):
    vol, headers = plain
    labels = _labels(vol.array)
    labels[0, 0, 0] = 7
    with pytest.raises(SegError, match=r"labels holds label value\(s\) \[7\]"):
        _seg(vol, headers, labels, SEGMENTS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda lab, hdr: (lab[:-1], hdr), r"labels has 19 slices but source_images have 20 frames"),
        (lambda lab, hdr: (lab[:, :-2], hdr), r"labels slices are 46x48 but source frames are 48x48"),
        (lambda lab, hdr: (lab[:, :, ::2], hdr), r"labels slices are 48x24"),
        (lambda lab, hdr: (lab.astype(np.int16), hdr), r"labels must be a uint8 label map"),
        (lambda lab, hdr: (lab[0], hdr), r"labels must be a non-empty \(z, y, x\) array"),
        (lambda lab, hdr: (lab.tolist(), hdr), r"labels must be a numpy array"),
        (lambda lab, hdr: (lab, []), r"source_images must be a non-empty sequence"),
        (lambda lab, hdr: (lab, hdr[0]), r"source_images must be a sequence"),
        (lambda lab, hdr: (lab, [hdr[0], hdr[0], *hdr[2:]]), r"source_images lists an instance more than once"),
    ],
    ids=["too-few-slices", "fewer-rows", "fewer-columns", "int16", "2d", "list", "no-sources", "one-dataset",
         "duplicate-source"],
)
def test_mismatched_shapes_and_bad_arrays_are_refused(plain, change, message):
    vol, headers = plain
    labels, hdrs = change(_labels(vol.array), headers)
    with pytest.raises(SegError, match=message):
        build_segmentation(labels, vol.affine, hdrs, SEGMENTS, ALGORITHM, EQUIPMENT, _series(), resampled=False)


def _other_series(headers: list[Dataset]) -> list[Dataset]:
    other = deepcopy(headers[1])  # a copy: the module's headers are shared between tests
    other.SeriesInstanceUID = generate_uid()
    return [headers[0], other, *headers[2:]]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"affine": np.eye(3)}, r"affine must be a 4x4"),
        ({"affine": np.diag([1.0, 1.0, 1.0, 2.0])}, r"affine's last row"),
        ({"segments": [replace(SEGMENTS[0], number=2), *SEGMENTS[1:]]},
         r"Segment Number of segments\[0\] is 2: segment numbers must be 1, 2"),
        ({"segments": [SEGMENTS[0], replace(SEGMENTS[1], label_value=1), SEGMENTS[2]]},
         r"segment 2 label_value 1 belongs to another segment"),
        ({"segments": [SEGMENTS[0], replace(SEGMENTS[1], label=""), SEGMENTS[2]]},
         r"segment 2 label \(Segment Label\) is empty"),
        ({"segments": [replace(SEGMENTS[0], color_rgb=(0, 0, 300)), *SEGMENTS[1:]]},
         r"segment 1 color_rgb \(Recommended Display CIELab Value\)"),
        ({"segments": []}, r"segments: at least one segment is required"),
        ({"series": _series(content_label="preview")}, r"series.content_label \(Content Label, CS\) must be"),
        ({"series": _series(series_instance_uid="not-a-uid")},
         r"series.series_instance_uid \(Series Instance UID\) is missing or not a valid UID"),
        ({"algorithm": AlgorithmInfo("", "1")}, r"algorithm.name \(Algorithm Name\) is empty"),
        ({"algorithm": AlgorithmInfo("m", "1", Code("113037", "DCM", "Artificial Intelligence"))},
         r"algorithm.family \(Algorithm Family Code Sequence\): DCM code 113037 means 'Rejected for Patient Safety "
         r"Reasons'"),
        ({"equipment": "isonode"}, r"equipment must be an Equipment"),
        ({"resampled": "no"}, r"resampled must be True or False"),
        ({"sop_instance_uid": "1.2.x"}, r"sop_instance_uid \(SOP Instance UID\) is missing or not"),
        ({"source_images": "other-series"}, r"source_images are not one series: they differ in SeriesInstanceUID"),
        ({"series": "source-series"}, r"series.series_instance_uid equals the source's Series Instance UID"),
    ],
    ids=["affine-3x3", "affine-last-row", "misnumbered", "shared-label-value", "empty-label", "colour",
         "no-segments", "content-label", "series-uid", "algorithm-name", "wrong-dcm-code", "equipment", "resampled-str",
         "sop-uid", "two-series", "source-series"],
)
def test_bad_arguments_are_refused_naming_the_argument(plain, kw, message):
    vol, headers = plain
    args = {"labels": _labels(vol.array), "affine": vol.affine, "source_images": headers, "segments": SEGMENTS,
            "algorithm": ALGORITHM, "equipment": EQUIPMENT, "series": _series(), "resampled": False, **kw}
    if args["source_images"] == "other-series":
        args["source_images"] = _other_series(headers)
    if args["series"] == "source-series":
        args["series"] = _series(series_instance_uid=str(headers[0].SeriesInstanceUID))
    with pytest.raises(SegError, match=message):
        build_segmentation(**args)


def test_patient_name_and_id_stay_out_of_warnings_logs_and_errors(plain, caplog):
    vol, headers = plain
    assert headers[0].PatientName == "SECRETNAME"  # one component: highdicom warns quoting it
    labels = _labels(vol.array)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        seg = _seg(vol, headers, labels, SEGMENTS)
        with pytest.raises(SegError) as refused:
            _seg(vol, headers[::-1], labels, SEGMENTS)
    assert seg.PatientName == "SECRETNAME" and seg.PatientID == "SECRETID77"
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records] + [str(refused.value)]
    assert not [s for s in said if "SECRET" in s]


@pytest.mark.parametrize(("label", "charset"), [("Lunge rechts \u00e4", "ISO_IR 100"),
                                                 ("Lunge \u2013 rechts \u80ba", "ISO_IR 192")])
def test_segment_labels_outside_the_source_character_set_switch_the_seg_to_utf8(plain, tmp_path, label, charset):
    vol, headers = plain  # the phantom writes ISO_IR 100 (Latin-1)
    segments = [replace(SEGMENTS[0], label=label), *SEGMENTS[1:]]
    path = _write(_seg(vol, headers, _labels(vol.array), segments), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert seg.SpecificCharacterSet == charset
    assert seg.SegmentSequence[0].SegmentLabel == label and seg.PatientName == "SECRETNAME"


@pytest.mark.slow
def test_seg_of_275_slice_chest_builds_within_seconds(tmp_path):
    case = shared_case("lidc_idri_0314_chest_1mm") / "ct_dicom"
    paths = sorted(p for p in case.iterdir() if p.is_file())
    built = _build(paths, tmp_path / "chest_seg.dcm")
    size = built.path.stat().st_size
    frames = int(pydicom.dcmread(built.path, stop_before_pixels=True).NumberOfFrames)
    print(f"chest SEG: {built.seconds:.2f} s to build, {frames} frames, {size / 1e6:.1f} MB")
    assert built.seconds < 5.0
    assert size < frames * 512 * 512 / 8 + 2_000_000  # bit-packed, headers small
