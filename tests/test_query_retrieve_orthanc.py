"""Query/Retrieve against the node with real parts: Orthanc (Debian's) is the PACS that queries (C-FIND) and
retrieves (C-MOVE to itself) from `isonode serve`; DCMTK stores into the node and queries it.

The node answers from its catalog, which holds both what it received (the spool) and its own results
(the preview / full series: a Surface Segmentation, a SEG and, in the preview, a rendered view as
Secondary Capture, all Modality SEG). A C-MOVE goes only to a
destination in the node's config, looked up by AE title.
"""

from __future__ import annotations

import struct
import subprocess
import urllib.error
from pathlib import Path

import pydicom
import pytest
from conftest import NODE_AE, free_port, require_tool, shared_case, store_responses, storescu

SURFACE_SEG = "1.2.840.10008.5.1.4.1.1.66.5"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
VIEW = "1.2.840.10008.5.1.4.1.1.7.4"  # Multi-frame True Color Secondary Capture
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CASE = "dcmqa_ge_head_gantry_tilt"  # 28 slices, Explicit VR LE, no Series Description
N_SLICES = 28

KEEP_RESULTS_HERE = "\nrouting:\n  rules:\n    - {name: keep-here, modes: [preview], destinations: []}\n"
PROCESS_NOTHING = "\nrouting: {default_modalities: []}\n"
QR_FROM_ELSEWHERE_ONLY = "\nquery_retrieve:\n  allowed_peers: [{address: 10.99.0.0/16}]\n"


def _files() -> list[Path]:
    files = sorted((shared_case(CASE) / "ct_dicom").glob("*.dcm"))
    assert len(files) == N_SLICES
    return files


def _orthanc_destination(port: int) -> str:
    return f"\ndestinations:\n  - {{name: ORTHANC, ae_title: ORTHANC, host: 127.0.0.1, port: {port}}}\n"


def _start_orthanc_and_node(node_factory, orthanc_factory, routing: str,  # noqa: ANN001, ANN202
                            extra: str = ""):
    """Orthanc knowing the node as modality `isonode`; the node knowing Orthanc as destination ORTHANC."""
    node_port = free_port()
    orthanc = orthanc_factory(modalities={"isonode": (NODE_AE, "127.0.0.1", node_port)}).start()
    node = node_factory(extra=_orthanc_destination(orthanc.dicom_port) + extra, routing=routing)
    node.port = node_port
    node.start()
    return orthanc, node


def _store_series(node) -> tuple[list[Path], pydicom.Dataset]:  # noqa: ANN001
    files = _files()
    result = storescu(node.port, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    responses = store_responses(result.stdout + result.stderr)
    assert [r for _, r in responses] == ["(Success)"] * N_SLICES, responses
    return files, pydicom.dcmread(files[0], stop_before_pixels=True)


def _query(orthanc, level: str, query: dict[str, str]) -> tuple[str, list[dict]]:  # noqa: ANN001
    """Orthanc's C-FIND to the node: the query id and its answers (simplified tags)."""
    q = orthanc.post("/modalities/isonode/query", {"Level": level, "Query": query})
    return q["ID"], orthanc.get(f"/queries/{q['ID']}/answers?expand&simplify")


def _retrieve(orthanc, query_id: str) -> dict:  # noqa: ANN001
    """Orthanc's C-MOVE of every answer of a query to itself; returns once the move is done."""
    return orthanc.post(f"/queries/{query_id}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})


def _instances_of_series(orthanc, series_uid: str) -> dict[str, dict]:  # noqa: ANN001
    """SOP Instance UID -> simplified tags of what Orthanc holds in that series."""
    out = {}
    for iid in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        if tags.get("SeriesInstanceUID") == series_uid:
            out[tags["SOPInstanceUID"]] = tags | {"_id": iid}
    return out


def _dataset_bytes(part10: bytes) -> bytes:
    """A Part 10 file's data set, without the preamble and the File Meta group (each writer has its own)."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00", part10[128:140]
    assert part10[136:140] == b"UL\x04\x00"
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length:]


@pytest.mark.slow
def test_orthanc_finds_and_retrieves_a_result_series_from_the_node(node_factory, orthanc_factory):
    orthanc, node = _start_orthanc_and_node(node_factory, orthanc_factory, KEEP_RESULTS_HERE)
    files, ct = _store_series(node)
    status = node.wait_for(lambda s: s["jobs"]["done"] == 1, timeout=240, what="the preview job")
    assert status["jobs"]["failed"] == 0 and status["jobs"]["queued"] == 0
    # the routing rule sends the results nowhere: nothing queued, nothing in Orthanc but by retrieving
    assert sum(status["outbox"]["states"].values()) == 0 and status["outbox"]["destinations"] == {}
    assert orthanc.get("/instances") == []
    (done,) = node.log_events("job.done")
    assert done["destinations"] == [] and done["mode"] == "preview"
    result_series = done["result_series"]
    result_files = sorted((node.data_dir / "results").rglob("*.dcm"))
    assert len(result_files) == 3, result_files
    on_node = {}
    for path in result_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SeriesInstanceUID == result_series and ds.StudyInstanceUID == ct.StudyInstanceUID
        on_node[str(ds.SOPInstanceUID)] = (str(ds.SOPClassUID), path)
    assert sorted(c for c, _ in on_node.values()) == sorted([SEG, SURFACE_SEG, VIEW])

    query_id, answers = _query(orthanc, "Series", {
        "StudyInstanceUID": ct.StudyInstanceUID, "Modality": "SEG", "SeriesDescription": "PREVIEW*",
        "NumberOfSeriesRelatedInstances": ""})
    (answer,) = answers
    assert answer["SeriesInstanceUID"] == result_series
    assert answer["StudyInstanceUID"] == ct.StudyInstanceUID
    assert answer["Modality"] == "SEG"
    assert answer["SeriesDescription"].startswith("PREVIEW")
    assert answer["NumberOfSeriesRelatedInstances"] == "3"
    assert answer["RetrieveAETitle"] == NODE_AE
    # the same study has no full result (the rule asks for the preview only), and the CT is no SEG
    assert _query(orthanc, "Series", {"StudyInstanceUID": ct.StudyInstanceUID, "Modality": "SEG",
                                      "SeriesDescription": "FULL*"})[1] == []

    moved = _retrieve(orthanc, query_id)
    assert moved["RemoteAet"] == NODE_AE and moved["LocalAet"] == "ORTHANC"
    in_orthanc = _instances_of_series(orthanc, result_series)
    assert set(in_orthanc) == set(on_node)
    assert len(orthanc.get("/instances")) == 3  # the result series only, not the CT
    for uid, (sop_class, path) in on_node.items():
        assert in_orthanc[uid]["SOPClassUID"] == sop_class
        assert in_orthanc[uid]["Modality"] == "SEG"
        sent = orthanc.get_bytes(f"/instances/{in_orthanc[uid]['_id']}/file")
        assert _dataset_bytes(sent) == _dataset_bytes(path.read_bytes()), f"{path.name} changed on the way"
    (move_done,) = node.log_events("move.done")
    assert move_done["instances"] == 3 and move_done["not_sent"] == 0 and move_done["calling_ae"] == "ORTHANC"

    # at Study level, the study holds the CT and its result
    _, studies = _query(orthanc, "Study", {
        "StudyInstanceUID": ct.StudyInstanceUID, "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": "",
        "NumberOfStudyRelatedInstances": ""})
    (study,) = studies
    assert sorted(study["ModalitiesInStudy"].split("\\")) == ["CT", "SEG"]
    assert study["NumberOfStudyRelatedSeries"] == "2"
    assert study["NumberOfStudyRelatedInstances"] == str(N_SLICES + 3)
    # and is found by the modality of its result
    _, by_seg = _query(orthanc, "Study", {"ModalitiesInStudy": "SEG", "PatientID": ""})
    assert [s["StudyInstanceUID"] for s in by_seg] == [ct.StudyInstanceUID]
    assert by_seg[0]["PatientID"] == ct.PatientID


def test_orthanc_retrieves_a_received_ct_series_from_the_node(node_factory, orthanc_factory):
    orthanc, node = _start_orthanc_and_node(node_factory, orthanc_factory, PROCESS_NOTHING)
    files, ct = _store_series(node)
    status = node.wait_for(lambda s: s["instances"] == N_SLICES, what="the series stored")
    assert sum(status["jobs"].values()) == 0  # stored only: nothing processed

    query_id, answers = _query(orthanc, "Series", {"StudyInstanceUID": ct.StudyInstanceUID, "Modality": "",
                                                   "NumberOfSeriesRelatedInstances": ""})
    (answer,) = answers
    assert answer["SeriesInstanceUID"] == ct.SeriesInstanceUID
    assert answer["Modality"] == "CT"
    assert answer["NumberOfSeriesRelatedInstances"] == str(N_SLICES)

    _retrieve(orthanc, query_id)
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    in_orthanc = _instances_of_series(orthanc, ct.SeriesInstanceUID)
    assert set(in_orthanc) == set(sent)
    assert len(orthanc.get("/instances")) == N_SLICES
    assert {t["SOPClassUID"] for t in in_orthanc.values()} == {CT_IMAGE}
    for uid in sorted(sent)[:: N_SLICES // 4]:  # a few, byte for byte against what the scanner sent
        received = orthanc.get_bytes(f"/instances/{in_orthanc[uid]['_id']}/file")
        assert _dataset_bytes(received) == _dataset_bytes(sent[uid].read_bytes()), sent[uid].name
    (move_done,) = node.log_events("move.done")
    assert move_done["instances"] == N_SLICES and move_done["not_sent"] == 0


def test_a_query_from_a_peer_not_allowed_to_query_is_refused_and_logged(node_factory, orthanc_factory):
    # Q/R only from a network this machine is not on; storing stays open to every peer (the default)
    orthanc, node = _start_orthanc_and_node(node_factory, orthanc_factory, PROCESS_NOTHING,
                                            extra=QR_FROM_ELSEWHERE_ONLY)

    found = subprocess.run(
        [require_tool("findscu"), "-v", "-S", "-aec", NODE_AE, "-aet", "FINDSCU",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", str(node.port)],
        capture_output=True, text=True, timeout=60)
    output = found.stdout + found.stderr
    assert found.returncode != 0, output
    assert "No Acceptable Presentation Contexts" in output, output
    assert "Received Final Find Response" not in output

    with pytest.raises(urllib.error.HTTPError) as refused:
        orthanc.post("/modalities/isonode/query", {"Level": "Study", "Query": {"StudyInstanceUID": ""}})
    assert refused.value.code >= 400

    events = node.log_events("query_retrieve.refused")
    assert [(e["calling_ae"], e["address"]) for e in events] == [("FINDSCU", "127.0.0.1"),
                                                                 ("ORTHANC", "127.0.0.1")]
    assert not node.log_events("find.done")

    # storing is configured apart: the same loopback peer still stores
    files = _files()[:3]
    stored = storescu(node.port, *files)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert [r for _, r in store_responses(stored.stdout + stored.stderr)] == ["(Success)"] * 3
    assert node.wait_for(lambda s: s["instances"] == 3, what="three instances stored")["series"] == 1
