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
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RE_VALID_UID, generate_uid

from dicom_node.derived import (
    AlgorithmInfo,
    Code,
    Equipment,
    ResultSeries,
    SegmentInfo,
    SourceSeries,
    dcm_meaning_conflict,
    dicom_lab_to_srgb,
    header_to_copy,
    srgb_to_dicom_lab,
)
from kernels.mesh import Mesh
from kernels.mesh_ops import mesh_topology

log = logging.getLogger(__name__)

SURFACE_SEGMENTATION_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.5"

# Attributes copied from the source header when present (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.2,
# C.7.2.3). The Type 2 ones are written empty when the source lacks them.
PATIENT_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_TYPE2 = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_COPIED = (
    # Patient
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID", "PatientBirthTime",
    "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup", "EthnicGroupCodeSequence",
    "PatientComments", "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "QualityControlSubject", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "ReferencedPatientSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study
    "StudyDescription", "IssuerOfAccessionNumberSequence", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingServiceCodeSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "PatientSizeCodeSequence", "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus",
    "LastMenstrualDate", "PatientState", "Occupation", "AdditionalPatientHistory", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "ConsentForClinicalTrialUseSequence",
)

_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UINT32_MAX = 0xFFFFFFFF
_MAX_VALUE_BYTES = 0xFFFFFFFE  # largest even 32-bit value length
_LABEL_VALUE = re.compile(r"label value (\d+)")


class SurfaceSegmentationError(ValueError):
    """Bad input or a malformed object; the message names the attribute or segment at fault."""


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


def _fail(message: str) -> SurfaceSegmentationError:
    return SurfaceSegmentationError(message)


def _uid(value: object, attr: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not RE_VALID_UID.match(value):
        raise _fail(f"{attr} is missing or not a valid UID")
    return value


def _text(value: object, attr: str, max_len: int, *, required: bool = True) -> str:
    """A LO/SH/CS-style single value: a string, no backslash or control characters, within its VR length."""
    if not isinstance(value, str):
        raise _fail(f"{attr} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _fail(f"{attr} is empty (Type 1)")
    if len(value) > max_len:
        raise _fail(f"{attr} is {len(value)} characters long, more than {max_len}")
    if "\\" in value or any(ord(ch) < 32 for ch in value):
        raise _fail(f"{attr} contains a backslash or a control character")
    return value


def _code_item(code: Code, attr: str) -> Dataset:
    """Code Sequence Macro item; values over 16 characters go to Long Code Value, URNs to URN Code Value.

    DCM codes must mean what PS3.16 says they mean: a wrong value under a plausible meaning is the kind of
    error no validator catches and every reader believes."""
    if not isinstance(code, Code):
        raise _fail(f"{attr} must be a Code, got {type(code).__name__}")
    known = dcm_meaning_conflict(code)
    if known is not None:
        raise _fail(f"{attr}: DCM code {code.value} means {known!r} (PS3.16), not {code.meaning!r}")
    item = Dataset()
    value = code.value
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{attr} code value is empty")
    if value.startswith(("urn:", "http://", "https://")):
        item.URNCodeValue = value
    elif len(value) > 16:
        item.LongCodeValue = _text(value, f"{attr} code value", 64)
    else:
        item.CodeValue = _text(value, f"{attr} code value", 16)
    item.CodingSchemeDesignator = _text(code.scheme, f"{attr} coding scheme designator", 16)
    item.CodeMeaning = _text(code.meaning, f"{attr} code meaning", 64)
    return item


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
    for i, pair in enumerate(surfaces, start=1):
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], SegmentInfo):
            raise _fail(f"surfaces[{i - 1}] must be a (SegmentInfo, Mesh) pair")
        seg = pair[0]
        if isinstance(seg.number, bool) or not isinstance(seg.number, int) or seg.number != i:
            raise _fail(f"Segment Number of surfaces[{i - 1}] is {seg.number!r}: segment numbers must be "
                        "1, 2, ... n in order")
        if isinstance(seg.label_value, bool) or not isinstance(seg.label_value, int) or seg.label_value < 0:
            raise _fail(f"segment {i}: label_value must be a non-negative integer, got {seg.label_value!r}")
        rgb = seg.color_rgb
        if (not isinstance(rgb, (tuple, list)) or len(rgb) != 3
                or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c <= 255
                       for c in rgb)):
            raise _fail(f"segment {i}: color_rgb must be three integers 0-255 (Recommended Display CIELab "
                        f"Value), got {rgb!r}")
        if not isinstance(seg.tracking_id, str):
            raise _fail(f"segment {i}: tracking_id must be a string")


def _check_source(source: SourceSeries) -> None:
    if not isinstance(source, SourceSeries):
        raise _fail(f"source must be a SourceSeries, got {type(source).__name__}")
    _uid(source.study_instance_uid, "source.study_instance_uid (Study Instance UID)")
    _uid(source.series_instance_uid, "source.series_instance_uid (Series Instance UID)")
    _uid(source.frame_of_reference_uid, "source.frame_of_reference_uid (Frame of Reference UID)")
    if not isinstance(source.header, Dataset):
        raise _fail("source.header must be a pydicom Dataset")
    header_study = source.header.get("StudyInstanceUID")
    if header_study and str(header_study) != source.study_instance_uid:
        raise _fail("source.study_instance_uid differs from Study Instance UID in source.header")
    if not source.instances:
        raise _fail("source.instances is empty: Referenced Instance Sequence and Segment Surface Source "
                    "Instance Sequence need the source instances")
    for k, ref in enumerate(source.instances):
        _uid(getattr(ref, "sop_class_uid", None),
             f"source.instances[{k}].sop_class_uid (Referenced SOP Class UID)")
        _uid(getattr(ref, "sop_instance_uid", None),
             f"source.instances[{k}].sop_instance_uid (Referenced SOP Instance UID)")
        frame = ref.frame_number
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
            raise _fail(f"source.instances[{k}].frame_number must be None or an integer >= 1, got {frame!r}")


def _copy_from(header: Dataset, target: Dataset, keyword: str, *, type2: bool) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:  # not in this pydicom's dictionary
        return
    if tag in header:
        target.add(deepcopy(header[tag]))
    elif type2:
        setattr(target, keyword, None)


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
        _check_source(source)
        _check_segments(surfaces)
        if not isinstance(series, ResultSeries):
            raise _fail(f"series must be a ResultSeries, got {type(series).__name__}")
        if not isinstance(algorithm, AlgorithmInfo):
            raise _fail(f"algorithm must be an AlgorithmInfo, got {type(algorithm).__name__}")
        if not isinstance(equipment, Equipment):
            raise _fail(f"equipment must be an Equipment, got {type(equipment).__name__}")
        if not isinstance(opacity, (int, float)) or isinstance(opacity, bool) or not 0.0 <= opacity <= 1.0:
            raise _fail(f"Recommended Presentation Opacity must be within 0.0..1.0, got {opacity!r}")
        processing = dict(processing or {})
        unknown = sorted(set(processing) - set(range(1, len(surfaces) + 1)))
        if unknown:
            raise _fail(f"processing names segments {unknown} that are not in surfaces")
        sop_uid = _uid(sop_instance_uid or generate_uid(), "sop_instance_uid (SOP Instance UID)")
        series_uid = _uid(series.series_instance_uid, "series.series_instance_uid (Series Instance UID)")
        if series_uid == source.series_instance_uid:
            raise _fail("series.series_instance_uid equals the source's Series Instance UID: a result is a "
                        "new series")
        if isinstance(series.series_number, bool) or not isinstance(series.series_number, int) \
                or not 0 <= series.series_number <= 2**31 - 1:
            raise _fail(f"series.series_number (Series Number) must be a non-negative integer, "
                        f"got {series.series_number!r}")
        if isinstance(series.instance_number, bool) or not isinstance(series.instance_number, int) \
                or not 0 <= series.instance_number <= 2**31 - 1:
            raise _fail(f"series.instance_number (Instance Number) must be a non-negative integer, "
                        f"got {series.instance_number!r}")
        if not isinstance(series.content_label, str) or not _CS.match(series.content_label):
            raise _fail("series.content_label (Content Label, CS) must be 1-16 upper-case letters, digits, "
                        f"underscore or space, got {series.content_label!r}")
        when = content_datetime or datetime.now()
        if not isinstance(when, datetime):
            raise _fail(f"content_datetime must be a datetime, got {type(when).__name__}")

        checked = [_check_mesh(mesh, f"segment {seg.number} ({seg.label!r})") for seg, mesh in surfaces]
        self._own_text: list[tuple[str, str]] = []
        self._patient_and_study(source)
        self._series_and_equipment(source, series, equipment, sop_uid, when)
        self._surfaces(source, surfaces, checked, algorithm, float(opacity), processing)
        self._references(source)
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

    def _patient_and_study(self, source: SourceSeries) -> None:
        header = header_to_copy(source.header, PATIENT_TYPE2 + STUDY_TYPE2)
        for kw in PATIENT_TYPE2 + STUDY_TYPE2:
            _copy_from(header, self, kw, type2=True)
        for kw in _COPIED:
            _copy_from(header, self, kw, type2=False)
        self.StudyInstanceUID = source.study_instance_uid

    def _series_and_equipment(self, source: SourceSeries, series: ResultSeries, equipment: Equipment,
                              sop_uid: str, when: datetime) -> None:
        date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
        # SOP Common
        self.SOPClassUID = SURFACE_SEGMENTATION_SOP_CLASS_UID
        self.SOPInstanceUID = sop_uid
        self.InstanceCreationDate, self.InstanceCreationTime = date, time
        # General Series + Segmentation Series
        self.Modality = "SEG"
        self.SeriesInstanceUID = series.series_instance_uid
        self.SeriesNumber = series.series_number
        self.SeriesDescription = self._own(_text(series.series_description, "series.series_description "
                                                 "(Series Description)", 64, required=False),
                                           "Series Description")
        self.SeriesDate, self.SeriesTime = date, time
        # Frame of Reference
        self.FrameOfReferenceUID = source.frame_of_reference_uid
        _copy_from(source.header, self, "PositionReferenceIndicator", type2=True)
        # General Equipment + Enhanced General Equipment (all Type 1 there)
        for kw, value, attr in (
            ("Manufacturer", equipment.manufacturer, "equipment.manufacturer (Manufacturer)"),
            ("ManufacturerModelName", equipment.model_name,
             "equipment.model_name (Manufacturer's Model Name)"),
            ("DeviceSerialNumber", equipment.device_serial_number,
             "equipment.device_serial_number (Device Serial Number)"),
            ("SoftwareVersions", equipment.software_version,
             "equipment.software_version (Software Versions)"),
        ):
            setattr(self, kw, self._own(_text(value, attr, 64), attr))
        # Surface Segmentation: Content Identification, date and time
        self.InstanceNumber = series.instance_number
        self.ContentLabel = series.content_label
        self.ContentDescription = self._own(
            _text(series.content_description, "series.content_description (Content Description)", 64,
                  required=False), "Content Description")
        self.ContentCreatorName = None
        self.ContentDate, self.ContentTime = date, time

    def _surfaces(self, source: SourceSeries, surfaces: Sequence[tuple[SegmentInfo, Mesh]],
                  checked: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], algorithm: AlgorithmInfo,
                  opacity: float, processing: dict[int, SurfaceProcessing]) -> None:
        algorithm_item = self._algorithm_item(algorithm, "algorithm")
        source_items = _source_instance_items(source)
        segment_items, surface_items = [], []
        self.surface_flags: list[MeshFlags] = []
        for (seg, _), (v32, t64, n32) in zip(surfaces, checked, strict=True):
            what = f"segment {seg.number}"
            category = _code_item(seg.category, f"{what} Segmented Property Category Code Sequence")
            prop_type = _code_item(seg.type, f"{what} Segmented Property Type Code Sequence")
            self._own(category.CodeMeaning, f"{what} Segmented Property Category Code Meaning")
            self._own(prop_type.CodeMeaning, f"{what} Segmented Property Type Code Meaning")
            lab = srgb_to_dicom_lab(seg.color_rgb)
            flags = mesh_flags(Mesh(v32, t64, None))
            self.surface_flags.append(flags)

            item = Dataset()
            item.SegmentNumber = seg.number
            item.SegmentLabel = self._own(_text(seg.label, f"{what} Segment Label", 64),
                                          f"{what} Segment Label")
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
        family = _code_item(algorithm.family, f"{attr}.family")
        self._own(family.CodeMeaning, f"{attr}.family code meaning")
        item.AlgorithmFamilyCodeSequence = DicomSequence([family])
        item.AlgorithmName = self._own(_text(algorithm.name, f"{attr}.name (Algorithm Name)", 64),
                                       "Algorithm Name")
        item.AlgorithmVersion = self._own(_text(algorithm.version, f"{attr}.version (Algorithm Version)", 64),
                                          "Algorithm Version")
        return item

    def _processing(self, surf: Dataset, proc: SurfaceProcessing, what: str) -> None:
        if not isinstance(proc, SurfaceProcessing):
            raise _fail(f"{what}: processing must be a SurfaceProcessing")
        ratio = proc.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not np.isfinite(ratio) \
                or ratio <= 0:
            raise _fail(f"{what}: Surface Processing Ratio must be a positive number, got {ratio!r}")
        surf.SurfaceProcessing = "YES"
        surf.SurfaceProcessingRatio = float(ratio)
        surf.SurfaceProcessingDescription = self._own(
            _text(proc.description, f"{what} Surface Processing Description", 1024, required=False),
            f"{what} Surface Processing Description")
        surf.SurfaceProcessingAlgorithmIdentificationSequence = DicomSequence(
            [self._algorithm_item(proc.algorithm, f"{what} processing.algorithm")])

    def _references(self, source: SourceSeries) -> None:
        """Common Instance Reference: the source series and its instances (same study)."""
        seen: dict[str, str] = {}
        for ref in source.instances:
            seen.setdefault(ref.sop_instance_uid, ref.sop_class_uid)
        instances = []
        for sop_instance, sop_class in seen.items():
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            instances.append(item)
        series_item = Dataset()
        series_item.SeriesInstanceUID = source.series_instance_uid
        series_item.ReferencedInstanceSequence = DicomSequence(instances)
        self.ReferencedSeriesSequence = DicomSequence([series_item])

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


def _source_instance_items(source: SourceSeries) -> list[Dataset]:
    """Image SOP Instance Reference Macro items, one per source instance; multi-frame sources list the
    frames the volume used (Referenced Frame Number)."""
    frames: dict[str, tuple[str, list[int]]] = {}
    for ref in source.instances:
        entry = frames.setdefault(ref.sop_instance_uid, (ref.sop_class_uid, []))
        if ref.frame_number is not None:
            entry[1].append(ref.frame_number)
    items = []
    for sop_instance, (sop_class, numbers) in frames.items():
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        if numbers:
            item.ReferencedFrameNumber = sorted(set(numbers))
        items.append(item)
    return items


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
        )
        out.append((info, mesh))
    return out
