"""Assemble one CT series (single-frame files or Enhanced CT frames) into a volume in patient LPS mm.

Geometry comes only from ImagePositionPatient / ImageOrientationPatient (never InstanceNumber or
SliceLocation, which scanners write in either direction). Slices are sorted by their distance along the
slice normal n = row_dir x col_dir, so array index k grows along n.

Regular, unsheared stacks are copied as they are. Two kinds of stack are resampled onto a regular grid
whose third axis is n (`Volume.resampled_from` says which and why):

* sheared stacks (gantry tilt: the IPP steps have an in-plane component) -- every source slice is moved
  in-plane by its own offset (bilinear), so a voxel lands where the source slice says it is;
* legitimately uneven stacks (e.g. 4 mm then 7 mm slices) -- linear interpolation along n.

Target spacing along n is the smallest gap of the stack (never coarser than any part of the source, so
the thinnest slices are not smoothed away), but at least a quarter of the median gap so a near-duplicate
position cannot blow up the output size. The grid spans first to last slice exactly (the spacing is
shrunk slightly so that (last - first) is a whole number of steps). The in-plane grid keeps the source
pixel size and orientation and grows to cover every shifted slice, so nothing the scanner imaged is
cut off; uncovered voxels get FILL_HU (air). Interpolated HU are rounded back to int16 when the source
rescale is integral (0.5 HU is far below CT noise).

Missing-slice rule: with base = the median gap, a gap > 1.5 x base is an error (missing slices) when
(a) all the other gaps are regular (within max(0.02 mm, 1 %) of base), or (b) the slice thickness of
the two slices around it does not cover it (gap > 1.05 x mean thickness, i.e. un-imaged tissue).
Otherwise the series is "legitimately uneven" (several spacing regimes whose slices touch, e.g. a GE
sequential head scan with 4 mm and 7 mm zones) and is resampled with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.pixels import (
    PixelDecodeError,
    apply_rescale,
    decode_frames,
    number_of_frames,
    rescale_for_frame,
)

log = logging.getLogger(__name__)

FILL_HU = -1024  # value for resampled voxels no source slice covers (air)
ORIENTATION_TOLERANCE = 1e-4  # max abs difference of IOP components
DUPLICATE_TOLERANCE_MM = 0.01  # two slices closer than this along n are "the same position"
SHEAR_TOLERANCE_PX = 0.05  # in-plane drift (fraction of a pixel) below which a stack is not sheared
# the default bound on a volume's grid: a 0.5 mm whole-body CT is ~2000 x 512 x 512 = 524 M voxels (1 GB as
# int16); processing.max_volume_voxels in the config
MAX_VOLUME_VOXELS = 1_000_000_000


class VolumeError(ValueError):
    """The instances do not form one coherent volume; `reason` names what differs and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceInstance:
    """One source frame: `frame_number` is the 1-based DICOM frame number, None for single-frame objects."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None


@dataclass
class Volume:
    """HU volume indexed [z, y, x]; `affine @ [x, y, z, 1]` gives patient LPS mm of a voxel centre.

    `source_instances` are in array slice order when `resampled_from` is None; after resampling they are
    the sources sorted along the slice normal (no longer one per array slice).
    """

    array: np.ndarray
    affine: np.ndarray
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    source_instances: tuple[SourceInstance, ...]
    resampled_from: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(sx, sy, sz) in mm: the lengths of the affine's first three columns."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])


@dataclass
class _Slice:
    """Everything geometry needs from one frame, so headers can be dropped before decoding."""

    source: Path | Dataset
    frame_index: int | None  # 0-based frame within a multi-frame object, None for single-frame
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]  # (row spacing dy, column spacing dx), DICOM order
    rows: int
    cols: int
    thickness: float | None
    slope: float
    intercept: float
    instance: SourceInstance
    instance_number: str
    study_uid: str
    series_uid: str
    for_uid: str
    label: str  # for error messages: file name or instance number, never patient data


def _floats(value: object, n: int, what: str, label: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{what} unreadable in {label}") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise VolumeError(f"{what} must have {n} finite values in {label}, got {value!r}")
    return arr


def _group_attr(ds: Dataset, frame: int, seq_kw: str, attr: str) -> object | None:
    """Look `attr` up in the per-frame then shared functional group `seq_kw` (Enhanced CT)."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if not seq or idx >= len(seq):
            continue
        inner = seq[idx].get(seq_kw)
        if inner and inner[0].get(attr) is not None:
            return inner[0].get(attr)
    return None


def _sop_uids(ds: Dataset, label: str, from_meta: dict[str, int]) -> tuple[str, str]:
    """SOP class/instance UID, falling back to the file meta when the dataset has them empty."""
    meta = getattr(ds, "file_meta", None)
    uids: list[str] = []
    for kw, meta_kw in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        value = str(ds.get(kw, "") or "")
        if not value and meta is not None:
            value = str(meta.get(meta_kw, "") or "")
            if value:
                from_meta[kw] = from_meta.get(kw, 0) + 1
        uids.append(value)
    if not uids[1]:
        raise VolumeError(f"{label}: no SOPInstanceUID in the dataset or its file meta")
    return uids[0], uids[1]


def _slices_from_dataset(
    ds: Dataset, source: Path | Dataset, label: str, from_meta: dict[str, int]
) -> list[_Slice]:
    sop_class, sop_inst = _sop_uids(ds, label, from_meta)
    common = {
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "for_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
        "instance_number": str(ds.get("InstanceNumber", "") or ""),
    }
    if "PixelData" not in ds and not isinstance(source, Path):
        raise VolumeError(f"{label}: no pixel data")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise VolumeError(f"{label}: SamplesPerPixel={spp}, only greyscale CT is supported")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or cols < 1:
        raise VolumeError(f"{label}: Rows/Columns missing")
    nframes = number_of_frames(ds)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if nframes > 1 and not enhanced:
        raise VolumeError(f"{label}: {nframes} frames but no functional groups (not an Enhanced CT object)")
    out: list[_Slice] = []
    for f in range(nframes):
        if enhanced:
            ipp = _group_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient")
            iop = _group_attr(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _group_attr(ds, f, "PixelMeasuresSequence", "PixelSpacing")
            thick = _group_attr(ds, f, "PixelMeasuresSequence", "SliceThickness")
            frame_label = f"{label} frame {f + 1}"
        else:
            ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
            ps, thick = ds.get("PixelSpacing"), ds.get("SliceThickness")
            frame_label = label
        for what, val in (
            ("ImagePositionPatient", ipp),
            ("ImageOrientationPatient", iop),
            ("PixelSpacing", ps),
        ):
            if val is None or val == "":
                raise VolumeError(f"{frame_label}: {what} missing")
        slope, intercept = rescale_for_frame(ds, f if enhanced else None)
        spacing = _floats(ps, 2, "PixelSpacing", frame_label)
        if np.any(spacing <= 0):
            raise VolumeError(f"{frame_label}: PixelSpacing must be positive, got {list(spacing)}")
        out.append(
            _Slice(
                source=source,
                frame_index=f if nframes > 1 or enhanced else None,
                position=_floats(ipp, 3, "ImagePositionPatient", frame_label),
                orientation=_floats(iop, 6, "ImageOrientationPatient", frame_label),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rows=rows,
                cols=cols,
                thickness=float(thick) if thick not in (None, "") and float(thick) > 0 else None,
                slope=slope,
                intercept=intercept,
                instance=SourceInstance(sop_class, sop_inst, f + 1 if enhanced and nframes > 1 else None),
                label=frame_label,
                **common,
            )
        )
    return out


def _read_headers(items: Iterable[Path | str | Dataset], warnings: list[str]) -> list[_Slice]:
    slices: list[_Slice] = []
    from_meta: dict[str, int] = {}
    for item in items:
        if isinstance(item, Dataset):
            inst = str(item.get("InstanceNumber", "") or "?")
            slices.extend(_slices_from_dataset(item, item, f"instance {inst}", from_meta))
            continue
        path = Path(item)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            raise VolumeError(f"{path.name}: not readable as DICOM ({exc})") from exc
        slices.extend(_slices_from_dataset(ds, path, path.name, from_meta))
    for kw, count in sorted(from_meta.items()):
        warnings.append(f"{kw} empty in {count} dataset(s); used the file meta value instead")
        log.warning("event=sop_uid_from_file_meta attr=%s count=%d", kw, count)
    return slices


def _require_same(slices: list[_Slice], attr: str, what: str) -> None:
    values = {getattr(s, attr) for s in slices}
    if len(values) > 1:
        examples = sorted(values)[:3]
        raise VolumeError(f"mixed {what}: {len(values)} different values in one volume (e.g. {examples})")


def _check_consistency(slices: list[_Slice]) -> None:
    _require_same(slices, "series_uid", "series (SeriesInstanceUID)")
    _require_same(slices, "study_uid", "study (StudyInstanceUID)")
    _require_same(slices, "for_uid", "frame of reference (FrameOfReferenceUID)")
    ref = slices[0]
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - ref.orientation)) > ORIENTATION_TOLERANCE:
            raise VolumeError(
                f"mixed orientation: ImageOrientationPatient {np.round(s.orientation, 5).tolist()} in {s.label} "
                f"differs from {np.round(ref.orientation, 5).tolist()} in {ref.label}"
            )
        if (s.rows, s.cols) != (ref.rows, ref.cols):
            raise VolumeError(
                f"mixed pixel grid: Rows x Columns {s.rows}x{s.cols} in {s.label} differs from "
                f"{ref.rows}x{ref.cols} in {ref.label}"
            )
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise VolumeError(
                f"mixed pixel grid: PixelSpacing {list(s.pixel_spacing)} in {s.label} differs from "
                f"{list(ref.pixel_spacing)} in {ref.label}"
            )


def _axes(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise VolumeError(
            f"ImageOrientationPatient row and column directions are not orthogonal: {orientation}"
        )
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal / np.linalg.norm(normal)


def _dedupe(slices: list[_Slice], warnings: list[str]) -> list[_Slice]:
    seen: set[tuple[str, int | None]] = set()
    out: list[_Slice] = []
    for s in slices:
        key = (s.instance.sop_instance_uid, s.instance.frame_number)
        if key in seen:
            warnings.append(f"duplicate SOP instance ignored: {s.label}")
            log.warning("event=duplicate_sop_instance action=ignored source=%s", s.label)
            continue
        seen.add(key)
        out.append(s)
    return out


def _check_gaps(slices: list[_Slice], dist: np.ndarray, gaps: np.ndarray, base: float) -> bool:
    """Apply the missing-slice rule (module docstring); return True when the stack is regular."""
    tol = max(0.02, 0.01 * base)
    regular_mask = np.abs(gaps - base) <= tol
    if np.all(regular_mask):
        return True
    big = gaps > 1.5 * base
    otherwise_regular = bool(np.all(regular_mask | big))
    for i in np.flatnonzero(big):
        a, b = slices[i], slices[i + 1]
        thick = [t for t in (a.thickness, b.thickness) if t is not None]
        covered = len(thick) == 2 and gaps[i] <= 1.05 * (sum(thick) / 2)
        if otherwise_regular or not covered:
            n_missing = max(round(gaps[i] / base) - 1, 1)
            raise VolumeError(
                f"missing slice(s): gap of {gaps[i]:.2f} mm along the slice normal between positions "
                f"{dist[i]:.2f} and {dist[i + 1]:.2f} mm (IPP {np.round(a.position, 2).tolist()} -> "
                f"{np.round(b.position, 2).tolist()}), series spacing {base:.2f} mm: about {n_missing} "
                f"slice(s) missing"
            )
    return False


# Stored values of a single-frame image already decoded elsewhere (the node's ingest), by SOP Instance UID.
DecodedLookup = Callable[[str], "np.ndarray | None"]


class _Reader:
    """Decode one frame's HU at a time; keeps at most one multi-frame object's bytes in memory.
    `decoded` supplies frames decoded at ingest, so those files are not read and decoded again."""

    def __init__(self, decoded: DecodedLookup | None = None) -> None:
        self._cached_path: Path | None = None
        self._cached_ds: Dataset | None = None
        self._decoded = decoded

    def _dataset(self, s: _Slice) -> Dataset:
        if isinstance(s.source, Dataset):
            return s.source
        if s.frame_index is None:
            return pydicom.dcmread(s.source)
        if self._cached_path != s.source:
            self._cached_ds = pydicom.dcmread(s.source)
            self._cached_path = s.source
        assert self._cached_ds is not None
        return self._cached_ds

    def hu(self, s: _Slice) -> np.ndarray:
        frame = None
        if self._decoded is not None and s.frame_index is None:
            frame = self._decoded(s.instance.sop_instance_uid)
        if frame is None:
            try:
                frame = decode_frames(self._dataset(s), index=s.frame_index)[0]
            except PixelDecodeError as exc:
                raise VolumeError(f"{s.label}: {exc.reason}") from exc
        if frame.shape != (s.rows, s.cols):
            raise VolumeError(f"{s.label}: decoded frame {frame.shape} does not match {s.rows}x{s.cols}")
        return apply_rescale(frame, s.slope, s.intercept)


def _store(out: np.ndarray, k: int, hu: np.ndarray) -> np.ndarray:
    """Write slice k, promoting the whole volume to float32 if a slice no longer fits int16."""
    if out.dtype == np.int16 and hu.dtype != np.int16:
        log.info("event=volume_promoted dtype=float32 reason=slice_%d_not_int16", k)
        out = out.astype(np.float32)
    out[k] = hu
    return out


def _shift_into(src: np.ndarray, off_y: float, off_x: float, shape: tuple[int, int]) -> np.ndarray:
    """Place `src` on a canvas so that canvas(y, x) = src(y - off_y, x - off_x), bilinear, FILL_HU outside."""
    canvas = np.full(shape, FILL_HU, dtype=np.float32)
    iy, ix = math.floor(off_y + 1e-3), math.floor(off_x + 1e-3)
    fy, fx = max(off_y - iy, 0.0), max(off_x - ix, 0.0)
    rows, cols = src.shape
    canvas[iy : iy + rows, ix : ix + cols] = src
    for axis, frac in ((0, fy), (1, fx)):
        if frac < 1e-3:
            continue
        prev = np.full(shape, FILL_HU, dtype=np.float32)
        if axis == 0:
            prev[1:] = canvas[:-1]
        else:
            prev[:, 1:] = canvas[:, :-1]
        canvas = (1.0 - frac) * canvas + frac * prev
    return canvas


def _resample(
    slices: list[_Slice],
    dist: np.ndarray,
    in_plane: np.ndarray,
    spacing_n: float,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    reader: _Reader,
    integral: bool,
    max_voxels: int,
) -> tuple[np.ndarray, np.ndarray]:
    row_dir, col_dir, normal = axes
    dy, dx = slices[0].pixel_spacing
    rows, cols = slices[0].rows, slices[0].cols
    span = float(dist[-1] - dist[0])
    n_out = math.ceil(span / spacing_n - 1e-6) + 1
    step = span / (n_out - 1)
    off_x_all, off_y_all = in_plane[:, 0] / dx, in_plane[:, 1] / dy
    i0, j0 = math.floor(off_x_all.min() + 1e-6), math.floor(off_y_all.min() + 1e-6)
    out_cols = math.ceil(off_x_all.max() - i0 - 1e-6) + cols
    out_rows = math.ceil(off_y_all.max() - j0 - 1e-6) + rows
    _check_grid_size((n_out, out_rows, out_cols), max_voxels, "the resampled grid")
    out = np.empty((n_out, out_rows, out_cols), dtype=np.int16 if integral else np.float32)
    cache: dict[int, np.ndarray] = {}

    def placed(m: int) -> np.ndarray:
        if m not in cache:
            hu = reader.hu(slices[m]).astype(np.float32)
            cache[m] = _shift_into(hu, off_y_all[m] - j0, off_x_all[m] - i0, (out_rows, out_cols))
        return cache[m]

    for k in range(n_out):
        d = dist[0] + k * step
        a = int(np.clip(np.searchsorted(dist, d, side="right") - 1, 0, len(dist) - 2))
        t = float(np.clip((d - dist[a]) / (dist[a + 1] - dist[a]), 0.0, 1.0))
        for m in [m for m in cache if m < a]:
            del cache[m]
        value = (
            placed(a)
            if t < 1e-6
            else (placed(a + 1) if t > 1 - 1e-6 else (1 - t) * placed(a) + t * placed(a + 1))
        )
        if out.dtype == np.int16:
            value = np.rint(value)
            if value.min() < -32768 or value.max() > 32767:
                out = out.astype(np.float32)
        out[k] = value
    origin = slices[0].position + i0 * dx * row_dir + j0 * dy * col_dir
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = (
        row_dir * dx,
        col_dir * dy,
        normal * step,
        origin,
    )
    return out, affine


def _check_grid_size(shape: tuple[int, int, int], max_voxels: int, what: str) -> None:
    """Refuse a grid before allocating it: its size comes from header positions and spacing, which a crafted
    or broken series can make arbitrarily large."""
    voxels = shape[0] * shape[1] * shape[2]
    if voxels > max_voxels:
        raise VolumeError(f"{what} {shape[0]}x{shape[1]}x{shape[2]} would hold {voxels / 1e6:.0f} M voxels, "
                          f"more than processing.max_volume_voxels ({max_voxels / 1e6:.0f} M)")


def assemble_volume(datasets_or_paths: Iterable[Path | str | Dataset], *,
                    decoded: DecodedLookup | None = None, max_voxels: int = MAX_VOLUME_VOXELS) -> Volume:
    """Build one HU volume from the instances of one series, in any order. Raises VolumeError.

    Paths are read twice: headers first (stop_before_pixels) to sort and check, then pixels slice by
    slice into a preallocated array, so peak memory stays near one output volume plus one slice.
    `decoded` looks up stored values decoded at ingest (by SOP Instance UID) before a file is decoded.
    """
    warnings: list[str] = []
    slices = _dedupe(_read_headers(datasets_or_paths, warnings), warnings)
    if not slices:
        raise VolumeError("no instances to assemble")
    _check_consistency(slices)
    axes = _axes(slices[0].orientation)
    row_dir, col_dir, normal = axes
    dist_all = np.array([s.position @ normal for s in slices])
    order = np.argsort(dist_all, kind="stable")
    slices = [slices[i] for i in order]
    dist = dist_all[order]
    gaps = np.diff(dist)
    dups = np.flatnonzero(gaps < DUPLICATE_TOLERANCE_MM)
    if dups.size:
        i = int(dups[0])
        raise VolumeError(
            f"duplicate slice position: {slices[i].label} and {slices[i + 1].label} are both at "
            f"{dist[i]:.3f} mm along the slice normal (IPP {np.round(slices[i].position, 3).tolist()}) "
            f"with different SOP instances (several acquisitions or phases in one series?)"
        )
    dy, dx = slices[0].pixel_spacing
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
    reader = _Reader(decoded)
    first = slices[0]
    study, series, for_uid = first.study_uid, first.series_uid, first.for_uid
    sources = tuple(s.instance for s in slices)

    rel = np.array([s.position - first.position for s in slices])
    along = rel @ normal
    in_plane_vec = rel - along[:, None] * normal
    in_plane = np.stack([in_plane_vec @ row_dir, in_plane_vec @ col_dir], axis=1)
    drift_px = np.max(np.hypot(in_plane[:, 0] / dx, in_plane[:, 1] / dy))
    sheared = len(slices) > 1 and drift_px > SHEAR_TOLERANCE_PX

    if len(slices) == 1:
        regular = True
        step_vec = normal * (first.thickness or 1.0)
    else:
        base = float(np.median(gaps))
        regular = _check_gaps(slices, dist, gaps, base)
        step_vec = (slices[-1].position - first.position) / (len(slices) - 1)

    if regular and not sheared:
        _check_grid_size((len(slices), first.rows, first.cols), max_voxels, "the volume")
        out = np.empty((len(slices), first.rows, first.cols), dtype=np.int16 if integral else np.float32)
        for k, s in enumerate(slices):
            out = _store(out, k, reader.hu(s))
        affine = np.eye(4)
        affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = (
            row_dir * dx,
            col_dir * dy,
            step_vec,
            first.position,
        )
        log.info("event=volume_assembled slices=%d shape=%s resampled=no", len(slices), out.shape)
        return Volume(out, affine, study, series, for_uid, sources, None, tuple(warnings))

    notes = []
    if sheared:
        span = float(dist[-1] - dist[0])
        shift = float(np.hypot(*(in_plane[-1] - in_plane[0])))
        tilt = math.degrees(math.atan2(shift, span)) if span > 0 else 0.0
        notes.append(f"sheared stack (gantry tilt ~{tilt:.2f} deg, in-plane drift {shift:.2f} mm)")
    if not regular:
        notes.append(f"uneven slice spacing (gaps {gaps.min():.2f}..{gaps.max():.2f} mm)")
    spacing_n = float(gaps.mean()) if regular else max(float(gaps.min()), 0.25 * float(np.median(gaps)))
    out, affine = _resample(slices, dist, in_plane, spacing_n, axes, reader, integral, max_voxels)
    note = (
        f"{' and '.join(notes)}: {len(slices)} slices resampled to {out.shape[0]} x "
        f"{float(np.linalg.norm(affine[:3, 2])):.3f} mm along the slice normal, in-plane grid "
        f"{first.rows}x{first.cols} -> {out.shape[1]}x{out.shape[2]}, linear interpolation"
    )
    warnings.append(note)
    log.warning(
        "event=volume_resampled slices_in=%d slices_out=%d reason=%s", len(slices), out.shape[0], notes
    )
    return Volume(out, affine, study, series, for_uid, sources, note, tuple(warnings))


def series_files_to_volume(paths: Iterable[Path | str]) -> Volume:
    """Files of one series (any order) -> Volume; the name the pipeline uses."""
    return assemble_volume(paths)
