"""Procedural chest CT phantoms with exact labels, and a writer for valid CT DICOM series.

Tests need CT series whose anatomy and geometry are known exactly (tilt, uneven spacing, enhanced
multi-frame, compressed syntaxes), and model training needs unlimited labelled volumes. numpy + pydicom
only: this module runs in the appliance and in the test suite, where torch is not installed.

Conventions: arrays are indexed [z, y, x]; `spacing` is (sz, sy, sx) mm; `origin` is the LPS (x, y, z)
position of voxel [0, 0, 0]. With the default identity orientation x grows to the patient's left,
y posterior, z superior (slice 0 is the most inferior).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "bone": 2,
    "lung_left": 3,
    "lung_right": 4,
    "airway": 5,
    "heart": 6,
    "aorta": 7,
    "liver": 8,
}

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_IDENTITY_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class Phantom:
    """HU (int16) and labels (uint8, LABELS values) on one grid; spacing (sz, sy, sx), origin LPS (x, y, z)."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def _ellipsoid(grid: tuple[np.ndarray, np.ndarray, np.ndarray], centre, radii) -> np.ndarray:
    z, y, x = grid
    return (
        ((z - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((x - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def _tube(grid, p0, p1, radius: float) -> np.ndarray:
    """Voxels within `radius` mm of the segment p0-p1 (points as (z, y, x) mm)."""
    z, y, x = grid
    p0, p1 = np.asarray(p0, dtype=np.float32), np.asarray(p1, dtype=np.float32)
    d = p1 - p0
    length2 = float(d @ d) or 1.0
    t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    dist2 = (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2
    return dist2 <= radius * radius


def make_phantom(
    shape: tuple[int, int, int] = (96, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 2.5, 2.5),
    seed: int = 0,
    *,
    noise_sigma: float = 15.0,
    contrast: bool = True,
    origin: tuple[float, float, float] | None = None,
) -> Phantom:
    """A chest/upper-abdomen phantom; sizes and positions vary with `seed`, anatomy scales with the FOV.

    Labels are exact (assigned before noise). The table under the body is left as background (0).
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    sz, sy, sx = spacing
    fz, fy, fx = nz * sz, ny * sy, nx * sx  # field of view in mm
    # mm coordinates relative to the FOV centre in-plane and to the bottom slice along z
    z = (np.arange(nz, dtype=np.float32) * sz)[:, None, None]
    y = (np.arange(ny, dtype=np.float32) * sy - fy / 2)[None, :, None]
    x = (np.arange(nx, dtype=np.float32) * sx - fx / 2)[None, None, :]
    grid = (z, y, x)

    def jitter(scale: float = 0.08) -> float:
        return float(1.0 + rng.uniform(-scale, scale))

    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    # body: elliptic cylinder along z, slightly tapered; subcutaneous fat rim
    ax, ay = 0.40 * fx * jitter(), 0.28 * fy * jitter()
    cy = -0.04 * fy
    taper = 1.0 - 0.08 * (z / max(fz, 1.0))
    r_body = (x / (ax * taper)) ** 2 + ((y - cy) / (ay * taper)) ** 2
    body = np.broadcast_to(r_body <= 1.0, shape)
    fat = np.broadcast_to(r_body > 0.85**2, shape) & body
    hu[body] = 40.0
    hu[fat] = -100.0
    labels[body] = LABELS["body"]

    # table: a slab below (posterior to) the body, not body
    table_top = cy + ay + 0.03 * fy
    table = np.broadcast_to((y >= table_top) & (y <= table_top + 0.04 * fy) & (np.abs(x) <= 0.45 * fx), shape)
    hu[table & ~body] = 150.0

    # liver: right (low x), inferior
    liver_c = (0.18 * fz * jitter(), cy - 0.02 * fy, -0.16 * fx * jitter())
    liver_r = (0.20 * fz * jitter(), 0.60 * ay * jitter(), 0.55 * ax * jitter())
    liver = _ellipsoid(grid, liver_c, liver_r) & body
    hu[liver] = 60.0
    labels[liver] = LABELS["liver"]

    # lungs: left (high x) and right, superior part; ~-850 HU
    lung_z, lung_rz = 0.62 * fz * jitter(0.05), 0.36 * fz * jitter(0.05)
    lung_ry, lung_rx = 0.70 * ay * jitter(), 0.36 * ax * jitter()
    lungs = {}
    for name, side in (("lung_left", 1.0), ("lung_right", -1.0)):
        m = _ellipsoid(grid, (lung_z, cy, side * 0.48 * ax), (lung_rz, lung_ry, lung_rx)) & body
        lungs[name] = m
        hu[m] = -850.0
        labels[m] = LABELS[name]

    # heart: anterior (low y), slightly left, between the lungs, ~40 HU
    heart_c = (0.45 * fz * jitter(0.05), cy - 0.25 * ay, 0.12 * ax * jitter())
    heart_r = (0.16 * fz * jitter(), 0.45 * ay * jitter(), 0.30 * ax * jitter())
    heart = _ellipsoid(grid, heart_c, heart_r) & body
    hu[heart] = 40.0
    labels[heart] = LABELS["heart"]

    # lung vessels: random short tubes inside the lungs (~40 HU, keep the lung label)
    vessel_r = max(1.5, 1.2 * min(spacing))
    for name, side in (("lung_left", 1.0), ("lung_right", -1.0)):
        for _ in range(6):
            p0 = (
                lung_z + rng.uniform(-0.5, 0.5) * lung_rz,
                cy + rng.uniform(-0.5, 0.5) * lung_ry,
                side * 0.48 * ax + rng.uniform(-0.4, 0.4) * lung_rx,
            )
            p1 = (
                p0[0] + rng.uniform(-0.3, 0.3) * lung_rz,
                p0[1] + rng.uniform(-0.3, 0.3) * lung_ry,
                p0[2] + rng.uniform(-0.3, 0.3) * lung_rx,
            )
            v = _tube(grid, p0, p1, vessel_r) & lungs[name]
            hu[v] = 40.0

    # spine: vertebral bodies (cortex + marrow) behind the heart, discs between
    spine_y, spine_x = cy + 0.55 * ay, 0.0
    vert_r = 0.16 * ay * jitter()
    cyl = (y - spine_y) ** 2 + (x - spine_x) ** 2
    level = 25.0 * jitter(0.05)  # mm per vertebra
    disc = np.mod(z, level) < 0.2 * level
    vertebra = np.broadcast_to(cyl <= vert_r**2, shape) & ~np.broadcast_to(disc, shape)
    marrow = np.broadcast_to(cyl <= (0.7 * vert_r) ** 2, shape) & vertebra
    hu[vertebra] = 800.0 + 200.0 * rng.uniform()
    hu[marrow] = 200.0
    labels[vertebra] = LABELS["bone"]
    # spinous process: a posterior bar per vertebra
    spinous_any = (
        np.broadcast_to(
            ((y - spine_y) >= 0) & ((y - spine_y) <= 0.38 * ay) & (np.abs(x) <= 0.35 * vert_r), shape
        )
        & ~np.broadcast_to(disc, shape)
        & body
    )
    hu[spinous_any] = 900.0
    labels[spinous_any] = LABELS["bone"]

    # ribs: elliptic bands in the thorax, posterior to anterior, every ~level mm
    rib_t = max(0.012 * fz, 1.2 * sz)
    rib_zone = (z > lung_z - lung_rz) & (z < lung_z + 0.8 * lung_rz)
    rib_levels = (np.mod(z - (lung_z - lung_rz), level) < rib_t) & rib_zone
    shell = (r_body <= 0.84**2) & (r_body >= 0.74**2) & (y > cy - 0.7 * ay)
    ribs = np.broadcast_to(rib_levels, shape) & np.broadcast_to(shell, shape)
    hu[ribs] = 700.0 + 300.0 * rng.uniform()
    labels[ribs] = LABELS["bone"]

    # aorta: ascending from the heart, arch, descending left of the spine
    ao_r = max(0.07 * ay * jitter(), 1.5 * min(sy, sx))
    ao_hu = 250.0 if contrast else 40.0
    top = min(heart_c[0] + 1.6 * heart_r[0], 0.93 * fz)
    asc0 = (heart_c[0], heart_c[1] + 0.2 * heart_r[1], heart_c[2] - 0.2 * heart_r[2])
    asc1 = (top, asc0[1], asc0[2])
    desc_top = (top, spine_y - 1.5 * vert_r, spine_x + 1.6 * vert_r)
    desc_bot = (0.0, desc_top[1], desc_top[2])
    aorta = (
        _tube(grid, asc0, asc1, ao_r)
        | _tube(grid, asc1, desc_top, ao_r)
        | _tube(grid, desc_top, desc_bot, ao_r)
    )
    aorta &= body
    hu[aorta] = ao_hu
    labels[aorta] = LABELS["aorta"]

    # airway: trachea from the top to the carina, two main bronchi and two lobar branches each
    carina = (lung_z + 0.45 * lung_rz, cy - 0.05 * ay, 0.0)
    tr_r = max(0.06 * ax * jitter(), 1.5 * min(sy, sx))
    airway = _tube(grid, (fz, carina[1], 0.0), carina, tr_r)
    for side in (1.0, -1.0):
        end = (carina[0] - 0.35 * lung_rz, carina[1], side * 0.40 * ax)
        airway |= _tube(grid, carina, end, 0.7 * tr_r)
        for dz in (0.25, -0.35):
            tip = (end[0] + dz * lung_rz, end[1] + 0.1 * lung_ry, side * 0.55 * ax)
            airway |= _tube(grid, end, tip, 0.45 * tr_r)
    airway &= body
    hu[airway] = -1000.0
    labels[airway] = LABELS["airway"]

    if noise_sigma > 0:
        hu += rng.normal(0.0, noise_sigma, size=shape).astype(np.float32)
    hu_i16 = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    if origin is None:
        origin = (-(nx - 1) * sx / 2.0, -(ny - 1) * sy / 2.0, 0.0)
    return Phantom(
        hu=hu_i16, labels=labels, spacing=(float(sz), float(sy), float(sx)), origin=tuple(map(float, origin))
    )


@dataclass(frozen=True)
class SliceGeometry:
    """Per-slice DICOM geometry: positions (n, 3) LPS mm and one ImageOrientationPatient."""

    positions: np.ndarray
    orientation: tuple[float, float, float, float, float, float]


def slice_geometry(
    n_slices: int,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = _IDENTITY_IOP,
    tilt_deg: float = 0.0,
    slice_positions: Sequence[float] | None = None,
) -> SliceGeometry:
    """Where `write_ct_series` puts each slice; tests use it to build pixel data consistent with geometry.

    Without tilt slices step along the normal (row x column direction). With tilt (axial orientation only)
    the planes are tilted like a GE scanner writes them, IOP [1,0,0, 0,cos,-sin], and the IPP steps
    along z only (the table axis) by sz / cos(tilt), so the distance between planes stays sz.
    `slice_positions` are explicit offsets in mm from `origin` along that stepping direction.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    if tilt_deg:
        if not np.allclose(iop, _IDENTITY_IOP):
            raise ValueError("tilt_deg needs the default axial orientation")
        t = math.radians(tilt_deg)
        iop = np.array([1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)])
        step_dir = np.array([0.0, 0.0, 1.0])
        step = spacing[0] / math.cos(t)
    else:
        step_dir = np.cross(iop[:3], iop[3:])
        step_dir /= np.linalg.norm(step_dir)
        step = spacing[0]
    if slice_positions is None:
        offsets = np.arange(n_slices, dtype=np.float64) * step
    else:
        offsets = np.asarray(slice_positions, dtype=np.float64)
        if offsets.shape != (n_slices,):
            raise ValueError(f"slice_positions needs {n_slices} values, got {offsets.shape}")
    positions = np.asarray(origin, dtype=np.float64)[None, :] + offsets[:, None] * step_dir[None, :]
    return SliceGeometry(positions=positions, orientation=tuple(float(round(v, 10)) for v in iop))


def _ds(value: float) -> str:
    """Format a number for a DS element (max 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.8g}"
    return text


def _common_dataset(
    *,
    sop_class: str,
    study_uid: str,
    series_uid: str,
    for_uid: str,
    patient_id: str,
    patient_name: str,
    rows: int,
    cols: int,
    pixel_representation: int,
    now: _dt.datetime,
    series_number: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    # patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "isonode phantom"
    # series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "procedural phantom"
    ds.PatientPosition = "FFS"
    # frame of reference
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    # equipment
    ds.Manufacturer = "isonode"
    ds.ManufacturerModelName = "phantom"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "isonode-phantom-1"
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_representation
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.BodyPartExamined = "CHEST"
    return ds


def _stored(hu: np.ndarray, pixel_representation: int) -> np.ndarray:
    """Stored value = HU + 1024 (intercept -1024), as uint16 or int16."""
    v = np.asarray(hu, dtype=np.int32) + 1024
    if pixel_representation == 0:
        return np.clip(v, 0, 65535).astype(np.uint16)
    return np.clip(v, -32768, 32767).astype(np.int16)


def _finish(ds: Dataset, transfer_syntax: UID, path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if transfer_syntax not in _UNCOMPRESSED:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(
    hu: np.ndarray,
    out_dir: Path | str,
    *,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = _IDENTITY_IOP,
    tilt_deg: float = 0.0,
    slice_positions: Sequence[float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    enhanced: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "PHANTOM",
    patient_name: str = "PHANTOM^ISONODE",
    series_number: int = 1,
    pixel_representation: int = 0,
) -> list[Path]:
    """Write `hu` (z, y, x) as CT Image Storage files (or one Enhanced CT object) and return the paths.

    Slice k holds hu[k] as is; geometry comes from `slice_geometry` (the writer never resamples, so
    tilted or unevenly spaced series hold exactly the pixels given). Stored values are HU + 1024 with
    RescaleIntercept -1024 (uint16 or, with pixel_representation=1, int16). Compressed syntaxes use
    pydicom's `compress()` with whatever encoder is installed (RLE, JPEG-LS, JPEG 2000).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be (z, y, x), got shape {hu.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nz, rows, cols = hu.shape
    geom = slice_geometry(nz, spacing, origin, orientation, tilt_deg, slice_positions)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    ts = UID(transfer_syntax)
    now = _dt.datetime(2024, 1, 1, 12, 0, 0)
    common = {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "for_uid": for_uid,
        "patient_id": patient_id,
        "patient_name": patient_name,
        "rows": rows,
        "cols": cols,
        "pixel_representation": pixel_representation,
        "now": now,
        "series_number": series_number,
    }
    pixel_spacing = [_ds(spacing[1]), _ds(spacing[2])]
    iop = [_ds(v) for v in geom.orientation]
    stored = _stored(hu, pixel_representation)
    if enhanced:
        return [_write_enhanced(stored, out, geom, pixel_spacing, iop, spacing, tilt_deg, ts, common)]
    paths = []
    normal = np.cross(np.asarray(geom.orientation[:3]), np.asarray(geom.orientation[3:]))
    for k in range(nz):
        ds = _common_dataset(sop_class=CTImageStorage, **common)
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in geom.positions[k]]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = _ds(spacing[0])
        ds.SliceLocation = _ds(float(geom.positions[k] @ normal))
        ds.GantryDetectorTilt = _ds(tilt_deg)
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        paths.append(_finish(ds, ts, out / f"CT{k + 1:04d}.dcm"))
    return paths


def _item(**kwargs: object) -> Dataset:
    item = Dataset()
    for key, value in kwargs.items():
        setattr(item, key, value)
    return item


def _write_enhanced(
    stored: np.ndarray,
    out: Path,
    geom: SliceGeometry,
    pixel_spacing: list[str],
    iop: list[str],
    spacing: tuple[float, float, float],
    tilt_deg: float,
    ts: UID,
    common: dict,
) -> Path:
    """One Enhanced CT Image Storage object; per-frame position, everything else shared."""
    nz = stored.shape[0]
    ds = _common_dataset(sop_class=EnhancedCTImageStorage, **common)
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = nz
    ds.ContentQualification = "RESEARCH"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = common["now"].strftime("%Y%m%d%H%M%S")
    ds.AcquisitionDuration = 1.0
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BitsStored = 16
    dim_uid = generate_uid()
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00200032,
                FunctionalGroupPointer=0x00209113,
                DimensionDescriptionLabel="Image Position",
            )
        ]
    )
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence(
        [_item(PixelSpacing=pixel_spacing, SliceThickness=_ds(spacing[0]))]
    )
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=iop)])
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")]
    )
    shared.CTImageFrameTypeSequence = DicomSequence(
        [
            _item(
                FrameType=["DERIVED", "PRIMARY", "AXIAL", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
            )
        ]
    )
    shared.FrameAnatomySequence = DicomSequence(
        [
            _item(
                FrameLaterality="U",
                AnatomicRegionSequence=DicomSequence(
                    [_item(CodeValue="51185008", CodingSchemeDesignator="SCT", CodeMeaning="Thorax")]
                ),
            )
        ]
    )
    shared.IrradiationEventIdentificationSequence = DicomSequence([_item(IrradiationEventUID=generate_uid())])
    shared.FrameVOILUTSequence = DicomSequence([_item(WindowCenter="40", WindowWidth="400")])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(nz):
        item = Dataset()
        item.FrameContentSequence = DicomSequence(
            [
                _item(
                    FrameAcquisitionDateTime=ds.AcquisitionDateTime,
                    FrameReferenceDateTime=ds.AcquisitionDateTime,
                    FrameAcquisitionDuration=1.0,
                    DimensionIndexValues=[k + 1],
                )
            ]
        )
        item.PlanePositionSequence = DicomSequence(
            [_item(ImagePositionPatient=[_ds(v) for v in geom.positions[k]])]
        )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    if tilt_deg:
        ds.GantryDetectorTilt = _ds(tilt_deg)
    ds.PixelData = stored.tobytes()
    return _finish(ds, ts, out / "ECT0001.dcm")


def write_phantom_series(phantom: Phantom, out_dir: Path | str, **kwargs: object) -> list[Path]:
    """`write_ct_series` with the phantom's own spacing and origin."""
    return write_ct_series(phantom.hu, out_dir, spacing=phantom.spacing, origin=phantom.origin, **kwargs)  # type: ignore[arg-type]
