"""What every result object the node writes shares: the segments it describes, the algorithm that made
them, the source series they derive from and the new series they belong to.

The Surface Segmentation writer (`surface_seg`), the SEG writer (`seg`) and the Secondary Capture writer
(`secondary_capture`) all take these, so one result series describes its segments, source and equipment the
same way in every object it holds; `result_iod` checks them, once for all three writers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.part10 import IMPLEMENTATION_VERSION_NAME


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 Code Sequence Macro): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentInfo:
    """One segment: `number` (1, 2, ... in order) as the DICOM objects number it, `label_value` as the
    label map holds it, and what it is (category and type codes, colour as sRGB 0-255).

    `description` is the Segment Description (0062,0006, ST; empty: not written), which every writer puts
    on the segment: a class the model bundle marks experimental says there, and in its `label`, that it
    is not validated, so no viewer shows it to a physician as a result (`experimental` records that)."""

    number: int
    label_value: int
    label: str
    category: Code
    type: Code
    color_rgb: tuple[int, int, int]
    tracking_id: str = ""
    description: str = ""
    experimental: bool = False


ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")  # CID 7162

# What an experimental segment says in every object: its Segment Label (LO, 64 characters) ends with the
# suffix, its Segment Description (ST) starts with the text (readers recognise it by that start).
EXPERIMENTAL_LABEL_SUFFIX = " (experimental)"
EXPERIMENTAL_DESCRIPTION = "EXPERIMENTAL: not validated for clinical use"
SEGMENT_LABEL_MAX = 64  # LO


def experimental_label(label: str) -> str:
    """`label` marked experimental within the 64 characters of LO (the name is shortened, never the mark)."""
    return label[: SEGMENT_LABEL_MAX - len(EXPERIMENTAL_LABEL_SUFFIX)] + EXPERIMENTAL_LABEL_SUFFIX


@dataclass(frozen=True)
class AlgorithmInfo:
    """The segmentation algorithm (Segment Identification: AUTOMATIC), from the model bundle."""

    name: str
    version: str
    family: Code = ARTIFICIAL_INTELLIGENCE


def experimental_description(algorithm: AlgorithmInfo) -> str:
    """The Segment Description of an experimental segment: not validated, and by which model."""
    return f"{EXPERIMENTAL_DESCRIPTION} (model {algorithm.name} {algorithm.version})"


@dataclass(frozen=True)
class Equipment:
    """Enhanced General Equipment (all Type 1 in both IODs): who made the object."""

    manufacturer: str = "isonode"
    model_name: str = "isonode CT edge appliance"
    software_version: str = IMPLEMENTATION_VERSION_NAME
    device_serial_number: str = field(default_factory=lambda: machine_serial())


def machine_serial() -> str:
    """A stable, non-identifying serial for this box: a hash of /etc/machine-id (or the host name)."""
    try:
        with open("/etc/machine-id", "rb") as f:
            raw = f.read().strip()
    except OSError:
        import socket

        raw = socket.gethostname().encode()
    return hashlib.sha256(raw).hexdigest()[:16].upper()


@dataclass(frozen=True)
class SourceRef:
    """One source frame: SOP class and instance UID, and the 1-based frame number for multi-frame
    (Enhanced CT) sources, else None."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class SourceSeries:
    """The CT series a result derives from. `header` is one source instance's data set without pixel
    data: the Patient, General Study and Patient Study attributes are copied from it. `instances` are
    the source frames in volume order (array slice order for a regular stack)."""

    header: Dataset
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    instances: tuple[SourceRef, ...]


@dataclass(frozen=True)
class ResultSeries:
    """The new series an object belongs to (preview and full are separate series)."""

    series_instance_uid: str
    series_number: int
    series_description: str
    content_label: str  # CS, e.g. PREVIEW or FULL (upper case, digits, underscore, space; 16 chars)
    content_description: str = ""
    instance_number: int = 1


# sRGB (IEC 61966-2-1) primaries to CIE XYZ; the D65 white is taken as the matrix's row sums so that
# sRGB white lands exactly on a* = b* = 0 (PS3.3 C.10.7.1.1 encodes 0 as 0x8080).
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE_D65 = _SRGB_TO_XYZ.sum(axis=1)
_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_DELTA = 6.0 / 29.0


def srgb_to_dicom_lab(rgb: Sequence[int]) -> tuple[int, int, int]:
    """sRGB 0-255 -> Recommended Display CIELab Value (L* 0..100 and a*, b* -128..127 scaled to 0..65535)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = (_SRGB_TO_XYZ @ linear) / _WHITE_D65
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lab = np.array([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])
    scaled = np.array([lab[0] * 65535.0 / 100.0, *((lab[1:] + 128.0) * 65535.0 / 255.0)])
    v = np.clip(np.rint(scaled), 0, 65535).astype(int)
    return int(v[0]), int(v[1]), int(v[2])


def dicom_lab_to_srgb(lab: Sequence[int]) -> tuple[int, int, int]:
    """Inverse of `srgb_to_dicom_lab` (out-of-gamut colours are clipped to 0-255)."""
    v = np.asarray(lab, dtype=np.float64)
    L, a, b = v[0] * 100.0 / 65535.0, v[1] * 255.0 / 65535.0 - 128.0, v[2] * 255.0 / 65535.0 - 128.0
    fy = (L + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    linear = np.clip(_XYZ_TO_SRGB @ xyz, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    out = np.clip(np.rint(c * 255.0), 0, 255).astype(int)
    return int(out[0]), int(out[1]), int(out[2])


def part10_bytes(ds: Dataset) -> bytes:
    """The data set as a Part-10 file (Explicit VR Little Endian, our implementation identity), ready for
    `store_durably`: result objects are written whole, then renamed into place."""
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from dicom_node.part10 import IMPLEMENTATION_CLASS_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
