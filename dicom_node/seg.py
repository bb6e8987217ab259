"""Binary DICOM Segmentation (SEG, 1.2.840.10008.5.1.4.1.1.66.4) of a label map, written with highdicom.

Every result goes out as a SEG beside the Surface Segmentation because ordinary viewers (OHIF, Slicer,
dcmqi, highdicom) read SEG and not surfaces. One BINARY SEG holds every segment; a frame is written only
where a segment has voxels (`omit_empty_frames`), so a small structure costs only the slices it spans.

Grid and references
-------------------
* Regular stack (the volume holds the source slices as they are): one frame per source slice and
  segment, on the source grid (rows, columns, pixel spacing, orientation and Image Position of the
  source), and every frame's Derivation Image Sequence names the source instance (or Enhanced CT frame)
  it lies on, with Spatial Locations Preserved YES. Label slice k must be the source frame at
  ``affine @ (0, 0, k, 1)``: this is checked against every source header, and a source list in another
  order is refused, so a frame can never be attributed to the wrong slice.
* Resampled stack (gantry tilt or uneven spacing; `Volume.resampled_from` set): the label map lives on
  the regular grid the volume was resampled to, which no source slice shares. PS3.3 A.51.5.1: with a
  Frame of Reference the segment is specified in that coordinate system by the Pixel Measures, Plane
  Position (Patient) and Plane Orientation (Patient) functional groups, so the segmentation frames need
  not have the size or resolution of the images it was derived from. The SEG is therefore written on
  the volume grid, with geometry taken from `affine`, in the source Frame of Reference.

Release note (tilted or unevenly spaced CT): "For a gantry-tilted or unevenly spaced CT series the DICOM
SEG lies on the regular grid the node resampled the series to: image planes parallel to the source
images with the source pixel size (rows and columns enlarged to cover every shifted slice), slices
perpendicular to those planes at the source slice spacing (the smallest gap where spacing is uneven), in
the same Frame of Reference as the CT. Every frame carries its Image Position (Patient), Image
Orientation (Patient) and Pixel Spacing, and viewers place it by that geometry. The SEG references the
source series and all its instances (Referenced Series Sequence, Source Image Sequence) and its
Derivation Description says it was resampled, but no frame claims to be derived from a particular source
slice (each frame's Derivation Image Sequence is present and empty): a resampled frame generally lies
between two source slices, and on a tilted series it is shifted in-plane against every one of them, so a
per-slice reference would lead a viewer that overlays by reference to draw it in the wrong place."

Copied from the source
----------------------
Patient and study attributes come from the first source header, as highdicom copies them. Type 2
attributes the source lacks are written empty, a source that claims Patient Identity Removed without a
method gets one stated (else the SEG carries the source's Type 1C error), and the Specific Character Set
switches to UTF-8 only when an added text (label, description) does not fit the source's. highdicom's
warning about single-component patient names quotes the name, so it is silenced around the constructor.

Speed and size
--------------
highdicom needs only the source headers (``dcmread(..., stop_before_pixels=True)``): it reads UIDs,
patient/study attributes and geometry, never Pixel Data. The label map is passed as a label map (no
stacked per-segment copy) and is renumbered with one table look-up only when label values differ from
segment numbers. BINARY frames are bit-packed (1 bit per pixel) in Explicit VR Little Endian, which
every SEG reader supports; highdicom's `workers` only parallelise compressed transfer syntaxes, and the
only one it allows for BINARY (JPEG 2000 lossless) made the 275-slice chest 15x smaller but 3.5x slower
to build on two cores.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code as PydicomCode
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from dicom_node.derived import AlgorithmInfo, Code, Equipment, ResultSeries, SegmentInfo, srgb_to_dicom_lab
from dicom_node.result_iod import InputChecks, charset_encodes, header_to_copy

log = logging.getLogger(__name__)

SEGMENTATION_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"

# Tracking UIDs are derived from (source series, tracking id), so the same structure of one source series
# carries the same UID in every object made from it (SEG and Surface Segmentation, preview and full).
_TRACKING_NAMESPACE = uuid.UUID("6f0c1f8e-3c2b-5a8e-9d1e-2b7a4c3d5e61")
_UNDESCRIBED = 255  # renumbering-table entry for a label value no segment describes
# highdicom warns about single-component person names and quotes the name: keep it out of the logs
_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


class SegError(ValueError):
    """Input refused, or no valid SEG can be made of it; the message names the argument or segment."""


_check = InputChecks(SegError)


def tracking_uid(source_series_uid: str, tracking_id: str) -> str:
    """A 2.25 UID (ISO/IEC 9834-8, from a name-based UUID) of the source series and the tracking id, so
    every object made from one series tracks a structure under the same UID without storing it."""
    return f"2.25.{uuid.uuid5(_TRACKING_NAMESPACE, f'{source_series_uid}|{tracking_id}').int}"


def build_segmentation(
    labels: np.ndarray,
    affine: np.ndarray,
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentInfo],
    algorithm: AlgorithmInfo,
    equipment: Equipment,
    series: ResultSeries,
    *,
    resampled: bool,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG of `labels` (uint8 (z, y, x); values are `SegmentInfo.label_value`) on the grid that
    `affine` maps (voxel (x, y, z, 1) -> patient LPS mm).

    `source_images`: the source CT headers, pixel data not needed; single-frame instances in volume order
    or one Enhanced CT object. `resampled=False`: `labels` is on the source grid, slice k on the source
    frame at ``affine @ (0, 0, k, 1)``. `resampled=True`: `labels` is on the resampled grid of a tilted or
    unevenly spaced series, in its Frame of Reference (see the module docstring for what it references).
    Raises SegError naming the argument or segment at fault; messages never quote patient data.
    """
    t0 = time.perf_counter()
    if not isinstance(resampled, bool):
        raise SegError(f"resampled must be True or False, got {resampled!r}")
    _check_labels(labels)
    grid = _check_affine(affine)
    sources = _check_sources(source_images)
    _check_segments(segments)
    _check.algorithm(algorithm)
    _check.equipment(equipment)
    _check.series(series, str(sources[0].SeriesInstanceUID))
    if sop_instance_uid is not None:
        _check.uid(sop_instance_uid, "sop_instance_uid (SOP Instance UID)")
    pixels = _segment_pixels(labels, segments)

    plane_positions = plane_orientation = pixel_measures = None
    if resampled:
        plane_positions, plane_orientation, pixel_measures = _grid_planes(grid, labels.shape)
    else:
        geometry = _SourceGeometry.of(sources)
        order = geometry.match(grid, labels.shape)
        if geometry.multiframe:
            # highdicom pairs array slice i with frame i + 1 unless given positions; given the matched
            # frames' own positions it references each frame by number, locations preserved
            plane_positions = [
                hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, geometry.positions[f])
                for f in order
            ]
    # highdicom copies Patient and Study from the first source by attribute access (it fails on an absent
    # Type 2 one; a SEG must carry them, empty if unknown)
    first = header_to_copy(sources[0])
    descriptions = [_describe(s, algorithm, str(first.SeriesInstanceUID)) for s in segments]
    charset = _character_set(first, _texts(segments, algorithm, equipment, series))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=[first, *sources[1:]],
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=series.series_instance_uid,
                series_number=series.series_number,
                sop_instance_uid=sop_instance_uid or generate_uid(),
                instance_number=series.instance_number,
                manufacturer=equipment.manufacturer,
                manufacturer_model_name=equipment.model_name,
                software_versions=equipment.software_version,
                device_serial_number=equipment.device_serial_number,
                content_label=series.content_label,
                content_description=series.content_description or None,
                plane_positions=plane_positions,
                plane_orientation=plane_orientation,
                pixel_measures=pixel_measures,
                omit_empty_frames=True,
                **({"specific_character_set": charset} if charset else {}),
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise SegError(f"highdicom refused the segmentation: {exc}") from exc
    seg.SeriesDescription = series.series_description
    if resampled:
        seg = _as_resampled(seg, grid)
    log.info(
        "event=seg_built frames=%d segments=%d resampled=%s seconds=%.3f",
        int(seg.NumberOfFrames),
        len(segments),
        "yes" if resampled else "no",
        time.perf_counter() - t0,
    )
    return seg


# --- input checks ------------------------------------------------------------------------------------


def _check_labels(labels: object) -> None:
    if not isinstance(labels, np.ndarray):
        raise SegError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 3 or 0 in labels.shape:
        raise SegError(f"labels must be a non-empty (z, y, x) array, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        raise SegError(f"labels must be a uint8 label map, got dtype {labels.dtype}")


class _Grid:
    """The voxel grid of `affine`: unit row/column directions, pixel sizes, slice step and origin."""

    def __init__(self, affine: np.ndarray) -> None:
        self.dx = float(np.linalg.norm(affine[:3, 0]))
        self.dy = float(np.linalg.norm(affine[:3, 1]))
        self.row_dir = affine[:3, 0] / self.dx
        self.col_dir = affine[:3, 1] / self.dy
        self.normal = np.cross(self.row_dir, self.col_dir)
        self.slice_step = affine[:3, 2].copy()
        self.origin = affine[:3, 3].copy()

    def positions(self, n: int) -> np.ndarray:
        """Image Position (Patient) of slices 0..n-1: where their first voxel's centre lies."""
        return self.origin + np.outer(np.arange(n), self.slice_step)

    @property
    def orientation(self) -> list[float]:
        return [*self.row_dir.tolist(), *self.col_dir.tolist()]

    @property
    def slice_spacing(self) -> float:
        return abs(float(self.normal @ self.slice_step))


def _check_affine(affine: object) -> _Grid:
    if not isinstance(affine, np.ndarray) or affine.shape != (4, 4):
        raise SegError("affine must be a 4x4 numpy array (voxel (x, y, z, 1) -> patient LPS mm)")
    arr = affine.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise SegError("affine must be finite")
    if not np.allclose(arr[3], (0.0, 0.0, 0.0, 1.0)):
        raise SegError(f"affine's last row must be (0, 0, 0, 1), got {arr[3].tolist()}")
    norms = np.linalg.norm(arr[:3, :3], axis=0)
    if np.any(norms < 1e-6):
        raise SegError(f"affine has a zero-length axis (lengths {norms.tolist()})")
    if abs(float(arr[:3, 0] @ arr[:3, 1])) / (norms[0] * norms[1]) > 1e-4:
        raise SegError("affine's row and column axes are not orthogonal")
    grid = _Grid(arr)
    if grid.slice_spacing < 0.01 * norms[2]:
        raise SegError("affine's slice axis lies in the image plane")
    return grid


def _check_sources(source_images: object) -> list[Dataset]:
    if isinstance(source_images, Dataset | str | bytes) or not isinstance(source_images, Sequence):
        raise SegError("source_images must be a sequence of pydicom Datasets (the source headers)")
    sources = list(source_images)
    if not sources or not all(isinstance(ds, Dataset) for ds in sources):
        raise SegError("source_images must be a non-empty sequence of pydicom Datasets (the source headers)")
    if len(sources) > 1 and any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in sources):
        raise SegError("source_images: pass one Enhanced (multi-frame) object alone, or single-frame images")
    required = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                "FrameOfReferenceUID", "Rows", "Columns")
    for i, ds in enumerate(sources):
        for kw in required:
            if not ds.get(kw):
                raise SegError(f"source_images[{i}] has no {kw}")
    for kw in required[2:]:
        if len({str(ds.get(kw)) for ds in sources}) > 1:
            raise SegError(f"source_images are not one series: they differ in {kw}")
    if len({str(ds.SOPInstanceUID) for ds in sources}) != len(sources):
        raise SegError("source_images lists an instance more than once")
    return sources


def _check_segments(segments: object) -> None:
    """The SegmentInfo checks every writer makes, and label values that a uint8 label map holds, one per
    segment (the pixels are renumbered by a table of them)."""
    values: set[int] = set()
    for s in _check.segments(segments):
        if not 1 <= s.label_value <= 255:
            raise SegError(f"segment {s.number} label_value must be 1..255 (a uint8 label map), got "
                           f"{s.label_value!r}")
        if s.label_value in values:
            raise SegError(f"segment {s.number} label_value {s.label_value} belongs to another segment too")
        values.add(s.label_value)
        _check.text(s.description, f"segment {s.number} description (Segment Description)", 1024, required=False,
                    multi_line=True)


def _segment_pixels(labels: np.ndarray, segments: Sequence[SegmentInfo]) -> np.ndarray:
    """The label map with segment numbers as values (the array itself when they already agree), after
    checking that every segment has voxels (the caller drops empty ones) and that every non-zero value
    has a segment (else its voxels would vanish from the SEG without a word). Cheap: one max and one
    compare per segment, plus one table look-up only when values must be renumbered."""
    n = len(segments)
    if all(s.label_value == s.number for s in segments):
        pixels = labels
    else:
        lut = np.full(256, _UNDESCRIBED, dtype=np.uint8)
        lut[0] = 0
        for s in segments:
            lut[s.label_value] = s.number
        pixels = lut[labels]
    if int(pixels.max()) > n:
        stray = np.unique(labels[pixels > n]).tolist()
        raise SegError(f"labels holds label value(s) {stray[:10]} that no entry of segments describes")
    for s in segments:
        if not np.any(pixels == s.number):
            raise SegError(
                f"segment {s.number} ({s.label}) is empty: no voxel of labels has its label value "
                f"{s.label_value}; drop empty segments before building the SEG"
            )
    return pixels


# --- geometry ----------------------------------------------------------------------------------------


def _frame_group(ds: Dataset, frame: int, seq_kw: str, attr: str) -> object | None:
    """`attr` from the per-frame, else the shared functional group `seq_kw` of an Enhanced object."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and idx < len(seq):
            inner = seq[idx].get(seq_kw)
            if inner and inner[0].get(attr) is not None:
                return inner[0].get(attr)
    return None


class _SourceGeometry:
    """Per-frame positions, the shared orientation and the pixel spacing of the source images."""

    def __init__(self, positions: np.ndarray, orientation: np.ndarray, spacing: np.ndarray,
                 shape: tuple[int, int], multiframe: bool) -> None:
        self.positions = positions
        self.orientation = orientation
        self.spacing = spacing  # (row spacing dy, column spacing dx), DICOM order
        self.shape = shape
        self.multiframe = multiframe

    @classmethod
    def of(cls, sources: list[Dataset]) -> _SourceGeometry:
        first = sources[0]
        nframes = int(first.get("NumberOfFrames", 1) or 1)
        multiframe = nframes > 1 or "PerFrameFunctionalGroupsSequence" in first
        try:
            if multiframe:
                ipp = [_frame_group(first, f, "PlanePositionSequence", "ImagePositionPatient")
                       for f in range(nframes)]
                iop = [_frame_group(first, f, "PlaneOrientationSequence", "ImageOrientationPatient")
                       for f in range(nframes)]
                ps = _frame_group(first, 0, "PixelMeasuresSequence", "PixelSpacing")
            else:
                ipp = [ds.ImagePositionPatient for ds in sources]
                iop = [ds.ImageOrientationPatient for ds in sources]
                ps = first.PixelSpacing
            positions = np.array([[float(v) for v in p] for p in ipp])  # type: ignore[union-attr]
            orients = np.array([[float(v) for v in o] for o in iop])  # type: ignore[union-attr]
            spacing = np.array([float(v) for v in ps])  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError) as exc:
            raise SegError(
                "source_images lack a readable ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
            ) from exc
        if positions.shape != (nframes if multiframe else len(sources), 3) or orients.shape[1:] != (6,) or (
            spacing.shape != (2,)
        ):
            raise SegError("source_images have a malformed ImagePositionPatient, ImageOrientationPatient or "
                           "PixelSpacing")
        if np.max(np.abs(orients - orients[0])) > 1e-4:
            raise SegError("source_images do not share one ImageOrientationPatient")
        return cls(positions, orients[0], spacing, (int(first.Rows), int(first.Columns)), multiframe)

    def match(self, grid: _Grid, shape: tuple[int, ...]) -> list[int]:
        """The source frame under each label slice. Refuses a label grid that is not the source grid,
        and single-frame sources that are not in volume order (highdicom pairs them by index)."""
        n = len(self.positions)
        if shape[0] != n:
            raise SegError(
                f"labels has {shape[0]} slices but source_images have {n} frames: with resampled=False "
                "there must be one label slice per source frame (a resampled volume needs resampled=True)"
            )
        if tuple(shape[1:]) != self.shape:
            raise SegError(f"labels slices are {shape[1]}x{shape[2]} but source frames are "
                           f"{self.shape[0]}x{self.shape[1]} (rows x columns; a resampled volume needs "
                           "resampled=True)")
        if np.max(np.abs(np.array(grid.orientation) - self.orientation)) > 1e-3:
            raise SegError("affine's row/column directions differ from the source ImageOrientationPatient")
        if not np.allclose((grid.dy, grid.dx), self.spacing, rtol=1e-3, atol=1e-4):
            raise SegError(f"affine's pixel size ({grid.dy:.4f}, {grid.dx:.4f}) mm differs from the source "
                           f"PixelSpacing {self.spacing.tolist()}")
        normal = grid.normal
        expected = grid.positions(n)
        step_along = float(grid.slice_step @ normal)
        k_of = np.rint((self.positions - grid.origin) @ normal / step_along).astype(int)
        order = [-1] * n
        for f, k in enumerate(k_of.tolist()):
            if 0 <= k < n and order[k] == -1:
                order[k] = f
        if -1 in order:
            raise SegError("source_images do not lie on the grid of labels/affine: some label slice has no "
                           "source frame (a resampled volume needs resampled=True)")
        offsets = self.positions[order] - expected
        along = np.abs(offsets @ normal)
        in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
        bad = np.flatnonzero((along > 0.25 * abs(step_along)) | (in_plane > 0.25 * min(grid.dx, grid.dy)))
        if bad.size:
            k = int(bad[0])
            raise SegError(f"source frame of label slice {k} lies {along[k]:.3f} mm off its plane and "
                           f"{in_plane[k]:.3f} mm in-plane from where affine puts it (a sheared or resampled "
                           "volume needs resampled=True)")
        if not self.multiframe and order != list(range(n)):
            k = next(k for k, f in enumerate(order) if f != k)
            raise SegError(f"source_images are not in volume order: label slice {k} lies on "
                           f"source_images[{order[k]}]; pass them in the Volume's slice order")
        return order


def _grid_planes(
    grid: _Grid, shape: tuple[int, ...]
) -> tuple[list[hd.PlanePositionSequence], hd.PlaneOrientationSequence, hd.PixelMeasuresSequence]:
    """Plane positions, orientation and pixel measures of the label grid itself (resampled stacks)."""
    plane_positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, p) for p in grid.positions(shape[0])
    ]
    orientation = hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, grid.orientation)
    step = grid.slice_spacing
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=(grid.dy, grid.dx), slice_thickness=step, spacing_between_slices=step
    )
    return plane_positions, orientation, measures


def _as_resampled(seg: hd.seg.Segmentation, grid: _Grid) -> hd.seg.Segmentation:
    """Make a resampled SEG say what it is: the grid's own slice spacing (highdicom substitutes the
    source's pixel measures when the pixel size agrees), no frame derived from one source slice
    (highdicom links frames to source slices they happen to be coplanar with), and why."""
    step = grid.slice_spacing
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SliceThickness = DS(step, auto_format=True)
    measures.SpacingBetweenSlices = DS(step, auto_format=True)
    relinked = False
    for item in seg.PerFrameFunctionalGroupsSequence:
        if item.get("DerivationImageSequence"):
            item.DerivationImageSequence = []
            relinked = True
    seg.DerivationDescription = (
        f"Segmentation of the source series resampled to a regular grid ({step:.3f} mm slices "
        "perpendicular to the source image planes); frames are placed by their plane position and orientation"
    )
    if relinked:
        # rebuild highdicom's frame look-up tables (they index the per-frame source references)
        seg = hd.seg.Segmentation.from_dataset(seg, copy=False)
    return seg


# --- segments and the copied header ------------------------------------------------------------------


def _code(code: Code) -> PydicomCode:
    return PydicomCode(code.value, code.scheme, code.meaning)


def _describe(s: SegmentInfo, algorithm: AlgorithmInfo, source_series_uid: str) -> hd.seg.SegmentDescription:
    """The Segment Description macro of one segment. highdicom (0.28) takes no Segment Description
    (0062,0006), so it is set on the item after construction; Segmentation keeps the items as given."""
    tracked = bool(s.tracking_id)
    item = hd.seg.SegmentDescription(
        segment_number=s.number,
        segment_label=s.label,
        segmented_property_category=_code(s.category),
        segmented_property_type=_code(s.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=_code(algorithm.family), version=algorithm.version
        ),
        tracking_id=s.tracking_id if tracked else None,
        tracking_uid=tracking_uid(source_series_uid, s.tracking_id) if tracked else None,
        # the Surface Segmentation's converter, so both objects of a result carry the same colour values
        display_color=hd.color.CIELabColor(*_lab_floats(srgb_to_dicom_lab(s.color_rgb))),
    )
    if s.description:
        item.SegmentDescription = s.description
    return item


def _lab_floats(value: tuple[int, int, int]) -> tuple[float, float, float]:
    """DICOM-scaled CIELab (0..65535) back to L*, a*, b*, which highdicom scales again (exactly)."""
    return value[0] * 100.0 / 65535.0, value[1] * 255.0 / 65535.0 - 128.0, value[2] * 255.0 / 65535.0 - 128.0


def _texts(
    segments: Sequence[SegmentInfo], algorithm: AlgorithmInfo, equipment: Equipment, series: ResultSeries
) -> list[str]:
    """Every text this module adds to the SEG (the rest is copied from the source, already decoded)."""
    texts = [algorithm.name, algorithm.version, algorithm.family.meaning, series.series_description,
             series.content_description, series.content_label, equipment.manufacturer, equipment.model_name,
             equipment.software_version, equipment.device_serial_number]
    for s in segments:
        texts += [s.label, s.tracking_id, s.description, s.category.meaning, s.type.meaning]
    return texts


def _character_set(first: Dataset, texts: Sequence[str]) -> str | None:
    """None (keep the source's Specific Character Set) when it encodes every added text, else UTF-8
    (ISO_IR 192), which encodes anything, the copied patient data included (pydicom decoded it)."""
    return None if charset_encodes(first.get("SpecificCharacterSet"), texts) else "ISO_IR 192"
