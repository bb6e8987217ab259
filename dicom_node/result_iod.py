"""What the three result-object writers share: one set of input checks, one list of what is copied from the
source, and the small items every one of them builds.

The writers are `surface_seg` (Surface Segmentation), `seg` (SEG, through highdicom) and `secondary_capture`
(the rendered view). They take the same inputs (`derived.SegmentInfo`, `AlgorithmInfo`, `Equipment`,
`ResultSeries`, `SourceSeries`) and put them into objects of one result series, so they must accept and
refuse the same things, name the argument and the DICOM attribute at fault the same way, and copy the same
Patient and Study attributes from the source. Kept here, once, so that a rule changed for one writer changes
for all of them:

* `InputChecks`: validators bound to a writer's own error class (each raises `SegError`,
  `SurfaceSegmentationError` or `SecondaryCaptureError`, which the worker counts as permanent failures),
  from single values (UID, text of a VR, integer, code, with `dcm_meaning_conflict`) up to whole
  dataclasses (segments, algorithm, equipment with `EQUIPMENT_ATTRIBUTES`, result series, source series). Messages name the argument, then the attribute in parentheses,
  e.g. ``series.series_number (Series Number) must be a non-negative integer, got -1``, and never quote
  patient data (nothing checked here holds any).
* `PATIENT_TYPE2`, `STUDY_TYPE2`, `COPIED_FROM_SOURCE`, `header_to_copy`, `copy_patient_and_study`: the
  Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study attributes every
  result object copies from the source header.
* `write_sop_and_series`, `code_item`, `source_instance_items`, `referenced_series_sequence`,
  `charset_encodes`: SOP Common and General Series, a Code Sequence Macro item, the source references
  (Image SOP Instance Reference Macro, Common Instance Reference) and the Specific Character Set test,
  built the same way in every object (the SEG's by highdicom, which uses only `charset_encodes`).

Checks that belong to one IOD only (mesh arithmetic, SEG label values that must fit a uint8 label map,
Secondary Capture frames) stay in their writer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from copy import deepcopy
from datetime import datetime
from functools import cache

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RE_VALID_UID

from dicom_node.derived import AlgorithmInfo, Code, Equipment, ResultSeries, SegmentInfo, SourceSeries

# ------------------------------------------------------------------------------------ copied from the source

# Attributes copied from the source header when present (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.2,
# C.7.2.3). The Type 2 ones are written empty when the source lacks them.
PATIENT_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_TYPE2 = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
COPIED_FROM_SOURCE = (
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

DEIDENTIFIED_WITHOUT_METHOD = "Identity removed upstream; method not stated in the source"


def header_to_copy(first: Dataset, type2_keywords: Sequence[str] = PATIENT_TYPE2 + STUDY_TYPE2) -> Dataset:
    """The source header as a result object should copy Patient and Study from it: absent Type 2
    attributes present and empty, and a de-identification method named where the source claims removed
    identity without one (a Type 1C error in the result otherwise). A copy when anything changes, never
    the caller's."""
    missing = [kw for kw in type2_keywords if kw not in first]
    no_method = (
        str(first.get("PatientIdentityRemoved", "")).upper() == "YES"
        and not first.get("DeidentificationMethod")
        and not first.get("DeidentificationMethodCodeSequence")
    )
    if not missing and not no_method:
        return first
    header = deepcopy(first)
    for kw in missing:
        setattr(header, kw, "")
    if no_method:
        header.DeidentificationMethod = DEIDENTIFIED_WITHOUT_METHOD
    return header


def copy_attribute(header: Dataset, target: Dataset, keyword: str, *, type2: bool) -> None:
    """Copy `keyword` from `header` to `target` when present; write it empty when absent and `type2`."""
    tag = tag_for_keyword(keyword)
    if tag is None:  # not in this pydicom's dictionary
        return
    if tag in header:
        target.add(deepcopy(header[tag]))
    elif type2:
        setattr(target, keyword, None)


def copy_patient_and_study(source: SourceSeries, target: Dataset) -> Dataset:
    """Write the Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study
    attributes of `source` into `target`; returns the header they were copied from (`header_to_copy`)."""
    header = header_to_copy(source.header)
    for kw in PATIENT_TYPE2 + STUDY_TYPE2:
        copy_attribute(header, target, kw, type2=True)
    for kw in COPIED_FROM_SOURCE:
        copy_attribute(header, target, kw, type2=False)
    target.StudyInstanceUID = source.study_instance_uid
    return header


# --------------------------------------------------------------------------------------------- input checks

_CS = re.compile(r"[A-Z0-9_ ]{1,16}")
_URN_PREFIXES = ("urn:", "http://", "https://")  # URN Code Value (UR) rather than Code Value
_UR_MAX = 0xFFFFFFFE

# Equipment field, attribute keyword and name: all Type 1 LO in every result object
EQUIPMENT_ATTRIBUTES = (
    ("manufacturer", "Manufacturer", "Manufacturer"),
    ("model_name", "ManufacturerModelName", "Manufacturer's Model Name"),
    ("device_serial_number", "DeviceSerialNumber", "Device Serial Number"),
    ("software_version", "SoftwareVersions", "Software Versions"),
)


@cache
def _dcm_meanings() -> dict[str, str]:
    """Code value -> meaning of the DICOM (DCM) coding scheme, from pydicom's copy of PS3.16."""
    from pydicom.sr.codedict import codes

    return {c.value: c.meaning for c in codes.DCM.concepts.values()}


def dcm_meaning_conflict(code: Code) -> str | None:
    """PS3.16's meaning of a DCM code whose stated meaning differs from it, else None: a wrong value under
    a plausible meaning passes every validator and misleads every reader, so every writer refuses it."""
    if code.scheme != "DCM":
        return None
    known = _dcm_meanings().get(code.value)
    return known if known is not None and known.casefold() != str(code.meaning).casefold() else None


class InputChecks:
    """The input checks of one writer: every method raises `error` (the writer's ValueError subclass) with a
    message naming the argument and the attribute at fault, and returns what it checked."""

    def __init__(self, error: type[ValueError]) -> None:
        self.error = error

    def fail(self, message: str) -> ValueError:
        return self.error(message)

    # -- single values

    def uid(self, value: object, attr: str) -> str:
        if not isinstance(value, str) or len(value) > 64 or not RE_VALID_UID.fullmatch(value):
            raise self.fail(f"{attr} is missing or not a valid UID")
        return value

    def text(self, value: object, attr: str, max_len: int, *, required: bool,
             multi_line: bool = False) -> str:
        """A text value within its VR's length, without backslash (a value separator) or control characters
        (line breaks allowed where the VR takes them: ST, LT, and a backslash there too)."""
        if not isinstance(value, str):
            raise self.fail(f"{attr} must be a string, got {type(value).__name__}")
        if required and not value.strip():
            raise self.fail(f"{attr} is empty (Type 1)")
        if len(value) > max_len:
            raise self.fail(f"{attr} is {len(value)} characters long, more than {max_len}")
        allowed = "\r\n" if multi_line else ""
        if (not multi_line and "\\" in value) or any(ord(ch) < 32 and ch not in allowed for ch in value):
            raise self.fail(f"{attr} contains a backslash or a control character")
        return value

    def count(self, value: object, attr: str) -> int:
        """A non-negative integer that fits IS and a signed 32-bit value (series and instance numbers)."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
            raise self.fail(f"{attr} must be a non-negative integer, got {value!r}")
        return value

    def when(self, value: object) -> datetime:
        """The content date and time: `value`, or now when None."""
        when = value or datetime.now()
        if not isinstance(when, datetime):
            raise self.fail(f"content_datetime must be a datetime, got {type(when).__name__}")
        return when

    def code(self, code: object, attr: str) -> Code:
        """A Code Sequence Macro item's content: a value (at most 64 characters, unless a URN or URL, which
        goes to URN Code Value), a coding scheme designator (SH) and a meaning (LO), all Type 1; a DCM code
        must mean what PS3.16 says it means (`dcm_meaning_conflict`)."""
        if not isinstance(code, Code):
            raise self.fail(f"{attr} must be a Code, got {type(code).__name__}")
        value = code.value
        if isinstance(value, str) and value.startswith(_URN_PREFIXES):
            self.text(value, f"{attr} code value", _UR_MAX, required=True)
        else:
            self.text(value, f"{attr} code value", 64, required=True)
        self.text(code.scheme, f"{attr} coding scheme designator", 16, required=True)
        self.text(code.meaning, f"{attr} code meaning", 64, required=True)
        known = dcm_meaning_conflict(code)
        if known is not None:
            raise self.fail(f"{attr}: DCM code {code.value} means {known!r} (PS3.16), not {code.meaning!r}")
        return code

    # -- the shared dataclasses

    def segments(self, segments: object, argument: str = "segments") -> Sequence[SegmentInfo]:
        """SegmentInfo items numbered 1, 2, ... n in order, each with a non-negative label value, a label,
        category and type codes, a colour and an optional tracking id. `argument` names the caller's
        argument in messages."""
        if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence) or len(segments) == 0:
            raise self.fail(f"{argument}: at least one segment is required (Segment Sequence is Type 1)")
        for i, seg in enumerate(segments, start=1):
            if not isinstance(seg, SegmentInfo):
                raise self.fail(f"{argument}[{i - 1}] must be a SegmentInfo, got {type(seg).__name__}")
            if isinstance(seg.number, bool) or not isinstance(seg.number, int) or seg.number != i:
                raise self.fail(f"Segment Number of {argument}[{i - 1}] is {seg.number!r}: segment numbers "
                                "must be 1, 2, ... n in order")
            what = f"segment {i}"
            value = seg.label_value
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(f"{what} label_value must be a non-negative integer, got {value!r}")
            self.text(seg.label, f"{what} label (Segment Label)", 64, required=True)
            self.code(seg.category, f"{what} category (Segmented Property Category Code Sequence)")
            self.code(seg.type, f"{what} type (Segmented Property Type Code Sequence)")
            rgb = seg.color_rgb
            if (not isinstance(rgb, (tuple, list)) or len(rgb) != 3
                    or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c <= 255
                           for c in rgb)):
                raise self.fail(f"{what} color_rgb (Recommended Display CIELab Value) must be three integers "
                                f"0-255, got {rgb!r}")
            self.text(seg.tracking_id, f"{what} tracking_id (Tracking ID)", 64, required=False)
        return segments

    def algorithm(self, algorithm: object, attr: str = "algorithm") -> AlgorithmInfo:
        """An AlgorithmInfo for the Algorithm Identification Macro: family code, name and version (Type 1)."""
        if not isinstance(algorithm, AlgorithmInfo):
            raise self.fail(f"{attr} must be an AlgorithmInfo, got {type(algorithm).__name__}")
        self.text(algorithm.name, f"{attr}.name (Algorithm Name)", 64, required=True)
        self.text(algorithm.version, f"{attr}.version (Algorithm Version)", 64, required=True)
        self.code(algorithm.family, f"{attr}.family (Algorithm Family Code Sequence)")
        return algorithm

    def equipment(self, equipment: object) -> Equipment:
        """An Equipment whose four values are Type 1 LO text."""
        if not isinstance(equipment, Equipment):
            raise self.fail(f"equipment must be an Equipment, got {type(equipment).__name__}")
        for field, _, name in EQUIPMENT_ATTRIBUTES:
            self.text(getattr(equipment, field), f"equipment.{field} ({name})", 64, required=True)
        return equipment

    def series(self, series: object, source_series_uid: str) -> ResultSeries:
        """A ResultSeries: a valid UID other than the source series' (a result is a new series), series
        and instance numbers, descriptions (LO) and a Content Label (CS)."""
        if not isinstance(series, ResultSeries):
            raise self.fail(f"series must be a ResultSeries, got {type(series).__name__}")
        uid = self.uid(series.series_instance_uid, "series.series_instance_uid (Series Instance UID)")
        if uid == source_series_uid:
            raise self.fail("series.series_instance_uid equals the source's Series Instance UID: a result is "
                            "a new series")
        self.count(series.series_number, "series.series_number (Series Number)")
        self.count(series.instance_number, "series.instance_number (Instance Number)")
        self.text(series.series_description, "series.series_description (Series Description)", 64,
                  required=False)
        self.text(series.content_description, "series.content_description (Content Description)", 64,
                  required=False)
        if not isinstance(series.content_label, str) or not _CS.fullmatch(series.content_label):
            raise self.fail("series.content_label (Content Label, CS) must be 1-16 upper-case letters, "
                            f"digits, underscore or space, got {series.content_label!r}")
        return series

    def source(self, source: object, *, frame_of_reference: bool) -> SourceSeries:
        """A SourceSeries: valid UIDs (the Frame of Reference's where the object is in it), a header of the
        same study, and at least one source instance with valid UIDs and frame numbers."""
        if not isinstance(source, SourceSeries):
            raise self.fail(f"source must be a SourceSeries, got {type(source).__name__}")
        self.uid(source.study_instance_uid, "source.study_instance_uid (Study Instance UID)")
        self.uid(source.series_instance_uid, "source.series_instance_uid (Series Instance UID)")
        if frame_of_reference:
            self.uid(source.frame_of_reference_uid, "source.frame_of_reference_uid (Frame of Reference UID)")
        if not isinstance(source.header, Dataset):
            raise self.fail("source.header must be a pydicom Dataset")
        header_study = source.header.get("StudyInstanceUID")
        if header_study and str(header_study) != source.study_instance_uid:
            raise self.fail("source.study_instance_uid differs from Study Instance UID in source.header")
        if not source.instances:
            raise self.fail("source.instances is empty: the object must reference the source instances it "
                            "derives from")
        for k, ref in enumerate(source.instances):
            self.uid(getattr(ref, "sop_class_uid", None),
                     f"source.instances[{k}].sop_class_uid (Referenced SOP Class UID)")
            self.uid(getattr(ref, "sop_instance_uid", None),
                     f"source.instances[{k}].sop_instance_uid (Referenced SOP Instance UID)")
            frame = getattr(ref, "frame_number", None)
            if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
                raise self.fail(f"source.instances[{k}].frame_number (Referenced Frame Number) must be None "
                                f"or an integer >= 1, got {frame!r}")
        return source


# ------------------------------------------------------------------------------------------- shared items


def write_sop_and_series(ds: Dataset, sop_class_uid: str, sop_instance_uid: str, series: ResultSeries,
                         when: datetime) -> tuple[str, str]:
    """SOP Common (class, instance, creation date and time), General Series (Modality SEG: every result
    object sits in one segmentation series), Instance Number and Content Date and Time, all at `when`, of a
    checked `series` (`InputChecks.series`). Returns `when` as DA and TM values for other dates."""
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.InstanceNumber = series.instance_number
    ds.ContentDate, ds.ContentTime = date, time
    return date, time


def code_item(code: Code) -> Dataset:
    """Code Sequence Macro item of a checked code (`InputChecks.code`); values over 16 characters go to
    Long Code Value, URNs and URLs to URN Code Value."""
    item = Dataset()
    if code.value.startswith(_URN_PREFIXES):
        item.URNCodeValue = code.value
    elif len(code.value) > 16:
        item.LongCodeValue = code.value
    else:
        item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def instance_reference(sop_class: str, sop_instance: str) -> Dataset:
    """SOP Instance Reference Macro item."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def source_instance_items(source: SourceSeries) -> list[Dataset]:
    """Image SOP Instance Reference Macro items, one per source instance in the order first met; multi-frame
    sources list the frames the volume used (Referenced Frame Number)."""
    frames: dict[str, tuple[str, list[int]]] = {}
    for ref in source.instances:
        entry = frames.setdefault(ref.sop_instance_uid, (ref.sop_class_uid, []))
        if ref.frame_number is not None:
            entry[1].append(ref.frame_number)
    items = []
    for sop_instance, (sop_class, numbers) in frames.items():
        item = instance_reference(sop_class, sop_instance)
        if numbers:
            item.ReferencedFrameNumber = sorted(set(numbers))
        items.append(item)
    return items


def referenced_series_sequence(source: SourceSeries) -> DicomSequence:
    """Common Instance Reference's Referenced Series Sequence: the source series and its instances (same
    study)."""
    seen: dict[str, str] = {}
    for ref in source.instances:
        seen.setdefault(ref.sop_instance_uid, ref.sop_class_uid)
    series_item = Dataset()
    series_item.SeriesInstanceUID = source.series_instance_uid
    series_item.ReferencedInstanceSequence = DicomSequence(
        [instance_reference(sop_class, sop_instance) for sop_instance, sop_class in seen.items()])
    return DicomSequence([series_item])


def charset_encodes(charset: str | Sequence[str] | None, texts: Sequence[str]) -> bool:
    """Whether the source's Specific Character Set (`charset` as a header holds it: None, one value or
    several) encodes every text a writer adds. ASCII always fits; otherwise only a single-valued character
    set is tried (code extensions are not), and a writer switches to UTF-8 (ISO_IR 192, which encodes
    anything, the copied patient data included: pydicom decoded it) when this is False."""
    extra = [t for t in texts if not t.isascii()]
    if not extra:
        return True
    values = [charset] if isinstance(charset, str) else list(charset or [])
    if len(values) != 1:
        return False
    try:
        codec = convert_encodings(values)[0]
        for text in extra:
            text.encode(codec)
    except (LookupError, UnicodeEncodeError):
        return False
    return True
