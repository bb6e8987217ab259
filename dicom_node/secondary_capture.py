"""Multi-frame True Color Secondary Capture Image (PS3.3 A.8.5, SOP class 1.2.840.10008.5.1.4.1.1.7.4):
the rendered 3D view of a result, which every PACS viewer shows, unlike Surface Segmentation and SEG.

`MultiFrameTrueColorSC` is a pydicom `Dataset` subclass, in highdicom's style and like
`surface_seg.SurfaceSegmentation`: constructing one checks every input (the error names the attribute at
fault) and builds every module; encode it with `derived.part10_bytes` (Explicit VR Little Endian,
uncompressed: every viewer decodes it, and four 512x512 RGB frames are 3 MB).

Modules written (PS3.3 A.8.5.4): Patient, General Study and Patient Study copied from the source header
as the other result objects copy them; General Series of the result series (Modality SEG, the series'
modality: the view sits beside the Surface Segmentation and SEG of the same result series); General
Equipment and SC Equipment (Conversion Type WSD, a workstation made it); General Image (DERIVED\\
SECONDARY, derivation description and codes, every source instance in Source Image Sequence, Burned In
Annotation YES since names and orientation letters are in the pixels); Image Pixel (RGB, 8 bits, Planar
Configuration 0: colour-by-pixel); Multi-frame with Frame Increment Pointer to Frame Label Vector (SC
Multi-frame Vector: one label per frame, e.g. ANTERIOR), which the SC Multi-frame Image Module allows and
which needs no Cine module, since the frames are views, not times; SC Image; Common Instance Reference;
SOP Common.

Not written: Patient Orientation is present and empty (Type 2: the frames look from different sides, and
one value would be wrong for all but one) and Recognizable Visual Features is left out (a translucent body
surface may or may not show a face; the attribute is Type 3 and a wrong NO is worse than none).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from copy import deepcopy
from datetime import datetime

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import RE_VALID_UID, generate_uid

from dicom_node.derived import (
    Code,
    Equipment,
    ResultSeries,
    SourceSeries,
    dcm_meaning_conflict,
    header_to_copy,
)

# the Patient / Study attributes every result object copies from the source, listed in one place
from dicom_node.surface_seg import _COPIED as COPIED_FROM_SOURCE
from dicom_node.surface_seg import PATIENT_TYPE2, STUDY_TYPE2, _copy_from

log = logging.getLogger(__name__)

MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7.4"
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")  # CID 7202
DERIVATION_CODES = (Code("113076", "DCM", "Segmentation"), Code("113075", "DCM", "Surface rendering"))  # CID 7203

_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_MAX_VALUE_BYTES = 0xFFFFFFFE


class SecondaryCaptureError(ValueError):
    """Bad input for the Secondary Capture; the message names the argument and the attribute it feeds."""


def _fail(message: str) -> SecondaryCaptureError:
    return SecondaryCaptureError(message)


def _uid(value: object, attr: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not RE_VALID_UID.match(value):
        raise _fail(f"{attr} is missing or not a valid UID")
    return value


def _text(value: object, attr: str, max_len: int, *, required: bool = False, multi_line: bool = False) -> str:
    """A text value within its VR's length, without backslash (a value separator) or control characters
    (line breaks allowed where the VR takes them: ST, LT)."""
    if not isinstance(value, str):
        raise _fail(f"{attr} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _fail(f"{attr} is empty (Type 1)")
    if len(value) > max_len:
        raise _fail(f"{attr} is {len(value)} characters long, more than {max_len}")
    allowed = "\r\n" if multi_line else ""
    if (not multi_line and "\\" in value) or any(ord(ch) < 32 and ch not in allowed for ch in value):
        raise _fail(f"{attr} contains a backslash or a control character")
    return value


def _int(value: object, attr: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        raise _fail(f"{attr} must be a non-negative integer, got {value!r}")
    return value


def _check_frames(frames: object) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise _fail(f"frames (Pixel Data) must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise _fail(f"frames (Pixel Data) must be uint8 (Bits Allocated 8), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise _fail("frames (Pixel Data) must have shape (frames, rows, columns, 3) for RGB (Samples per Pixel 3), "
                    f"got {frames.shape}")
    if frames.shape[0] == 0:
        raise _fail("frames holds no frame (Number of Frames must be at least 1)")
    if not 1 <= frames.shape[1] <= 65535 or not 1 <= frames.shape[2] <= 65535:
        raise _fail(f"frames: Rows and Columns must be 1..65535, got {frames.shape[1]} x {frames.shape[2]}")
    if frames.nbytes > _MAX_VALUE_BYTES:
        raise _fail(f"frames: {frames.nbytes} bytes do not fit one Pixel Data value")
    return frames


def _check_source(source: object) -> SourceSeries:
    if not isinstance(source, SourceSeries):
        raise _fail(f"source must be a SourceSeries, got {type(source).__name__}")
    _uid(source.study_instance_uid, "source.study_instance_uid (Study Instance UID)")
    _uid(source.series_instance_uid, "source.series_instance_uid (Referenced Series Instance UID)")
    if not isinstance(source.header, Dataset):
        raise _fail("source.header must be a pydicom Dataset")
    header_study = source.header.get("StudyInstanceUID")
    if header_study and str(header_study) != source.study_instance_uid:
        raise _fail("source.study_instance_uid differs from Study Instance UID in source.header")
    if not source.instances:
        raise _fail("source.instances is empty: Source Image Sequence needs the source instances")
    for k, ref in enumerate(source.instances):
        _uid(getattr(ref, "sop_class_uid", None), f"source.instances[{k}].sop_class_uid (Referenced SOP Class UID)")
        _uid(getattr(ref, "sop_instance_uid", None),
             f"source.instances[{k}].sop_instance_uid (Referenced SOP Instance UID)")
        frame = ref.frame_number
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
            raise _fail(f"source.instances[{k}].frame_number (Referenced Frame Number) must be None or an "
                        f"integer >= 1, got {frame!r}")
    return source


def _code_item(code: Code, attr: str) -> Dataset:
    known = dcm_meaning_conflict(code)
    if known is not None:
        raise _fail(f"{attr}: DCM code {code.value} means {known!r} (PS3.16), not {code.meaning!r}")
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


class MultiFrameTrueColorSC(Dataset):
    """A Multi-frame True Color Secondary Capture of rendered views, in the result series `series`.

    `frames`: (frames, rows, columns, 3) uint8 RGB, row 0 at the top. `frame_labels`: one Frame Label
    Vector value (SH, at most 16 characters) per frame, e.g. the view names. `derivation_description`
    says how the picture was made; `image_comments` what a reader must know (e.g. "PREVIEW - not for
    diagnosis alone"). Raises SecondaryCaptureError naming the argument and attribute at fault.
    """

    def __init__(
        self,
        source: SourceSeries,
        series: ResultSeries,
        frames: np.ndarray,
        frame_labels: Sequence[str],
        equipment: Equipment,
        *,
        derivation_description: str = "",
        image_comments: str = "",
        sop_instance_uid: str | None = None,
        content_datetime: datetime | None = None,
    ) -> None:
        super().__init__()
        _check_source(source)
        pixels = _check_frames(frames)
        if isinstance(frame_labels, str) or not isinstance(frame_labels, Sequence):
            raise _fail("frame_labels (Frame Label Vector) must be a sequence of strings, one per frame")
        if len(frame_labels) != len(pixels):
            raise _fail(f"frame_labels (Frame Label Vector) has {len(frame_labels)} values for "
                        f"{len(pixels)} frames (Number of Frames)")
        labels = [_text(v, f"frame_labels[{k}] (Frame Label Vector, SH)", 16, required=True)
                  for k, v in enumerate(frame_labels)]
        if not isinstance(series, ResultSeries):
            raise _fail(f"series must be a ResultSeries, got {type(series).__name__}")
        if not isinstance(equipment, Equipment):
            raise _fail(f"equipment must be an Equipment, got {type(equipment).__name__}")
        series_uid = _uid(series.series_instance_uid, "series.series_instance_uid (Series Instance UID)")
        if series_uid == source.series_instance_uid:
            raise _fail("series.series_instance_uid equals the source's Series Instance UID: a result is a new "
                        "series")
        sop_uid = _uid(sop_instance_uid or generate_uid(), "sop_instance_uid (SOP Instance UID)")
        when = content_datetime or datetime.now()
        if not isinstance(when, datetime):
            raise _fail(f"content_datetime must be a datetime, got {type(when).__name__}")
        own: list[str] = []  # text written here, checked against the Specific Character Set at the end

        def mine(value: str) -> str:
            own.append(value)
            return value

        # Patient, Clinical Trial Subject, General Study, Patient Study, Clinical Trial Study
        header = header_to_copy(source.header, PATIENT_TYPE2 + STUDY_TYPE2)
        for kw in PATIENT_TYPE2 + STUDY_TYPE2:
            _copy_from(header, self, kw, type2=True)
        for kw in COPIED_FROM_SOURCE:
            _copy_from(header, self, kw, type2=False)
        self.StudyInstanceUID = source.study_instance_uid

        date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
        # SOP Common
        self.SOPClassUID = MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID
        self.SOPInstanceUID = sop_uid
        self.InstanceCreationDate, self.InstanceCreationTime = date, time
        # General Series
        self.Modality = "SEG"
        self.SeriesInstanceUID = series_uid
        self.SeriesNumber = _int(series.series_number, "series.series_number (Series Number)")
        self.SeriesDescription = mine(_text(series.series_description,
                                            "series.series_description (Series Description)", 64))
        self.SeriesDate, self.SeriesTime = date, time
        # the source's body part and laterality; Laterality (Type 2C, for a paired part) is empty, i.e.
        # unknown, only where the source names no body part (an unpaired part needs none)
        _copy_from(header, self, "BodyPartExamined", type2=False)
        _copy_from(header, self, "Laterality", type2="BodyPartExamined" not in self)
        # General Equipment + SC Equipment
        for kw, value, attr in (
            ("Manufacturer", equipment.manufacturer, "equipment.manufacturer (Manufacturer)"),
            ("ManufacturerModelName", equipment.model_name, "equipment.model_name (Manufacturer's Model Name)"),
            ("DeviceSerialNumber", equipment.device_serial_number,
             "equipment.device_serial_number (Device Serial Number)"),
            ("SoftwareVersions", equipment.software_version, "equipment.software_version (Software Versions)"),
        ):
            setattr(self, kw, mine(_text(value, attr, 64, required=True)))
        self.ConversionType = "WSD"
        self.SecondaryCaptureDeviceManufacturer = self.Manufacturer
        self.SecondaryCaptureDeviceManufacturerModelName = self.ManufacturerModelName
        self.SecondaryCaptureDeviceSoftwareVersions = self.SoftwareVersions
        # General Image
        self.InstanceNumber = _int(series.instance_number, "series.instance_number (Instance Number)")
        self.PatientOrientation = None  # Type 2, empty: each frame looks from another side
        self.ContentDate, self.ContentTime = date, time
        self.ImageType = ["DERIVED", "SECONDARY"]
        self.DerivationDescription = mine(_text(derivation_description,
                                                "derivation_description (Derivation Description, ST)", 1024,
                                                multi_line=True))
        self.DerivationCodeSequence = DicomSequence(
            [_code_item(c, "Derivation Code Sequence") for c in DERIVATION_CODES])
        self.SourceImageSequence = DicomSequence(_source_image_items(source))
        if image_comments:
            self.ImageComments = mine(_text(image_comments, "image_comments (Image Comments, LT)", 10240,
                                            multi_line=True))
        self.BurnedInAnnotation = "YES"
        self.LossyImageCompression = "00"
        # SC Image
        self.DateOfSecondaryCapture, self.TimeOfSecondaryCapture = date, time
        # Image Pixel
        n, rows, cols, _ = pixels.shape
        self.SamplesPerPixel = 3
        self.PhotometricInterpretation = "RGB"
        self.PlanarConfiguration = 0
        self.Rows, self.Columns = rows, cols
        self.BitsAllocated, self.BitsStored, self.HighBit = 8, 8, 7
        self.PixelRepresentation = 0
        # Multi-frame + SC Multi-frame Vector
        self.NumberOfFrames = n
        self.FrameIncrementPointer = Tag(tag_for_keyword("FrameLabelVector"))
        self.FrameLabelVector = [mine(v) for v in labels]
        # Common Instance Reference: the source series, same study
        series_item = Dataset()
        series_item.SeriesInstanceUID = source.series_instance_uid
        series_item.ReferencedInstanceSequence = DicomSequence(
            [_reference(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in self.SourceImageSequence])
        self.ReferencedSeriesSequence = DicomSequence([series_item])
        self._character_set(header, own)
        self.add_new(0x7FE00010, "OB", np.ascontiguousarray(pixels).tobytes())
        log.info("event=secondary_capture_built sop_instance_uid=%s frames=%d rows=%d columns=%d", sop_uid, n,
                 rows, cols)

    def _character_set(self, header: Dataset, own: list[str]) -> None:
        """Keep the source's Specific Character Set where it encodes every text written here, else UTF-8
        (ISO_IR 192 encodes anything, the copied patient data included: pydicom decoded it)."""
        charset = header.get("SpecificCharacterSet")
        extra = [t for t in own if not t.isascii()]
        if charset:
            self.SpecificCharacterSet = charset
        if not extra:
            return
        values = [charset] if isinstance(charset, str) else list(charset or [])
        if len(values) == 1:
            try:
                codec = convert_encodings(values)[0]
                for text in extra:
                    text.encode(codec)
                return
            except (LookupError, UnicodeEncodeError):
                pass
        self.SpecificCharacterSet = "ISO_IR 192"


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _source_image_items(source: SourceSeries) -> list[Dataset]:
    """One Source Image Sequence item per source instance (frames listed for multi-frame sources), each
    saying it was the input of an image processing operation."""
    frames: dict[str, tuple[str, list[int]]] = {}
    for ref in source.instances:
        entry = frames.setdefault(ref.sop_instance_uid, (ref.sop_class_uid, []))
        if ref.frame_number is not None:
            entry[1].append(ref.frame_number)
    purpose = _code_item(SOURCE_FOR_PROCESSING, "Purpose of Reference Code Sequence")
    items = []
    for sop_instance, (sop_class, numbers) in frames.items():
        item = _reference(sop_class, sop_instance)
        if numbers:
            item.ReferencedFrameNumber = sorted(set(numbers))
        item.PurposeOfReferenceCodeSequence = DicomSequence([deepcopy(purpose)])
        items.append(item)
    return items
