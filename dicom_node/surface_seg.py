"""DICOM Surface Segmentation (PS3.3 A.57): the writer, a validator for what dciodvfy does not check, and a
reader for round trips.

Few viewers read this IOD yet (see FACTS.md), so the object must be right by construction: the constructor
refuses bad input with an error that names the attribute or segment, `validate_surface_segmentation`
checks the mesh arithmetic that dciodvfy's templates leave out (counts, 1-based index ranges, extent), and
`read_surface_segmentation` turns an object back into meshes so tests can prove the round trip.

`SurfaceSegmentation` is a pydicom `Dataset` subclass, in highdicom's style: constructing one builds and
checks the whole IOD; encode it with `derived.part10_bytes`. Meshes are written as Point Coordinates Data
(OF float32) and a Long Triangle Point Index List (OL uint32, 1-based), straight from numpy buffers, so a
million triangles cost one array copy each, never a Python loop per point.

Finite Volume and Manifold are derived from the mesh itself (PS3.3 C.27.1.1.4 and C.27.1.1.5):

* Finite Volume YES when the surface is closed (every edge shared by exactly two triangles) and
  consistently wound (the two triangles traverse their shared edge in opposite directions), so it has an
  inside and an outside; NO when it has a rim (an edge used by one triangle only: "not closed");
  UNKNOWN when it has no rim but is not a simple closed surface (an edge used by more than two triangles,
  or inconsistent winding). Geometric self-intersection is not tested (marching cubes does not make any).
* Manifold YES only when every point has a disc-like neighbourhood: every edge is shared by exactly two
  triangles and the triangles around each vertex form a single fan (no pinch vertex). A rim, an edge used
  by three or more triangles, or a pinch vertex makes it NO (a rim point has only a half-disc, so an open
  mesh is not a manifold in the standard's sense). Always determined, never UNKNOWN.

Where things go, because this IOD has fewer places than SEG: the algorithm (name, version, family) is
written in each Referenced Surface's Segment Surface Generation Algorithm Identification Sequence (the
segment item has no Segment Algorithm Name here); the source instances are listed both in the Common
Instance Reference module and in each Segment Surface Source Instance Sequence (dciodvfy wants both); the
label map value of a segment, which has no attribute of its own, is kept in Surface Comments ("label value
N in the source label map") for the reader. Surface Processing stays empty (Type 2: not known) unless the
caller says what was done (`processing`); note that dciodvfy (dicom3tools up to 2025) misspells that
condition and reports the Ratio and Algorithm that Surface Processing YES requires as "present when
condition unsatisfied": those two lines are its bug, not the object's.

Messages and log lines name attributes, segment numbers and labels, never patient names or IDs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from dicom_node import result_iod
from dicom_node.derived import (
    EXPERIMENTAL_DESCRIPTION,
    AlgorithmInfo,
    Code,
    Equipment,
    ResultSeries,
    SegmentInfo,
    SourceSeries,
    dicom_lab_to_srgb,
    srgb_to_dicom_lab,
)
from kernels.mesh import Mesh
from kernels.mesh_ops import mesh_topology

log = logging.getLogger(__name__)

SURFACE_SEGMENTATION_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.5"

_UINT32_MAX = 0xFFFFFFFF
_MAX_VALUE_BYTES = 0xFFFFFFFE  # largest even 32-bit value length
_LABEL_VALUE = re.compile(r"label value (\d+)")


class SurfaceSegmentationError(ValueError):
    """Bad input or a malformed object; the message names the attribute or segment at fault."""


_check = result_iod.InputChecks(SurfaceSegmentationError)
_fail = _check.fail


@dataclass(frozen=True)
class SurfaceProcessing:
    """How a surface was modified after generation (smoothing, decimation): Surface Processing YES.

    `ratio` is remaining points / original points (Surface Processing Ratio)."""

    description: str
    ratio: float
    algorithm: AlgorithmInfo


@dataclass(frozen=True)
class MeshFlags:
    """Finite Volume and Manifold values for one mesh, with the edge and vertex counts they rest on."""

    finite_volume: str
    manifold: str
    boundary_edges: int
    nonmanifold_edges: int
    misoriented_edges: int
    pinch_vertices: int


def mesh_flags(mesh: Mesh) -> MeshFlags:
    """Finite Volume / Manifold by the module docstring's rule, from the mesh's edge and fan topology."""
    if len(mesh.triangles) == 0:
        return MeshFlags("NO", "NO", 0, 0, 0, 0)
    topo = mesh_topology(mesh)
    if topo.oriented:
        finite = "YES"
    elif topo.boundary_edges > 0:
        finite = "NO"
    else:
        finite = "UNKNOWN"
    manifold = "YES" if topo.watertight and topo.pinch_vertices == 0 else "NO"
    return MeshFlags(finite, manifold, topo.boundary_edges, topo.nonmanifold_edges, topo.misoriented_edges,
                     topo.pinch_vertices)


# ---------------------------------------------------------------------------------------------- writer


def _check_mesh(mesh: Mesh, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices (N,3) finite, triangles (M,3) integer indices in range with three distinct corners, normals
    (N,3) finite or None. Returns them as little-endian float32 / int64 / float32 arrays."""
    if not isinstance(mesh, Mesh):
        raise _fail(f"{what}: expected a kernels.mesh.Mesh, got {type(mesh).__name__}")
    v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if v.ndim != 2 or v.shape[1] != 3:
        raise _fail(f"{what}: vertices must have shape (N, 3), got {v.shape}")
    if t.ndim != 2 or t.shape[1] != 3:
        raise _fail(f"{what}: triangles must have shape (M, 3), got {t.shape}")
    if len(t) == 0 or len(v) == 0:
        raise _fail(f"{what}: mesh is empty ({len(v)} vertices, {len(t)} triangles)")
    if not np.issubdtype(t.dtype, np.integer):
        raise _fail(f"{what}: triangles must be integer indices, got {t.dtype}")
    if len(v) > _UINT32_MAX or 12 * len(v) > _MAX_VALUE_BYTES or 12 * len(t) > _MAX_VALUE_BYTES:
        raise _fail(f"{what}: mesh too large for one DICOM value ({len(v)} points, {len(t)} triangles)")
    if not np.issubdtype(v.dtype, np.floating) and not np.issubdtype(v.dtype, np.integer):
        raise _fail(f"{what}: vertices must be numbers, got {v.dtype}")
    v32 = v.astype("<f4", copy=False)
    bad = ~np.isfinite(v32).all(axis=1)
    if bad.any():
        raise _fail(f"{what}: Point Coordinates Data has NaN or infinite coordinates "
                    f"({int(bad.sum())} points, first at index {int(np.argmax(bad))})")
    t64 = t.astype(np.int64, copy=False)
    lo, hi = int(t64.min()), int(t64.max())
    if lo < 0 or hi >= len(v):
        raise _fail(f"{what}: triangle indices out of range: min {lo}, max {hi}, for {len(v)} vertices "
                    "(0-based indices 0..N-1 expected)")
    degenerate = (t64[:, 0] == t64[:, 1]) | (t64[:, 1] == t64[:, 2]) | (t64[:, 0] == t64[:, 2])
    if degenerate.any():
        raise _fail(f"{what}: {int(degenerate.sum())} degenerate triangles (a repeated corner index), first "
                    f"at triangle {int(np.argmax(degenerate))}")
    n32 = None
    if mesh.normals is not None:
        n = np.asarray(mesh.normals)
        if n.shape != v.shape:
            raise _fail(f"{what}: normals must have the vertices' shape {v.shape}, got {n.shape}")
        n32 = n.astype("<f4", copy=False)
        if not np.isfinite(n32).all():
            raise _fail(f"{what}: Vector Coordinate Data (normals) has NaN or infinite values")
    return v32, t64, n32


def _check_segments(surfaces: Sequence[tuple[SegmentInfo, Mesh]]) -> None:
    if isinstance(surfaces, (str, bytes)) or not isinstance(surfaces, Sequence) or len(surfaces) == 0:
        raise _fail("surfaces: at least one (SegmentInfo, Mesh) pair is required "
                    "(Segment Sequence is Type 1)")
    for i, pair in enumerate(surfaces):
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], SegmentInfo):
            raise _fail(f"surfaces[{i}] must be a (SegmentInfo, Mesh) pair")
    for seg in _check.segments([seg for seg, _ in surfaces], "surfaces"):
        _check.text(seg.description, f"segment {seg.number} description (Segment Description)", 1024,
                    required=False, multi_line=True)


def _check_processing(proc: object, what: str) -> None:
    if not isinstance(proc, SurfaceProcessing):
        raise _fail(f"{what}: processing must be a SurfaceProcessing")
    ratio = proc.ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not np.isfinite(ratio) or ratio <= 0:
        raise _fail(f"{what}: Surface Processing Ratio must be a positive number, got {ratio!r}")
    _check.text(proc.description, f"{what} Surface Processing Description", 1024, required=False)
    _check.algorithm(proc.algorithm, f"{what} processing.algorithm")


class SurfaceSegmentation(Dataset):
    """A Surface Segmentation instance (PS3.3 A.57): one surface per segment, all in the source's Frame of
    Reference. Constructing it validates every input and builds every module; the result is a pydicom
    Dataset (encode it with `derived.part10_bytes`). `surface_flags` holds the Finite Volume / Manifold
    evidence per segment.

    Raises SurfaceSegmentationError naming the attribute or segment for bad input.
    """

    def __init__(
        self,
        source: SourceSeries,
        series: ResultSeries,
        surfaces: Sequence[tuple[SegmentInfo, Mesh]],
        algorithm: AlgorithmInfo,
        equipment: Equipment,
        *,
        sop_instance_uid: str | None = None,
        content_datetime: datetime | None = None,
        opacity: float = 1.0,
        processing: Mapping[int, SurfaceProcessing] | None = None,
    ) -> None:
        super().__init__()
        _check.source(source, frame_of_reference=True)
        _check_segments(surfaces)
        _check.series(series, source.series_instance_uid)
        _check.algorithm(algorithm)
        _check.equipment(equipment)
        if not isinstance(opacity, (int, float)) or isinstance(opacity, bool) or not 0.0 <= opacity <= 1.0:
            raise _fail(f"Recommended Presentation Opacity must be within 0.0..1.0, got {opacity!r}")
        processing = dict(processing or {})
        unknown = sorted(set(processing) - set(range(1, len(surfaces) + 1)))
        if unknown:
            raise _fail(f"processing names segments {unknown} that are not in surfaces")
        for number, proc in processing.items():
            _check_processing(proc, f"segment {number}")
        sop_uid = _check.uid(sop_instance_uid or generate_uid(), "sop_instance_uid (SOP Instance UID)")
        when = _check.when(content_datetime)

        checked = [_check_mesh(mesh, f"segment {seg.number} ({seg.label!r})") for seg, mesh in surfaces]
        self._own_text: list[tuple[str, str]] = []
        result_iod.copy_patient_and_study(source, self)
        self._series_and_equipment(source, series, equipment, sop_uid, when)
        self._surfaces(source, surfaces, checked, algorithm, float(opacity), processing)
        # Common Instance Reference
        self.ReferencedSeriesSequence = result_iod.referenced_series_sequence(source)
        self._character_set(source)
        log.info(
            "event=surface_seg_built sop_instance_uid=%s segments=%d points=%d triangles=%d",
            sop_uid, len(surfaces), sum(len(c[0]) for c in checked), sum(len(c[1]) for c in checked),
        )

    # -- modules ---------------------------------------------------------------------------------------

    def _own(self, value: str, attr: str) -> str:
        """Remember text we write ourselves, to check it against the Specific Character Set at the end."""
        self._own_text.append((attr, value))
        return value

    def _series_and_equipment(self, source: SourceSeries, series: ResultSeries, equipment: Equipment,
                              sop_uid: str, when: datetime) -> None:
        # SOP Common, General Series + Segmentation Series, and of Surface Segmentation the Instance Number
        # and Content Date and Time
        result_iod.write_sop_and_series(self, SURFACE_SEGMENTATION_SOP_CLASS_UID, sop_uid, series, when)
        self._own(series.series_description, "Series Description")
        # Frame of Reference
        self.FrameOfReferenceUID = source.frame_of_reference_uid
        result_iod.copy_attribute(source.header, self, "PositionReferenceIndicator", type2=True)
        # General Equipment + Enhanced General Equipment (all Type 1 there)
        for field, kw, name in result_iod.EQUIPMENT_ATTRIBUTES:
            setattr(self, kw, self._own(getattr(equipment, field), f"equipment.{field} ({name})"))
        # Surface Segmentation: Content Identification
        self.ContentLabel = series.content_label
        self.ContentDescription = self._own(series.content_description, "Content Description")
        self.ContentCreatorName = None

    def _surfaces(self, source: SourceSeries, surfaces: Sequence[tuple[SegmentInfo, Mesh]],
                  checked: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], algorithm: AlgorithmInfo,
                  opacity: float, processing: dict[int, SurfaceProcessing]) -> None:
        algorithm_item = self._algorithm_item(algorithm, "algorithm")
        source_items = result_iod.source_instance_items(source)
        segment_items, surface_items = [], []
        self.surface_flags: list[MeshFlags] = []
        for (seg, _), (v32, t64, n32) in zip(surfaces, checked, strict=True):
            what = f"segment {seg.number}"
            category = result_iod.code_item(seg.category)
            prop_type = result_iod.code_item(seg.type)
            self._own(category.CodeMeaning, f"{what} Segmented Property Category Code Meaning")
            self._own(prop_type.CodeMeaning, f"{what} Segmented Property Type Code Meaning")
            lab = srgb_to_dicom_lab(seg.color_rgb)
            flags = mesh_flags(Mesh(v32, t64, None))
            self.surface_flags.append(flags)

            item = Dataset()
            item.SegmentNumber = seg.number
            item.SegmentLabel = self._own(seg.label, f"{what} Segment Label")
            if seg.description:
                item.SegmentDescription = self._own(seg.description, f"{what} Segment Description")
            item.SegmentAlgorithmType = "AUTOMATIC"
            item.SegmentedPropertyCategoryCodeSequence = DicomSequence([category])
            item.SegmentedPropertyTypeCodeSequence = DicomSequence([prop_type])
            if seg.tracking_id:
                from dicom_node.seg import tracking_uid  # one derivation for every object (SEG too)

                item.TrackingID = self._own(seg.tracking_id, f"{what} Tracking ID")
                item.TrackingUID = tracking_uid(source.series_instance_uid, seg.tracking_id)
            item.SurfaceCount = 1
            ref = Dataset()
            ref.ReferencedSurfaceNumber = seg.number
            ref.SegmentSurfaceGenerationAlgorithmIdentificationSequence = DicomSequence(
                [deepcopy(algorithm_item)])
            ref.SegmentSurfaceSourceInstanceSequence = DicomSequence(deepcopy(source_items))
            item.ReferencedSurfaceSequence = DicomSequence([ref])
            segment_items.append(item)

            surf = Dataset()
            surf.SurfaceNumber = seg.number
            surf.SurfaceComments = f"label value {seg.label_value} in the source label map"
            surf.SegmentedPropertyCategoryCodeSequence = DicomSequence([deepcopy(category)])
            surf.SegmentedPropertyTypeCodeSequence = DicomSequence([deepcopy(prop_type)])
            proc = processing.get(seg.number)
            if proc is None:
                surf.SurfaceProcessing = None  # Type 2: the writer was not told, so not claimed either way
            else:
                self._processing(surf, proc, what)
            surf.RecommendedDisplayGrayscaleValue = lab[0]  # L* as a P-Value: the same lightness
            surf.RecommendedDisplayCIELabValue = list(lab)
            surf.RecommendedPresentationOpacity = opacity
            surf.RecommendedPresentationType = "SURFACE"
            surf.FiniteVolume = flags.finite_volume
            surf.Manifold = flags.manifold

            points = Dataset()
            points.NumberOfSurfacePoints = len(v32)
            points.PointCoordinatesData = v32.tobytes()
            points.PointsBoundingBoxCoordinates = [float(x) for x in (*v32.min(axis=0), *v32.max(axis=0))]
            surf.SurfacePointsSequence = DicomSequence([points])
            normals = []
            if n32 is not None:
                vec = Dataset()
                vec.NumberOfVectors = len(n32)
                vec.VectorDimensionality = 3
                vec.VectorCoordinateData = n32.tobytes()
                normals.append(vec)
            surf.SurfacePointsNormalsSequence = DicomSequence(normals)
            prim = Dataset()
            prim.LongVertexPointIndexList = b""
            prim.LongEdgePointIndexList = b""
            prim.LongTrianglePointIndexList = (t64.astype("<u4") + np.uint32(1)).tobytes()  # 1-based on disk
            prim.TriangleStripSequence = DicomSequence([])
            prim.TriangleFanSequence = DicomSequence([])
            prim.LineSequence = DicomSequence([])
            prim.FacetSequence = DicomSequence([])
            surf.SurfaceMeshPrimitivesSequence = DicomSequence([prim])
            surface_items.append(surf)

        self.SegmentSequence = DicomSequence(segment_items)
        self.NumberOfSurfaces = len(surface_items)
        self.SurfaceSequence = DicomSequence(surface_items)

    def _algorithm_item(self, algorithm: AlgorithmInfo, attr: str) -> Dataset:
        """Algorithm Identification Macro (PS3.3 Table 10-19): family, name and version, all Type 1."""
        item = Dataset()
        family = result_iod.code_item(algorithm.family)
        self._own(family.CodeMeaning, f"{attr}.family code meaning")
        item.AlgorithmFamilyCodeSequence = DicomSequence([family])
        item.AlgorithmName = self._own(algorithm.name, "Algorithm Name")
        item.AlgorithmVersion = self._own(algorithm.version, "Algorithm Version")
        return item

    def _processing(self, surf: Dataset, proc: SurfaceProcessing, what: str) -> None:
        surf.SurfaceProcessing = "YES"
        surf.SurfaceProcessingRatio = float(proc.ratio)
        surf.SurfaceProcessingDescription = self._own(proc.description,
                                                      f"{what} Surface Processing Description")
        surf.SurfaceProcessingAlgorithmIdentificationSequence = DicomSequence(
            [self._algorithm_item(proc.algorithm, f"{what} processing.algorithm")])

    def _character_set(self, source: SourceSeries) -> None:
        """Copy the source's Specific Character Set; our own non-ASCII text needs one that can encode it."""
        charset = source.header.get("SpecificCharacterSet")
        own = [(attr, value) for attr, value in self._own_text if not value.isascii()]
        del self._own_text
        if charset:
            self.SpecificCharacterSet = deepcopy(charset)
            encodings = convert_encodings(charset)
            for attr, value in own:
                if not any(_encodes(value, enc) for enc in encodings):
                    raise _fail(f"{attr} has characters that the source's Specific Character Set "
                                f"{list(encodings)} cannot encode")
        elif own:
            self.SpecificCharacterSet = "ISO_IR 192"


def _encodes(value: str, encoding: str) -> bool:
    try:
        value.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


# ------------------------------------------------------------------------------------------- validator


def _u32(data: object) -> np.ndarray:
    raw = data if isinstance(data, (bytes, bytearray)) else b""
    return np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<u4")


def _f32(data: object) -> np.ndarray:
    raw = data if isinstance(data, (bytes, bytearray)) else b""
    return np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<f4")


def _check_index_list(problems: list[str], where: str, data: object, n_points: int, group: int) -> None:
    if data is None:
        return
    if len(data) % 4:
        problems.append(f"{where}: value length {len(data)} is not a multiple of 4 bytes")
    idx = _u32(data)
    if group > 1 and len(idx) % group:
        problems.append(f"{where}: {len(idx)} indices, not a multiple of {group}")
    if len(idx):
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 1 or hi > n_points:
            bad = int(np.count_nonzero((idx < 1) | (idx > n_points)))
            problems.append(f"{where}: {bad} indices outside 1..{n_points} (Number of Surface Points; "
                            f"indices are 1-based), min {lo}, max {hi}")


def _check_extent(problems: list[str], where: str, points: np.ndarray,
                  extent: tuple[np.ndarray, Sequence[int]]) -> None:
    affine, shape_zyx = extent
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    idx = points.astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
    upper = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]], dtype=np.float64)  # x, y, z voxel counts
    eps = 1e-3
    outside = ((idx < -1.0 - eps) | (idx > upper + eps)).any(axis=1)  # centres 0..n-1, one voxel margin
    if outside.any():
        worst = int(np.argmax(np.maximum(-1.0 - idx, idx - upper).max(axis=1)))
        problems.append(
            f"{where}: {int(outside.sum())} of {len(points)} points lie outside the source volume's extent "
            f"(one voxel margin), e.g. point {worst + 1} at voxel index (x, y, z) "
            f"{np.round(idx[worst], 2).tolist()} for a grid of {upper.astype(int).tolist()}"
        )


def _check_surface(problems: list[str], i: int, surf: Dataset,
                   extent: tuple[np.ndarray, Sequence[int]] | None) -> None:
    """One Surface Sequence item: numbering, point and normal counts, index lists, finiteness, extent."""
    number = surf.get("SurfaceNumber")
    if number != i:
        problems.append(f"Surface Sequence item {i}: Surface Number is {number}, expected {i} "
                        "(start at 1, rise by 1)")
    where = f"surface {number if number is not None else f'item {i}'}"
    points_seq = surf.get("SurfacePointsSequence") or []
    if len(points_seq) != 1:
        problems.append(f"{where}: Surface Points Sequence has {len(points_seq)} items, expected 1")
        return
    n_points = int(points_seq[0].get("NumberOfSurfacePoints") or 0)
    data = points_seq[0].get("PointCoordinatesData")
    coords = _f32(data)
    if data is None or len(data) != 12 * n_points:
        problems.append(f"{where}: Point Coordinates Data holds {len(coords)} values, expected "
                        f"3 x Number of Surface Points = {3 * n_points}")
    points = coords[: len(coords) // 3 * 3].reshape(-1, 3)
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        problems.append(f"{where}: {int((~finite).sum())} points have NaN or infinite coordinates")
    if extent is not None and len(points):
        _check_extent(problems, where, points[finite], extent)
    normals_seq = surf.get("SurfacePointsNormalsSequence") or []
    if len(normals_seq) > 1:
        problems.append(f"{where}: Surface Points Normals Sequence has {len(normals_seq)} items, at most 1")
    for vec in normals_seq:
        n_vec = vec.get("NumberOfVectors")
        if n_vec != n_points:
            problems.append(f"{where}: Number of Vectors (normals) is {n_vec}, but Number of Surface "
                            f"Points is {n_points}")
        if vec.get("VectorDimensionality") != 3:
            problems.append(f"{where}: Vector Dimensionality is {vec.get('VectorDimensionality')}, "
                            "expected 3")
        vdata = vec.get("VectorCoordinateData")
        if vdata is None or len(vdata) != 12 * (n_vec or 0):
            problems.append(f"{where}: Vector Coordinate Data length does not match Number of Vectors")
    prim_seq = surf.get("SurfaceMeshPrimitivesSequence") or []
    if len(prim_seq) != 1:
        problems.append(f"{where}: Surface Mesh Primitives Sequence has {len(prim_seq)} items, expected 1")
        return
    prim = prim_seq[0]
    for kw, name, group in (("LongTrianglePointIndexList", "Long Triangle Point Index List", 3),
                            ("LongEdgePointIndexList", "Long Edge Point Index List", 2),
                            ("LongVertexPointIndexList", "Long Vertex Point Index List", 1)):
        _check_index_list(problems, f"{where} {name}", prim.get(kw), n_points, group)
    for seq_kw in ("TriangleStripSequence", "TriangleFanSequence", "LineSequence", "FacetSequence"):
        for k, item in enumerate(prim.get(seq_kw) or [], start=1):
            _check_index_list(problems, f"{where} {seq_kw} item {k} Long Primitive Point Index List",
                              item.get("LongPrimitivePointIndexList"), n_points, 1)


def validate_surface_segmentation(ds: Dataset,
                                  extent: tuple[np.ndarray, Sequence[int]] | None = None) -> list[str]:
    """What dciodvfy does not check: surface counts and numbering, references between segments and
    surfaces, index list lengths and 1-based ranges, normal counts, finite coordinates, and (with
    `extent` = (affine 4x4 voxel index (x, y, z, 1) -> LPS mm, shape (z, y, x)) of the source volume)
    that every point lies within the volume plus one voxel. Returns the problems found; empty when fine."""
    problems: list[str] = []
    if str(ds.get("SOPClassUID", "")) != SURFACE_SEGMENTATION_SOP_CLASS_UID:
        problems.append(f"SOP Class UID is {ds.get('SOPClassUID')!r}, not Surface Segmentation Storage")
    surfaces = ds.get("SurfaceSequence") or []
    if not surfaces:
        problems.append("Surface Sequence is missing or empty")
    n_declared = ds.get("NumberOfSurfaces")
    if n_declared != len(surfaces):
        problems.append(f"Number of Surfaces is {n_declared}, but Surface Sequence has {len(surfaces)} items")
    for i, surf in enumerate(surfaces, start=1):
        _check_surface(problems, i, surf, extent)
    known = {s.get("SurfaceNumber") for s in surfaces} - {None}
    segments = ds.get("SegmentSequence") or []
    if not segments:
        problems.append("Segment Sequence is missing or empty")
    for i, seg in enumerate(segments, start=1):
        number = seg.get("SegmentNumber")
        if number != i:
            problems.append(f"Segment Sequence item {i}: Segment Number is {number}, expected {i}")
        refs = seg.get("ReferencedSurfaceSequence") or []
        if seg.get("SurfaceCount") != len(refs):
            problems.append(f"segment {number}: Surface Count is {seg.get('SurfaceCount')}, but Referenced "
                            f"Surface Sequence has {len(refs)} items")
        for ref in refs:
            target = ref.get("ReferencedSurfaceNumber")
            if target not in known:
                problems.append(f"segment {number}: Referenced Surface Number {target} is not a Surface "
                                "Number in Surface Sequence")
    return problems


# ---------------------------------------------------------------------------------------------- reader


def _read_code(item_seq: object, what: str) -> Code:
    if not item_seq:
        raise _fail(f"{what} is missing")
    item = item_seq[0]
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    return Code(str(value), str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeMeaning", "")))


def read_surface_segmentation(path_or_dataset: str | Path | Dataset) -> list[tuple[SegmentInfo, Mesh]]:
    """The segments and their meshes (0-based triangles; several surfaces of one segment are merged).

    Raises SurfaceSegmentationError when `validate_surface_segmentation` finds problems: a reader should
    never hand out indices it has not checked."""
    ds = path_or_dataset if isinstance(path_or_dataset, Dataset) else pydicom.dcmread(path_or_dataset)
    problems = validate_surface_segmentation(ds)
    if problems:
        raise _fail("not a well-formed Surface Segmentation: " + "; ".join(problems))
    by_number = {int(s.SurfaceNumber): s for s in ds.SurfaceSequence}
    out = []
    for seg in ds.SegmentSequence:
        number = int(seg.SegmentNumber)
        vertices, triangles, normals, offset = [], [], [], 0
        label_value, lab = number, None
        for ref in seg.ReferencedSurfaceSequence:
            surf = by_number[int(ref.ReferencedSurfaceNumber)]
            pts_item = surf.SurfacePointsSequence[0]
            v = _f32(pts_item.PointCoordinatesData).reshape(-1, 3).copy()
            t = _u32(surf.SurfaceMeshPrimitivesSequence[0].get("LongTrianglePointIndexList")).reshape(-1, 3)
            vertices.append(v)
            triangles.append((t.astype(np.int64) - 1 + offset).astype(np.uint32))
            vec_seq = surf.get("SurfacePointsNormalsSequence") or []
            normals.append(_f32(vec_seq[0].VectorCoordinateData).reshape(-1, 3).copy() if vec_seq else None)
            offset += len(v)
            if lab is None and "RecommendedDisplayCIELabValue" in surf:
                lab = [int(x) for x in surf.RecommendedDisplayCIELabValue]
            match = _LABEL_VALUE.search(str(surf.get("SurfaceComments", "")))
            if match:
                label_value = int(match.group(1))
        has_normals = all(n is not None for n in normals)
        mesh = Mesh(
            np.concatenate(vertices) if vertices else np.zeros((0, 3), np.float32),
            np.concatenate(triangles) if triangles else np.zeros((0, 3), np.uint32),
            np.concatenate(normals) if normals and has_normals else None,
        )
        description = str(seg.get("SegmentDescription", "") or "")
        info = SegmentInfo(
            number=number,
            label_value=label_value,
            label=str(seg.get("SegmentLabel", "")),
            category=_read_code(seg.get("SegmentedPropertyCategoryCodeSequence"),
                                f"segment {number} Segmented Property Category Code Sequence"),
            type=_read_code(seg.get("SegmentedPropertyTypeCodeSequence"),
                            f"segment {number} Segmented Property Type Code Sequence"),
            color_rgb=dicom_lab_to_srgb(lab) if lab else (128, 128, 128),
            tracking_id=str(seg.get("TrackingID", "") or ""),
            description=description,
            experimental=description.startswith(EXPERIMENTAL_DESCRIPTION),
        )
        out.append((info, mesh))
    return out
