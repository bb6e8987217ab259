"""Surface Segmentation writer, validator and reader (dicom_node.surface_seg).

The data are made here: a small CT series written with compiler.phantom, assembled by dicom_node.volume
(so the affine and source references are the pipeline's own), two spheres (labels 3 and 4) meshed by
kernels.marching_cubes_labels on that grid. dciodvfy judges the IOD; our validator the mesh arithmetic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors, shared_case
from pydicom.uid import generate_uid

from compiler.phantom import write_ct_series
from dicom_node.derived import (
    AlgorithmInfo,
    Code,
    Equipment,
    ResultSeries,
    SegmentInfo,
    SourceRef,
    SourceSeries,
    dicom_lab_to_srgb,
    part10_bytes,
    srgb_to_dicom_lab,
)
from dicom_node.seg import tracking_uid
from dicom_node.surface_seg import (
    SURFACE_SEGMENTATION_SOP_CLASS_UID,
    SurfaceProcessing,
    SurfaceSegmentation,
    SurfaceSegmentationError,
    mesh_flags,
    read_surface_segmentation,
    validate_surface_segmentation,
)
from dicom_node.volume import Volume, assemble_volume
from kernels import marching_cubes_labels
from kernels.mesh import Mesh
from kernels.mesh_ops import compact

SHAPE = (20, 32, 40)  # z, y, x
SPACING = (2.5, 1.2, 1.1)  # sz, sy, sx mm
ORIGIN = (-20.0, -30.0, 100.0)
PATIENT_NAME, PATIENT_ID = "DOE^JANE", "PID-998877"

ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
AI = Code("123110", "DCM", "Artificial Intelligence")  # CID 7162
ALGORITHM = AlgorithmInfo("isonode-ct-seg", "2026.12", AI)
EQUIPMENT = Equipment(device_serial_number="0123ABCD")
SEGMENTS = (
    SegmentInfo(1, 3, "Left lung", ANATOMY, Code("44029006", "SCT", "Left lung"), (128, 174, 128),
                "lung_left"),
    SegmentInfo(2, 4, "Right lung", ANATOMY, Code("3341006", "SCT", "Right lung"), (221, 130, 101)),
)


@dataclass(frozen=True)
class Case:
    source: SourceSeries
    volume: Volume
    labels: np.ndarray
    meshes: dict[int, Mesh]


def _source(files: list[Path], vol: Volume, **header: str) -> SourceSeries:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    for key, value in header.items():
        setattr(ds, key, value)
    refs = tuple(SourceRef(s.sop_class_uid, s.sop_instance_uid, s.frame_number) for s in vol.source_instances)
    return SourceSeries(ds, vol.study_instance_uid, vol.series_instance_uid, vol.frame_of_reference_uid, refs)


def _spheres(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mm_z, mm_y, mm_x = z * SPACING[0], y * SPACING[1], x * SPACING[2]
    labels = np.zeros(shape, np.uint8)
    labels[(mm_z - 20.0) ** 2 + (mm_y - 14.0) ** 2 + (mm_x - 13.0) ** 2 <= 8.0**2] = 3
    labels[(mm_z - 30.0) ** 2 + (mm_y - 24.0) ** 2 + (mm_x - 31.0) ** 2 <= 7.0**2] = 4
    return labels


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    files = write_ct_series(np.zeros(SHAPE, np.int16), tmp_path_factory.mktemp("ct"), spacing=SPACING,
                            origin=ORIGIN, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    vol = assemble_volume(files)
    labels = _spheres(SHAPE)
    meshes = marching_cubes_labels(labels, [3, 4], vol.affine, normals=True)
    return Case(_source(files, vol), vol, labels, meshes)


def _series(label: str = "PREVIEW") -> ResultSeries:
    return ResultSeries(generate_uid(), 901, "isonode 3D surfaces", label, "lungs, preview grid")


def _build(case: Case, surfaces=None, **kwargs) -> SurfaceSegmentation:
    args = {"source": case.source, "series": _series(), "algorithm": ALGORITHM, "equipment": EQUIPMENT}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    if surfaces is None:
        surfaces = [(SEGMENTS[0], case.meshes[3]), (SEGMENTS[1], case.meshes[4])]
    return SurfaceSegmentation(surfaces=surfaces, **args, **kwargs)


@pytest.fixture(scope="module")
def written(case: Case, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("out") / "surfaces.dcm"
    path.write_bytes(part10_bytes(_build(case)))
    return path


def _reread(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def _reread_bytes(ds: pydicom.Dataset) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(part10_bytes(ds)))


# ------------------------------------------------------------------------------------------ the IOD


def test_written_object_passes_dciodvfy_without_errors(written):
    assert dciodvfy_errors(written) == []


def test_object_carries_source_identity_references_and_series(written, case):
    ds = _reread(written)
    src = case.source
    assert ds.SOPClassUID == SURFACE_SEGMENTATION_SOP_CLASS_UID and ds.Modality == "SEG"
    assert ds.StudyInstanceUID == src.study_instance_uid
    assert ds.FrameOfReferenceUID == src.frame_of_reference_uid
    assert ds.PatientName == PATIENT_NAME and ds.PatientID == PATIENT_ID and ds.StudyID == "1"
    assert ds.SpecificCharacterSet == src.header.SpecificCharacterSet
    assert ds.SeriesNumber == 901 and ds.ContentLabel == "PREVIEW"
    refs = ds.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == src.series_instance_uid
    expected = [r.sop_instance_uid for r in src.instances]
    assert [i.ReferencedSOPInstanceUID for i in refs.ReferencedInstanceSequence] == expected
    for seg in ds.SegmentSequence:
        assert seg.SegmentAlgorithmType == "AUTOMATIC" and "SegmentAlgorithmName" not in seg
        ref = seg.ReferencedSurfaceSequence[0]
        assert [i.ReferencedSOPInstanceUID for i in ref.SegmentSurfaceSourceInstanceSequence] == expected
        algo = ref.SegmentSurfaceGenerationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (ALGORITHM.name, ALGORITHM.version)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert ds.SegmentSequence[0].TrackingUID == tracking_uid(src.series_instance_uid, "lung_left")
    assert [s.SurfaceProcessing for s in ds.SurfaceSequence] == ["", ""]  # not told: not claimed either way


# dicom3tools' condn.tpl spells the condition `StringValue="StringValue="YES"`, so dciodvfy never sees
# Surface Processing YES and calls the 2C attributes that YES requires "present when condition unsatisfied".
DCIODVFY_SURFACE_PROCESSING_BUG = [
    "Error - Attribute present when condition unsatisfied (which may not be present otherwise) Type 2C "
    f"Conditional Element=<{kw}> Module=<SurfaceMesh>"
    for kw in ("SurfaceProcessingRatio", "SurfaceProcessingAlgorithmIdentificationSequence")
]


def test_surface_processing_yes_carries_ratio_and_algorithm(case, tmp_path):
    smoothing = SurfaceProcessing("Taubin smoothing, 10 iterations", 1.0,
                                  AlgorithmInfo("taubin", "1", Code("123106", "DCM",
                                                                    "Multi-Scale/Resolution Filtering")))
    path = tmp_path / "processed.dcm"
    path.write_bytes(part10_bytes(_build(case, processing={2: smoothing})))
    surf = _reread(path).SurfaceSequence[1]
    assert (surf.SurfaceProcessing, surf.SurfaceProcessingRatio) == ("YES", 1.0)
    assert surf.SurfaceProcessingAlgorithmIdentificationSequence[0].AlgorithmName == "taubin"
    assert dciodvfy_errors(path) == DCIODVFY_SURFACE_PROCESSING_BUG  # its template bug, nothing else


def test_real_ge_header_is_copied_and_passes_dciodvfy(tmp_path):
    case_dir = shared_case("crlm_ct_1004_ge_abdomen")
    files = sorted((case_dir / "ct_dicom").glob("*.dcm"))
    vol = assemble_volume(files)
    labels = np.zeros(vol.array.shape, np.uint8)
    labels[15:25, 200:300, 220:320] = 8
    mesh = marching_cubes_labels(labels, [8], vol.affine)[8]
    source = _source(files, vol)
    liver = SegmentInfo(1, 8, "Liver", ANATOMY, Code("10200004", "SCT", "Liver"), (221, 130, 101))
    ds = SurfaceSegmentation(source, _series("FULL"), [(liver, mesh)], ALGORITHM, EQUIPMENT)
    path = tmp_path / "ge_surface.dcm"
    path.write_bytes(part10_bytes(ds))
    assert dciodvfy_errors(path) == []
    out = _reread(path)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyDate",
               "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "SpecificCharacterSet"):
        assert out.get(kw) == source.header.get(kw), kw
    assert validate_surface_segmentation(out, (vol.affine, vol.array.shape)) == []


def test_enhanced_ct_source_is_referenced_by_instance_and_frames(tmp_path):
    files = write_ct_series(np.zeros((6, 16, 16), np.int16), tmp_path / "enh", spacing=(2.0, 1.0, 1.0),
                            enhanced=True)
    vol = assemble_volume(files)
    labels = np.zeros(vol.array.shape, np.uint8)
    labels[1:5, 4:12, 4:12] = 1
    mesh = marching_cubes_labels(labels, [1], vol.affine)[1]
    ds = SurfaceSegmentation(_source(files, vol), _series(), [(replace(SEGMENTS[0], label_value=1), mesh)],
                             ALGORITHM, EQUIPMENT)
    path = tmp_path / "surf.dcm"
    path.write_bytes(part10_bytes(ds))
    assert dciodvfy_errors(path) == []
    out = _reread(path)
    assert len(out.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 1
    item = out.SegmentSequence[0].ReferencedSurfaceSequence[0].SegmentSurfaceSourceInstanceSequence[0]
    assert list(item.ReferencedFrameNumber) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------ round trip, bytes


def test_round_trip_gives_same_points_triangles_normals_labels_and_codes(written, case):
    back = read_surface_segmentation(written)
    assert [info for info, _ in back] == list(SEGMENTS)
    for (_, mesh), value in zip(back, (3, 4), strict=True):
        original = case.meshes[value]
        np.testing.assert_array_equal(mesh.vertices, original.vertices)
        np.testing.assert_array_equal(mesh.triangles, original.triangles)
        np.testing.assert_array_equal(mesh.normals, original.normals)
        assert mesh.triangles.dtype == np.uint32 and mesh.vertices.dtype == np.float32


def test_reader_accepts_a_dataset_and_a_mesh_without_normals(case):
    plain = Mesh(case.meshes[3].vertices, case.meshes[3].triangles, None)
    ds = _build(case, surfaces=[(SEGMENTS[0], plain)])
    [(info, mesh)] = read_surface_segmentation(pydicom.dcmread(BytesIO(part10_bytes(ds))))
    assert info == SEGMENTS[0] and mesh.normals is None
    assert len(_reread_bytes(ds).SurfaceSequence[0].SurfacePointsNormalsSequence) == 0


def test_indices_are_one_based_and_points_float32_little_endian_on_disk(written, case):
    ds = _reread(written)
    for surf, value in zip(ds.SurfaceSequence, (3, 4), strict=True):
        mesh = case.meshes[value]
        raw = np.frombuffer(surf.SurfaceMeshPrimitivesSequence[0].LongTrianglePointIndexList, "<u4")
        np.testing.assert_array_equal(raw, mesh.triangles.ravel().astype(np.int64) + 1)
        assert raw.min() == 1 and raw.max() == surf.SurfacePointsSequence[0].NumberOfSurfacePoints
        points = surf.SurfacePointsSequence[0].PointCoordinatesData
        assert points == mesh.vertices.astype("<f4").tobytes()
        prim = surf.SurfaceMeshPrimitivesSequence[0]
        assert prim.LongVertexPointIndexList in (b"", None) and prim.LongEdgePointIndexList in (b"", None)
        assert all(len(prim[kw].value) == 0 for kw in ("TriangleStripSequence", "TriangleFanSequence",
                                                        "LineSequence", "FacetSequence"))


# ---------------------------------------------------------------------------------- Finite Volume etc.


def test_finite_volume_and_manifold_yes_for_closed_spheres(written):
    for surf in _reread(written).SurfaceSequence:
        assert (surf.FiniteVolume, surf.Manifold) == ("YES", "YES")


def test_finite_volume_and_manifold_no_for_an_open_mesh(case):
    sphere = case.meshes[3]
    centroid_z = sphere.vertices[sphere.triangles.astype(np.int64)].mean(axis=1)[:, 2]
    lower = sphere.triangles[centroid_z < np.median(centroid_z)]
    bowl = compact(Mesh(sphere.vertices, lower, sphere.normals))
    ds = _reread_bytes(_build(case, surfaces=[(SEGMENTS[0], bowl)]))
    assert (ds.SurfaceSequence[0].FiniteVolume, ds.SurfaceSequence[0].Manifold) == ("NO", "NO")


def _tetra(offset: int = 0, flip: bool = False) -> np.ndarray:
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]) + offset
    if flip:
        faces[0] = faces[0, ::-1]
    return faces


def test_mesh_flags_see_pinch_vertices_nonmanifold_edges_and_inconsistent_winding():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    one = mesh_flags(Mesh(v, _tetra().astype(np.uint32)))
    assert (one.finite_volume, one.manifold) == ("YES", "YES")
    # two tetrahedra sharing only vertex 0: closed and oriented, but vertex 0 is a pinch point
    v2 = np.concatenate([v, -v[1:]])
    second = np.array([[0, 4, 5], [0, 6, 4], [0, 5, 6], [4, 6, 5]])
    pinch = mesh_flags(Mesh(v2, np.concatenate([_tetra(), second]).astype(np.uint32)))
    assert (pinch.finite_volume, pinch.manifold, pinch.pinch_vertices) == ("YES", "NO", 1)
    # two tetrahedra sharing edge 0-1: that edge has four triangles
    v3 = np.concatenate([v, [[0, -1, 0], [0, 0, -1]]]).astype(np.float32)
    fin = np.array([[0, 1, 4], [0, 5, 1], [0, 4, 5], [1, 5, 4]])
    edge = mesh_flags(Mesh(v3, np.concatenate([_tetra(), fin]).astype(np.uint32)))
    assert (edge.finite_volume, edge.manifold, edge.nonmanifold_edges) == ("UNKNOWN", "NO", 1)
    flipped = mesh_flags(Mesh(v, _tetra(flip=True).astype(np.uint32)))
    assert (flipped.finite_volume, flipped.manifold, flipped.misoriented_edges) == ("UNKNOWN", "YES", 3)


# ------------------------------------------------------------------------------------------ colour


def test_cielab_encoding_of_white_black_and_red():
    assert srgb_to_dicom_lab((255, 255, 255)) == (65535, 32896, 32896)
    assert srgb_to_dicom_lab((0, 0, 0)) == (0, 32896, 32896)
    lab = srgb_to_dicom_lab((255, 0, 0))  # L* 53.24, a* 80.09, b* 67.20
    assert abs(lab[0] / 65535 * 100 - 53.24) < 0.05
    assert abs(lab[1] / 65535 * 255 - 128 - 80.09) < 0.1 and abs(lab[2] / 65535 * 255 - 128 - 67.20) < 0.1


def test_cielab_round_trips_srgb_exactly():
    rng = np.random.default_rng(7)
    for rgb in [tuple(int(c) for c in row) for row in rng.integers(0, 256, (500, 3))]:
        assert dicom_lab_to_srgb(srgb_to_dicom_lab(rgb)) == rgb


# --------------------------------------------------------------------------------------- validator


def _corrupt_surface_count(ds):
    ds.NumberOfSurfaces = 3


def _corrupt_surface_number_start(ds):
    ds.SurfaceSequence[0].SurfaceNumber = 0


def _corrupt_surface_number_gap(ds):
    ds.SurfaceSequence[1].SurfaceNumber = 3


def _corrupt_dangling_reference(ds):
    ds.SegmentSequence[1].ReferencedSurfaceSequence[0].ReferencedSurfaceNumber = 7


def _corrupt_segment_surface_count(ds):
    ds.SegmentSequence[0].SurfaceCount = 2


def _prim(ds, k=0):
    return ds.SurfaceSequence[k].SurfaceMeshPrimitivesSequence[0]


def _corrupt_index_list_length(ds):
    _prim(ds).LongTrianglePointIndexList = _prim(ds).LongTrianglePointIndexList[:-4]


def _corrupt_zero_based(ds):
    idx = np.frombuffer(_prim(ds).LongTrianglePointIndexList, "<u4") - np.uint32(1)
    _prim(ds).LongTrianglePointIndexList = idx.tobytes()


def _corrupt_index_beyond_points(ds):
    idx = np.frombuffer(_prim(ds, 1).LongTrianglePointIndexList, "<u4").copy()
    idx[5] = ds.SurfaceSequence[1].SurfacePointsSequence[0].NumberOfSurfacePoints + 1
    _prim(ds, 1).LongTrianglePointIndexList = idx.tobytes()


def _corrupt_normals_count(ds):
    ds.SurfaceSequence[0].SurfacePointsNormalsSequence[0].NumberOfVectors -= 1


def _corrupt_point_count(ds):
    ds.SurfaceSequence[0].SurfacePointsSequence[0].NumberOfSurfacePoints += 1


def _corrupt_nan_point(ds):
    item = ds.SurfaceSequence[0].SurfacePointsSequence[0]
    pts = np.frombuffer(item.PointCoordinatesData, "<f4").copy()
    pts[4] = np.nan
    item.PointCoordinatesData = pts.tobytes()


@pytest.mark.parametrize(("corrupt", "expected"), [
    (_corrupt_surface_count, "Number of Surfaces is 3, but Surface Sequence has 2 items"),
    (_corrupt_surface_number_start, "Surface Number is 0, expected 1"),
    (_corrupt_surface_number_gap, "Surface Number is 3, expected 2"),
    (_corrupt_dangling_reference, "Referenced Surface Number 7 is not a Surface Number"),
    (_corrupt_segment_surface_count, "Surface Count is 2, but Referenced Surface Sequence has 1 items"),
    (_corrupt_index_list_length, "not a multiple of 3"),
    (_corrupt_zero_based, "indices outside 1.."),
    (_corrupt_index_beyond_points, "1 indices outside 1.."),
    (_corrupt_normals_count, "Number of Vectors (normals)"),
    (_corrupt_point_count, "Point Coordinates Data holds"),
    (_corrupt_nan_point, "NaN or infinite coordinates"),
], ids=lambda x: getattr(x, "__name__", "")[len("_corrupt_"):] or None)
def test_validator_finds_each_deliberate_corruption(written, corrupt, expected):
    ds = _reread(written)
    assert validate_surface_segmentation(ds) == []
    corrupt(ds)
    problems = validate_surface_segmentation(ds)
    assert any(expected in p for p in problems), problems
    with pytest.raises(SurfaceSegmentationError, match="not a well-formed Surface Segmentation"):
        read_surface_segmentation(ds)


def test_validator_accepts_points_within_the_source_extent(written, case):
    assert validate_surface_segmentation(_reread(written), (case.volume.affine, SHAPE)) == []


def test_validator_accepts_label_surfaces_capped_at_the_volume_border(case):
    full = np.zeros(SHAPE, np.uint8)
    full[:, :, 30:] = 5  # touches the x, y and z borders: capped half a voxel outside
    mesh = marching_cubes_labels(full, [5], case.volume.affine)[5]
    ds = _build(case, surfaces=[(replace(SEGMENTS[0], label_value=5), mesh)])
    assert validate_surface_segmentation(ds, (case.volume.affine, SHAPE)) == []


def test_validator_reports_a_mesh_outside_the_source_extent(case):
    moved = Mesh(case.meshes[3].vertices + np.float32([0.0, 0.0, 60.0]), case.meshes[3].triangles)
    ds = _build(case, surfaces=[(SEGMENTS[0], case.meshes[4]), (replace(SEGMENTS[1], label_value=3), moved)])
    problems = validate_surface_segmentation(ds, (case.volume.affine, SHAPE))
    assert len(problems) == 1 and problems[0].startswith("surface 2:"), problems
    assert "outside the source volume's extent" in problems[0]


# ---------------------------------------------------------------------------------- bad input refused


def _mesh(case: Case) -> Mesh:
    return case.meshes[3]


def _with_vertices(case: Case, fn) -> Mesh:
    v = case.meshes[3].vertices.copy()
    fn(v)
    return Mesh(v, case.meshes[3].triangles, case.meshes[3].normals)


def _with_triangles(case: Case, fn) -> Mesh:
    t = case.meshes[3].triangles.copy()
    fn(t)
    return Mesh(case.meshes[3].vertices, t, case.meshes[3].normals)


def _source_with(case: Case, **changes) -> SourceSeries:
    return replace(case.source, **changes)


BAD_INPUTS = {
    "empty mesh": (lambda c: {"surfaces": [(SEGMENTS[0], Mesh.empty())]}, "segment 1 .*mesh is empty"),
    "index out of range": (lambda c: {"surfaces": [(SEGMENTS[0], _with_triangles(c, lambda t: t.__setitem__(
        (3, 1), len(c.meshes[3].vertices))))]}, "segment 1 .*triangle indices out of range"),
    "nan coordinate": (lambda c: {"surfaces": [(SEGMENTS[0], _with_vertices(c, lambda v: v.__setitem__(
        (2, 0), np.nan)))]}, "segment 1 .*Point Coordinates Data has NaN"),
    "degenerate triangle": (lambda c: {"surfaces": [(SEGMENTS[0], _with_triangles(c, lambda t: t.__setitem__(
        (0, 2), t[0, 0])))]}, "segment 1 .*degenerate triangles"),
    "normals shape": (lambda c: {"surfaces": [(SEGMENTS[0], Mesh(c.meshes[3].vertices, c.meshes[3].triangles,
                                                                 c.meshes[3].normals[:-1]))]}, "normals"),
    "numbers out of order": (lambda c: {"surfaces": [(SEGMENTS[1], _mesh(c)), (SEGMENTS[0], _mesh(c))]},
                             "Segment Number .* must be 1, 2, ... n in order"),
    "no surfaces": (lambda c: {"surfaces": []}, "at least one"),
    "bad colour": (lambda c: {"surfaces": [(replace(SEGMENTS[0], color_rgb=(256, 0, 0)), _mesh(c))]},
                   r"segment 1 color_rgb \(Recommended Display CIELab Value\) must be three integers"),
    "label too long": (lambda c: {"surfaces": [(replace(SEGMENTS[0], label="x" * 65), _mesh(c))]},
                       r"segment 1 label \(Segment Label\) is 65 characters"),
    "empty code meaning": (lambda c: {"surfaces": [(replace(SEGMENTS[0], type=Code("44029006", "SCT", "")),
                                                    _mesh(c))]},
                           r"segment 1 type \(Segmented Property Type Code Sequence\) code meaning is empty"),
    "missing frame of reference": (lambda c: {"source": _source_with(c, frame_of_reference_uid="")},
                                   "source.frame_of_reference_uid"),
    "missing study uid": (lambda c: {"source": _source_with(c, study_instance_uid="")},
                          "source.study_instance_uid"),
    "bad instance uid": (lambda c: {"source": _source_with(c, instances=(SourceRef("1.2.3", "not a uid"),))},
                         r"source.instances\[0\].sop_instance_uid"),
    "no source instances": (lambda c: {"source": _source_with(c, instances=())}, "source.instances is empty"),
    "source series reused": (lambda c: {"series": replace(_series(), series_instance_uid=
                                                          c.source.series_instance_uid)}, "new series"),
    "lower-case content label": (lambda c: {"series": _series("preview")}, "Content Label"),
    "empty manufacturer": (lambda c: {"equipment": replace(EQUIPMENT, manufacturer="")},
                           r"equipment.manufacturer \(Manufacturer\) is empty"),
    "wrong DCM code": (lambda c: {"algorithm": AlgorithmInfo("m", "1", Code("113037", "DCM",
                                                                            "Artificial Intelligence"))},
                       "113037 means 'Rejected for Patient Safety Reasons'"),
    "opacity": (lambda c: {"opacity": 1.5}, "Recommended Presentation Opacity"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_constructor_refuses_bad_input_naming_the_attribute(case, name):
    make_kwargs, message = BAD_INPUTS[name]
    with pytest.raises(SurfaceSegmentationError, match=message) as err:
        _build(case, **make_kwargs(case))
    assert PATIENT_NAME not in str(err.value) and PATIENT_ID not in str(err.value)


def test_messages_and_logs_never_contain_patient_name_or_id(case, caplog):
    caplog.set_level(logging.DEBUG, logger="dicom_node.surface_seg")
    _build(case)
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "surface_seg_built" in text
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "DOE" not in text


# ------------------------------------------------------------------------------------- character set


def test_non_ascii_label_without_source_charset_is_written_as_utf8(case):
    header = pydicom.Dataset()
    for kw in ("PatientName", "PatientID", "StudyInstanceUID"):
        setattr(header, kw, case.source.header[kw].value)
    source = replace(case.source, header=header)
    label = "Leber (größter Lappen)"
    surfaces = [(replace(SEGMENTS[0], label=label), _mesh(case))]
    ds = _reread_bytes(_build(case, source=source, surfaces=surfaces))
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.SegmentSequence[0].SegmentLabel == label


def test_text_the_source_charset_cannot_encode_is_refused(case):
    with pytest.raises(SurfaceSegmentationError, match="segment 1 Segment Label has characters"):
        _build(case, surfaces=[(replace(SEGMENTS[0], label="肝臓"), _mesh(case))])
    liver = Code("10200004", "SCT", "肝臓")
    with pytest.raises(SurfaceSegmentationError, match="segment 1 Segmented Property Type Code Meaning"):
        _build(case, surfaces=[(replace(SEGMENTS[0], type=liver), _mesh(case))])


# ---------------------------------------------------------------------------------------- performance


def test_a_million_triangles_write_in_seconds(case):
    n = 708  # a triangulated n x n grid: 2 (n-1)^2 = 999,698 triangles
    j, i = np.mgrid[0:n, 0:n]
    vertices = np.stack([i.ravel() * 0.05, j.ravel() * 0.05, np.zeros(n * n)], axis=1).astype(np.float32)
    q = (j[:-1, :-1] * n + i[:-1, :-1]).ravel()
    triangles = np.concatenate([np.stack([q, q + 1, q + n + 1], 1), np.stack([q, q + n + 1, q + n], 1)])
    mesh = Mesh(vertices, triangles.astype(np.uint32))
    t0 = time.perf_counter()
    data = part10_bytes(_build(case, surfaces=[(SEGMENTS[0], mesh)]))
    elapsed = time.perf_counter() - t0
    assert len(data) > 12 * len(triangles)
    assert elapsed < 5.0, f"{len(triangles)} triangles took {elapsed:.2f} s"
