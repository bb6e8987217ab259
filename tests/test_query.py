"""C-FIND matching over the catalog, and what C-MOVE / C-GET select, without a network."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom.presentation import build_context

from dicom_node import status
from dicom_node.catalog import Catalog, CatalogEntry
from dicom_node.database import Database
from dicom_node.qr_find import FindService
from dicom_node.qr_retrieve import NotSendableError, load_for_sending, select_instances
from dicom_node.query import PATIENT_ROOT, STUDY_ROOT, QueryError, matches, parse_query

CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
# (patient name, patient id, study date, study time, accession, modality of the second series)
PATIENTS = [
    ("SMITH^JOHN", "P1", "20240101", "083000", "ACC1", "SEG"),
    ("smith^ann", "P2", "20240215", "101530.5", "ACC2", "SR"),
    ("DOE^JANE", "P3", "20240301", "1200", "ACC3", "SEG"),
    ("Müller^Hans", "P1", "20240410", "235959", "ACC4", "SR"),
    ("SMYTHE^A", "P5", "", "", "ACC[5]", "SEG"),
]


def _entry(i: int, series: int, instance: int, modality: str, store: str = "spool") -> CatalogEntry:
    name, pid, date, time, acc, _ = PATIENTS[i]
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = name, pid, date, time, acc
    ds.StudyInstanceUID = f"1.2.3.{i}"
    ds.SeriesInstanceUID = f"1.2.3.{i}.{series}"
    ds.SOPInstanceUID = f"1.2.3.{i}.{series}.{instance}"
    ds.SOPClassUID = SEG if modality == "SEG" else CT
    ds.Modality = modality
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.SeriesDescription = "PREVIEW 3D preview" if modality == "SEG" else "Chest 1mm"
    return CatalogEntry.from_dataset(ds, transfer_syntax_uid=ExplicitVRLittleEndian, store=store,
                                     relpath=f"{i}/{series}/{instance}.dcm", size=100)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database(tmp_path / "catalog.db")
    entries = []
    for i, patient in enumerate(PATIENTS):
        entries += [_entry(i, 1, n, "CT") for n in (3, 1, 2)]  # three CT slices, stored out of order
        entries.append(_entry(i, 2, 1, patient[5], store="results"))
    Catalog(db).record(entries)
    return db


def _find(db: Database, level: str, model: str = STUDY_ROOT, **keys) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return list(matches(parse_query(identifier, model), db.connection, "ISONODE"))


def _names(answers: list[Dataset]) -> list[str]:
    return sorted(str(a.PatientName) for a in answers)


def test_wildcards_match_person_names_without_regard_to_case(db):
    assert _names(_find(db, "STUDY", PatientName="smith*")) == ["SMITH^JOHN", "smith^ann"]
    assert _names(_find(db, "STUDY", PatientName="SM?TH*")) == ["SMITH^JOHN", "SMYTHE^A", "smith^ann"]
    assert _names(_find(db, "STUDY", PatientName="M?ller^*")) == ["Müller^Hans"]


def test_other_strings_match_with_case_and_brackets_are_literal(db):
    assert [a.AccessionNumber for a in _find(db, "STUDY", AccessionNumber="ACC1")] == ["ACC1"]
    assert _find(db, "STUDY", AccessionNumber="acc1") == []
    assert [a.AccessionNumber for a in _find(db, "STUDY", AccessionNumber="ACC[5]")] == ["ACC[5]"]
    assert [a.AccessionNumber for a in _find(db, "STUDY", AccessionNumber="*[5]")] == ["ACC[5]"]


def test_universal_matching_returns_every_study_with_the_requested_keys_only(db):
    answers = _find(db, "STUDY", PatientName="", StudyInstanceUID="")
    assert len(answers) == len(PATIENTS)
    assert {e.keyword for e in answers[0]} == {"QueryRetrieveLevel", "RetrieveAETitle", "PatientName",
                                               "StudyInstanceUID"} | ({"SpecificCharacterSet"}
                                                                      if "SpecificCharacterSet" in answers[0] else set())
    assert all(a.RetrieveAETitle == "ISONODE" and a.QueryRetrieveLevel == "STUDY" for a in answers)


def test_date_ranges_match_closed_open_and_single_dates_and_never_an_empty_date(db):
    assert [a.StudyDate for a in _find(db, "STUDY", StudyDate="20240201-20240331")] == ["20240215", "20240301"]
    assert [a.StudyDate for a in _find(db, "STUDY", StudyDate="20240301-")] == ["20240301", "20240410"]
    assert [a.StudyDate for a in _find(db, "STUDY", StudyDate="-20240101")] == ["20240101"]
    assert [a.StudyDate for a in _find(db, "STUDY", StudyDate="20240410")] == ["20240410"]


def test_time_ranges_compare_times_of_any_precision(db):
    # stored 083000, 101530.5, 1200 (noon), 235959; '-12' runs to 12:59:59.999999
    assert sorted(a.StudyTime for a in _find(db, "STUDY", StudyTime="1000-12")) == ["101530.5", "1200"]
    assert sorted(a.StudyTime for a in _find(db, "STUDY", StudyTime="2359-")) == ["235959"]
    assert sorted(a.StudyTime for a in _find(db, "STUDY", StudyTime="1200")) == ["1200"]


def test_uid_lists_match_any_of_their_uids(db):
    answers = _find(db, "STUDY", StudyInstanceUID="1.2.3.0\\1.2.3.3\\9.9.9")
    assert sorted(a.StudyInstanceUID for a in answers) == ["1.2.3.0", "1.2.3.3"]


def test_study_counts_and_modalities_come_from_the_catalog(db):
    (answer,) = _find(db, "STUDY", StudyInstanceUID="1.2.3.0", NumberOfStudyRelatedSeries="",
                      NumberOfStudyRelatedInstances="", ModalitiesInStudy="")
    assert answer.NumberOfStudyRelatedSeries == 2
    assert answer.NumberOfStudyRelatedInstances == 4  # three CT slices and the result
    assert list(answer.ModalitiesInStudy) == ["CT", "SEG"]


def test_modalities_in_study_matches_a_study_with_any_listed_modality(db):
    seg_studies = _find(db, "STUDY", ModalitiesInStudy="SEG", AccessionNumber="")
    assert sorted(a.AccessionNumber for a in seg_studies) == ["ACC1", "ACC3", "ACC[5]"]
    assert len(_find(db, "STUDY", ModalitiesInStudy="SEG\\SR")) == 5


def test_result_series_are_found_like_any_other_series(db):
    answers = _find(db, "SERIES", StudyInstanceUID="1.2.3.2", Modality="SEG", SeriesDescription="PREVIEW*",
                    SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")
    assert [(a.SeriesInstanceUID, a.NumberOfSeriesRelatedInstances) for a in answers] == [("1.2.3.2.2", 1)]


def test_series_level_lists_modalities_as_alternatives(db):
    answers = _find(db, "SERIES", StudyInstanceUID="1.2.3.1", Modality="CT\\SR", SeriesNumber="")
    assert sorted(int(a.SeriesNumber) for a in answers) == [1, 2]


def test_image_level_returns_instances_of_the_series(db):
    answers = _find(db, "IMAGE", SeriesInstanceUID="1.2.3.0.1", SOPInstanceUID="", InstanceNumber="",
                    SOPClassUID="")
    assert sorted(int(a.InstanceNumber) for a in answers) == [1, 2, 3]
    assert {a.SOPClassUID for a in answers} == {CT}


def test_patient_level_groups_studies_by_patient_id(db):
    answers = _find(db, "PATIENT", PATIENT_ROOT, PatientID="P1", PatientName="",
                    NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")
    assert len(answers) == 1
    assert answers[0].NumberOfPatientRelatedStudies == 2
    assert answers[0].NumberOfPatientRelatedInstances == 8


def test_uncatalogued_keys_and_sequences_are_returned_empty(db):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3.0"
    identifier.PatientComments = ""
    identifier.ReferencedStudySequence = Sequence([])
    (answer,) = matches(parse_query(identifier, STUDY_ROOT), db.connection, "ISONODE")
    assert answer.PatientComments in ("", None)
    assert len(answer.ReferencedStudySequence) == 0


def test_non_ascii_answers_declare_utf8(db):
    (answer,) = _find(db, "STUDY", PatientName="M*")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in _find(db, "STUDY", PatientName="DOE*")[0]


@pytest.mark.parametrize(("level", "model", "code"), [
    (None, STUDY_ROOT, status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
    ("SERIESX", STUDY_ROOT, status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
    ("PATIENT", STUDY_ROOT, status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
])
def test_a_missing_or_wrong_level_is_refused_with_0xa900(level, model, code):
    identifier = Dataset()
    if level is not None:
        identifier.QueryRetrieveLevel = level
    with pytest.raises(QueryError) as err:
        parse_query(identifier, model)
    assert err.value.status == code


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
@pytest.mark.parametrize("value", ["2024-01-02", "20240101-2024", "-", "yesterday"])
def test_a_malformed_date_or_range_is_refused_as_unable_to_process(db, value):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.add_new("StudyDate", "DA", value)
    with pytest.raises(QueryError) as err:
        parse_query(identifier, STUDY_ROOT)
    assert err.value.status == status.UNABLE_TO_PROCESS
    assert "StudyDate" in err.value.reason


def test_find_service_answers_a_failure_with_its_reason_and_pending_then_success(db):
    service = FindService(db, "ISONODE")
    bad = Dataset()
    bad.QueryRetrieveLevel = "NOPE"
    ((code, answer),) = list(service.find(bad, STUDY_ROOT))
    assert code.Status == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS and "NOPE" in code.ErrorComment
    good = Dataset()
    good.QueryRetrieveLevel = "STUDY"
    good.PatientName = "smith*"
    responses = list(service.find(good, STUDY_ROOT))
    assert [c for c, _ in responses] == [status.PENDING, status.PENDING, status.SUCCESS]


def test_find_service_stops_at_a_cancel(db):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    cancelled = iter([False, True])
    responses = list(FindService(db, "ISONODE").find(identifier, STUDY_ROOT, lambda: next(cancelled)))
    assert [c for c, _ in responses] == [status.PENDING, status.CANCEL]


def test_a_retrieve_selects_the_named_series_in_instance_order(db):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.SeriesInstanceUID = "1.2.3.0.1"
    found = select_instances(Catalog(db), identifier, STUDY_ROOT)
    assert [f.sop_instance_uid for f in found] == ["1.2.3.0.1.1", "1.2.3.0.1.2", "1.2.3.0.1.3"]
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3.0"
    del identifier.SeriesInstanceUID
    assert {f.store for f in select_instances(Catalog(db), identifier, STUDY_ROOT)} == {"spool", "results"}


def test_a_retrieve_without_the_levels_unique_key_is_refused_instead_of_sending_everything(db):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "*"
    with pytest.raises(QueryError) as err:
        select_instances(Catalog(db), identifier, STUDY_ROOT)
    assert err.value.status == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert "StudyInstanceUID" in err.value.reason


def test_forgetting_a_series_or_a_result_folder_drops_empty_series_and_studies(db):
    catalog = Catalog(db)
    with db.transaction() as conn:
        Catalog.forget_series_in(conn, "1.2.3.0.1")
    assert _find(db, "SERIES", StudyInstanceUID="1.2.3.0", SeriesInstanceUID="")[0].SeriesInstanceUID == "1.2.3.0.2"
    with db.transaction() as conn:
        Catalog.forget_folder_in(conn, "results", "0/2")
    assert _find(db, "STUDY", StudyInstanceUID="1.2.3.0") == []
    assert catalog.counts() == {"studies": 4, "series": 8, "instances": 16}


def _jpeg_ls_ct() -> Path:
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom_ts_samples" / "cornerstone"
    path = root / "CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm"
    if not path.exists():
        pytest.skip("shared sample data not present")
    return path


def test_a_compressed_instance_goes_out_decompressed_to_a_peer_that_takes_only_uncompressed():
    from dicom_node.catalog import StoredInstance

    path = _jpeg_ls_ct()
    inst = StoredInstance("1.2.3", CT, JPEGLSLossless, "spool", path.name, path.stat().st_size)
    as_is = load_for_sending(path, inst, {CT: {JPEGLSLossless, ExplicitVRLittleEndian}})
    assert as_is.file_meta.TransferSyntaxUID == JPEGLSLossless
    plain = load_for_sending(path, inst, {CT: {ExplicitVRLittleEndian}})
    assert not plain.file_meta.TransferSyntaxUID.is_compressed
    assert plain.SOPInstanceUID == as_is.SOPInstanceUID  # the same instance, only re-encoded
    assert (plain.pixel_array == pydicom.dcmread(path).pixel_array).all()
    with pytest.raises(NotSendableError):
        load_for_sending(path, inst, {SEG: {ExplicitVRLittleEndian}})


def test_move_sub_association_proposes_stored_and_uncompressed_syntaxes():
    from dicom_node.catalog import StoredInstance
    from dicom_node.qr_retrieve import sub_association_contexts

    insts = [StoredInstance("1", CT, JPEGLSLossless, "spool", "a", 1),
             StoredInstance("2", CT, ExplicitVRLittleEndian, "spool", "b", 1),
             StoredInstance("3", SEG, ExplicitVRLittleEndian, "results", "c", 1)]
    proposed = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                for cx in sub_association_contexts(insts)]
    assert (CT, [JPEGLSLossless]) in proposed
    assert sum(1 for c, _ in proposed if c == CT) == 2 and sum(1 for c, _ in proposed if c == SEG) == 1
    assert build_context(CT).abstract_syntax == CT
