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
from collections.abc import Sequence
from copy import deepcopy
from datetime import datetime

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from dicom_node import result_iod
from dicom_node.derived import Code, Equipment, ResultSeries, SourceSeries

log = logging.getLogger(__name__)

MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7.4"
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")  # CID 7202
DERIVATION_CODES = (Code("113076", "DCM", "Segmentation"), Code("113075", "DCM", "Surface rendering"))  # CID 7203

_MAX_VALUE_BYTES = 0xFFFFFFFE


class SecondaryCaptureError(ValueError):
    """Bad input for the Secondary Capture; the message names the argument and the attribute it feeds."""


_check = result_iod.InputChecks(SecondaryCaptureError)
_fail = _check.fail


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


def _code_item(code: Code, attr: str) -> Dataset:
    return result_iod.code_item(_check.code(code, attr))


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
        _check.source(source, frame_of_reference=False)
        pixels = _check_frames(frames)
        if isinstance(frame_labels, str) or not isinstance(frame_labels, Sequence):
            raise _fail("frame_labels (Frame Label Vector) must be a sequence of strings, one per frame")
        if len(frame_labels) != len(pixels):
            raise _fail(f"frame_labels (Frame Label Vector) has {len(frame_labels)} values for "
                        f"{len(pixels)} frames (Number of Frames)")
        labels = [_check.text(v, f"frame_labels[{k}] (Frame Label Vector, SH)", 16, required=True)
                  for k, v in enumerate(frame_labels)]
        _check.series(series, source.series_instance_uid)
        _check.equipment(equipment)
        derivation = _check.text(derivation_description, "derivation_description (Derivation Description, ST)",
                                 1024, required=False, multi_line=True)
        comments = _check.text(image_comments, "image_comments (Image Comments, LT)", 10240, required=False,
                               multi_line=True)
        sop_uid = _check.uid(sop_instance_uid or generate_uid(), "sop_instance_uid (SOP Instance UID)")
        when = _check.when(content_datetime)
        own: list[str] = []  # text written here, checked against the Specific Character Set at the end

        def mine(value: str) -> str:
            own.append(value)
            return value

        # Patient, Clinical Trial Subject, General Study, Patient Study, Clinical Trial Study
        header = result_iod.copy_patient_and_study(source, self)

        # SOP Common, General Series, and of General Image the Instance Number and Content Date and Time
        date, time = result_iod.write_sop_and_series(self, MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID, sop_uid, series,
                                                     when)
        mine(series.series_description)
        # the source's body part and laterality; Laterality (Type 2C, for a paired part) is empty, i.e.
        # unknown, only where the source names no body part (an unpaired part needs none)
        result_iod.copy_attribute(header, self, "BodyPartExamined", type2=False)
        result_iod.copy_attribute(header, self, "Laterality", type2="BodyPartExamined" not in self)
        # General Equipment + SC Equipment
        for field, kw, _ in result_iod.EQUIPMENT_ATTRIBUTES:
            setattr(self, kw, mine(getattr(equipment, field)))
        self.ConversionType = "WSD"
        self.SecondaryCaptureDeviceManufacturer = self.Manufacturer
        self.SecondaryCaptureDeviceManufacturerModelName = self.ManufacturerModelName
        self.SecondaryCaptureDeviceSoftwareVersions = self.SoftwareVersions
        # General Image
        self.PatientOrientation = None  # Type 2, empty: each frame looks from another side
        self.ImageType = ["DERIVED", "SECONDARY"]
        self.DerivationDescription = mine(derivation)
        self.DerivationCodeSequence = DicomSequence(
            [_code_item(c, "Derivation Code Sequence") for c in DERIVATION_CODES])
        self.SourceImageSequence = DicomSequence(_source_image_items(source))
        if comments:
            self.ImageComments = mine(comments)
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
        self.ReferencedSeriesSequence = result_iod.referenced_series_sequence(source)
        self._character_set(header, own)
        self.add_new(0x7FE00010, "OB", np.ascontiguousarray(pixels).tobytes())
        log.info("event=secondary_capture_built sop_instance_uid=%s frames=%d rows=%d columns=%d", sop_uid, n,
                 rows, cols)

    def _character_set(self, header: Dataset, own: list[str]) -> None:
        """Keep the source's Specific Character Set where it encodes every text written here, else UTF-8
        (ISO_IR 192 encodes anything, the copied patient data included: pydicom decoded it)."""
        charset = header.get("SpecificCharacterSet")
        if charset:
            self.SpecificCharacterSet = charset
        if not result_iod.charset_encodes(charset, own):
            self.SpecificCharacterSet = "ISO_IR 192"


def _source_image_items(source: SourceSeries) -> list[Dataset]:
    """One Source Image Sequence item per source instance (frames listed for multi-frame sources), each
    saying it was the input of an image processing operation."""
    purpose = _code_item(SOURCE_FOR_PROCESSING, "Purpose of Reference Code Sequence")
    items = result_iod.source_instance_items(source)
    for item in items:
        item.PurposeOfReferenceCodeSequence = DicomSequence([deepcopy(purpose)])
    return items
