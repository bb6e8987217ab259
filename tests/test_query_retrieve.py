"""Query/Retrieve against a running node, driven by DCMTK's findscu, movescu and getscu (and a pynetdicom
client for C-CANCEL, which the DCMTK tools cannot send mid-retrieve)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import NODE_AE, echoscu, free_port, require_tool, shared_case, storescu
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

STORE_ONLY = "\nrouting: {default_modalities: []}\n"  # stored and queryable, not processed
# (name, patient id, study date, accession) of the generated studies
STUDIES = [("SMITH^JOHN", "P1", "20240105", "A1"), ("SMITHERS^ANN", "P2", "20240220", "A2"),
           ("DOE^JANE", "P3", "20240310", "A3"), ("SMITH^JOHN", "P1", "20240412", "A4")]


def _write_ct(path: Path, *, study: int, series_uid: str, study_uid: str, number: int, size: int = 16) -> Path:
    name, pid, date, acc = STUDIES[study]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.AccessionNumber = name, pid, date, acc
    ds.StudyTime = "101500"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
    ds.StudyDescription = f"Study {study}"
    ds.ImagePositionPatient = [0, 0, float(number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.arange(size * size, dtype=np.int16).reshape(size, size) + number).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def studies(tmp_path: Path) -> dict[str, list[Path]]:
    """Four generated studies (three slices each), by study UID."""
    out: dict[str, list[Path]] = {}
    for i in range(len(STUDIES)):
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = tmp_path / f"study{i}"
        folder.mkdir()
        out[study_uid] = [_write_ct(folder / f"{n}.dcm", study=i, series_uid=series_uid, study_uid=study_uid,
                                    number=n) for n in (1, 2, 3)]
    return out


@pytest.fixture
def stored_node(node_factory, studies):
    node = node_factory(routing=STORE_ONLY, extra=_move_destination(free_port())).start()
    files = [f for fs in studies.values() for f in fs]
    result = storescu(node.port, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    return node


def _move_destination(port: int) -> str:
    return f"\ndestinations:\n  - {{name: MOVEDEST, ae_title: MOVEDEST, host: 127.0.0.1, port: {port}}}\n"


def _findscu(node, out: Path, *keys: str, model: str = "-S") -> tuple[list[Dataset], str]:
    """Run findscu, keeping each response as a file (-X), and return them with its output."""
    out.mkdir(parents=True, exist_ok=True)
    args = [require_tool("findscu"), "-v", model, "-X", "-od", str(out), "-aec", NODE_AE, "127.0.0.1",
            str(node.port)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return answers, result.stdout + result.stderr


def test_findscu_matches_wildcards_ranges_and_lists_at_every_level(stored_node, studies, tmp_path):
    node = stored_node
    uids = list(studies)

    patients, _ = _findscu(node, tmp_path / "p", "QueryRetrieveLevel=PATIENT", "PatientName=SMITH*",
                           "PatientID", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances",
                           model="-P")
    assert sorted((str(a.PatientName), a.PatientID, int(a.NumberOfPatientRelatedStudies),
                   int(a.NumberOfPatientRelatedInstances)) for a in patients) == sorted([
        ("SMITH^JOHN", "P1", 2, 6), ("SMITHERS^ANN", "P2", 1, 3)])

    in_range, _ = _findscu(node, tmp_path / "s", "QueryRetrieveLevel=STUDY", "StudyDate=20240201-20240331",
                           "AccessionNumber", "StudyInstanceUID", "NumberOfStudyRelatedInstances",
                           "ModalitiesInStudy", "StudyDescription")
    assert sorted((a.AccessionNumber, int(a.NumberOfStudyRelatedInstances), a.ModalitiesInStudy, a.StudyDescription)
                  for a in in_range) == [("A2", 3, "CT", "Study 1"), ("A3", 3, "CT", "Study 2")]

    listed, _ = _findscu(node, tmp_path / "l", "QueryRetrieveLevel=STUDY",
                         f"StudyInstanceUID={uids[0]}\\{uids[3]}", "AccessionNumber")
    assert sorted(a.AccessionNumber for a in listed) == ["A1", "A4"]

    series, _ = _findscu(node, tmp_path / "se", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uids[2]}",
                         "SeriesInstanceUID", "Modality=CT", "NumberOfSeriesRelatedInstances")
    assert [(a.SeriesInstanceUID, int(a.NumberOfSeriesRelatedInstances)) for a in series] == [
        (pydicom.dcmread(studies[uids[2]][0]).SeriesInstanceUID, 3)]

    images, _ = _findscu(node, tmp_path / "i", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={uids[2]}",
                         f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber")
    assert sorted((a.SOPInstanceUID, a.InstanceNumber) for a in images) == sorted(
        (pydicom.dcmread(f).SOPInstanceUID, pydicom.dcmread(f).InstanceNumber) for f in studies[uids[2]])


# DCMTK prints 0xA900 as DataSetDoesNotMatchSOPClass and 0xC000 as UnableToProcess.
@pytest.mark.parametrize(("keys", "expected"), [
    (("QueryRetrieveLevel=VOLUME", "PatientName"), "DataSetDoesNotMatchSOPClass"),
    (("PatientName=SMITH*",), "DataSetDoesNotMatchSOPClass"),  # no Query/Retrieve Level
    (("QueryRetrieveLevel=STUDY", "StudyDate=2024-01-01"), "UnableToProcess"),
])
def test_a_bad_query_gets_its_failure_status_and_the_node_keeps_serving(stored_node, tmp_path, keys, expected):
    answers, output = _findscu(stored_node, tmp_path / "bad", *keys)
    assert answers == []
    assert f"Final Find Response (Error: {expected})" in output or f"(Failed: {expected})" in output, output
    assert stored_node.log_events("find.refused")
    assert echoscu(stored_node.port).returncode == 0
    good, _ = _findscu(stored_node, tmp_path / "good", "QueryRetrieveLevel=STUDY", "PatientName=DOE*")
    assert [str(a.PatientName) for a in good] == ["DOE^JANE"]


class _StoreScp:
    """DCMTK storescp as the move destination, writing what it receives to a folder."""

    def __init__(self, folder: Path, port: int, *args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.proc = subprocess.Popen([require_tool("storescp"), "-aet", "MOVEDEST", "-od", str(folder), *args,
                                      str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def received(self) -> dict[str, Dataset]:
        return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in self.folder.iterdir())}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _movescu(node, *keys: str, destination: str = "MOVEDEST") -> subprocess.CompletedProcess:
    args = [require_tool("movescu"), "-v", "-S", "-aec", NODE_AE, "-aem", destination, "127.0.0.1",
            str(node.port)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_movescu_sends_a_series_to_a_configured_destination(node_factory, studies, tmp_path):
    dest_port = free_port()
    node = node_factory(routing=STORE_ONLY, extra=_move_destination(dest_port)).start()
    study_uid, files = next(iter(studies.items()))
    assert storescu(node.port, *files).returncode == 0
    scp = _StoreScp(tmp_path / "moved", dest_port)
    try:
        series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        result = _movescu(node, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid}",
                          f"SeriesInstanceUID={series_uid}")
        output = result.stdout + result.stderr
        assert "Final Move Response (Success)" in output, output
        assert output.count("(Pending)") == 3
        received = scp.received()
    finally:
        scp.stop()
    sent = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
    assert set(received) == set(sent)
    for uid, ds in received.items():
        assert ds.PixelData == sent[uid].PixelData and ds.PatientName == sent[uid].PatientName
    (done,) = node.log_events("move.done")
    assert done["instances"] == 3 and done["not_sent"] == 0


def test_a_move_to_an_unknown_destination_is_refused_with_0xa801(stored_node, studies):
    result = _movescu(stored_node, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={next(iter(studies))}",
                      destination="STRANGER")
    output = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in output or "a801" in output.lower(), output
    (refused,) = stored_node.log_events("move.refused")
    assert refused["status"] == "0xA801" and refused["move_destination"] == "STRANGER"


def _getscu(node, out: Path, *keys: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    args = [require_tool("getscu"), "-v", "-S", "-aec", NODE_AE, "-od", str(out), "127.0.0.1", str(node.port)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_a_retrieve_without_the_unique_key_sends_nothing(stored_node, tmp_path):
    result = _getscu(stored_node, tmp_path / "got", "QueryRetrieveLevel=STUDY", "PatientName=*")
    output = result.stdout + result.stderr
    assert "DataSetDoesNotMatchSOPClass" in output, output
    assert not list((tmp_path / "got").iterdir())
    assert "StudyInstanceUID" in stored_node.log_events("get.refused")[0]["reason"]


def test_getscu_retrieves_a_jpeg_ls_series_decompressed_for_a_peer_that_takes_only_uncompressed(node, tmp_path):
    sample = (shared_case("dicom_ts_samples") / "cornerstone"
              / "CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm")
    assert storescu(node.port, sample).returncode == 0
    original = pydicom.dcmread(sample)
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run(
        [require_tool("getscu"), "-v", "-S", "-aec", NODE_AE, "-od", str(out), "127.0.0.1", str(node.port),
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={original.SeriesInstanceUID}"],
        capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (got,) = [pydicom.dcmread(p) for p in out.iterdir()]
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_a_move_is_cancelled_by_c_cancel_and_stops_sending(node_factory, tmp_path):
    dest_port = free_port()
    node = node_factory(routing=STORE_ONLY, extra=_move_destination(dest_port)).start()
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "big"
    folder.mkdir()
    files = [_write_ct(folder / f"{n}.dcm", study=0, series_uid=series_uid, study_uid=study_uid, number=n,
                       size=512) for n in range(1, 61)]
    assert storescu(node.port, *files).returncode == 0
    scp = _StoreScp(tmp_path / "moved", dest_port)
    try:
        ae = AE(ae_title="CANCELLER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        statuses = []
        for rsp, _ in assoc.send_c_move(identifier, "MOVEDEST", StudyRootQueryRetrieveInformationModelMove,
                                        msg_id=7):
            statuses.append(rsp.Status)
            if len(statuses) == 2:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelMove)
        assoc.release()
    finally:
        scp.stop()
    assert statuses[-1] == 0xFE00, [hex(s) for s in statuses]
    assert 0 < len(scp.received()) < len(files)
    assert node.log_events("move.cancelled")
