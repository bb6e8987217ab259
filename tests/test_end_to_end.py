"""End to end with real parts: Orthanc (Debian's) is the PACS, `isonode serve` the node, DCMTK the scanner.

A real CT series goes to the node; on its own the node returns a preview and a full result, each as a
Surface Segmentation and a SEG, the preview also with a rendered view (Secondary Capture), which Orthanc
stores; the test reads them back from Orthanc's REST API.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors, free_port, shared_case, storescu, wait_until

from appliance.outbox import Outbox
from dicom_node.database import Database
from dicom_node.surface_seg import read_surface_segmentation, validate_surface_segmentation
from dicom_node.volume import assemble_volume

SURFACE_SEG = "1.2.840.10008.5.1.4.1.1.66.5"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
VIEW = "1.2.840.10008.5.1.4.1.1.7.4"  # Multi-frame True Color Secondary Capture
CASE = "crlm_ct_1004_ge_abdomen"  # 41 slices, 5 mm, lung bases over the liver
LUNG_CODES = {"44029006": "Left lung", "3341006": "Right lung"}

def _destination(name: str, port: int, *, retry: str = "") -> str:
    return f"""
destinations:
  - {{name: {name}, ae_title: {name}, host: 127.0.0.1, port: {port}}}
outbox:
  retry_base_s: 0.5
  retry_max_s: 2
{retry}"""


def _series_files() -> list[Path]:
    return sorted((shared_case(CASE) / "ct_dicom").glob("*.dcm"))


def _results_in(orthanc) -> dict[str, list[str]]:  # noqa: ANN001
    by_class = orthanc.instances_by_class()
    return {SURFACE_SEG: by_class.get(SURFACE_SEG, []), SEG: by_class.get(SEG, [])}


@pytest.mark.slow
def test_orthanc_pushes_a_real_ct_series_and_gets_preview_and_full_surfaces_and_seg_back(
        node_factory, orthanc_factory, tmp_path):
    files = _series_files()
    node_port = free_port()
    orthanc = orthanc_factory(modalities={"isonode": ("ISONODE", "127.0.0.1", node_port)}).start()
    node = node_factory(extra=_destination("ORTHANC", orthanc.dicom_port), routing="")  # preview then full
    node.port = node_port
    node.start()
    for f in files:
        orthanc.post("/instances", f.read_bytes())
    (series_id,) = orthanc.get("/series")
    orthanc.post("/modalities/isonode/store", {"Resources": [series_id], "Synchronous": True})

    results = wait_until(lambda: (r := _results_in(orthanc)) and len(r[SURFACE_SEG]) == 2 and len(r[SEG]) == 2 and r,
                    timeout=240, what="preview and full results in Orthanc")

    source = assemble_volume(files)
    extent = (source.affine, source.array.shape)
    descriptions = set()
    for sop_class, ids in results.items():
        for iid in ids:
            path = tmp_path / f"{iid}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{iid}/file"))
            assert dciodvfy_errors(path) == [], path
            ds = pydicom.dcmread(path)
            assert ds.StudyInstanceUID == source.study_instance_uid
            assert ds.FrameOfReferenceUID == source.frame_of_reference_uid
            assert ds.SeriesInstanceUID != source.series_instance_uid
            (ref_series,) = ds.ReferencedSeriesSequence
            assert ref_series.SeriesInstanceUID == source.series_instance_uid
            referenced = {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence}
            assert referenced <= {s.sop_instance_uid for s in source.source_instances} and referenced
            descriptions.add(str(ds.SeriesDescription))
            codes = {s.SegmentedPropertyTypeCodeSequence[0].CodeValue: s.SegmentLabel for s in ds.SegmentSequence}
            assert set(LUNG_CODES) <= set(codes), codes
            if sop_class == SURFACE_SEG:
                assert validate_surface_segmentation(ds, extent) == []
                lungs = {info.type.value: mesh.signed_volume() / 1000.0
                         for info, mesh in read_surface_segmentation(ds) if info.type.value in LUNG_CODES}
                # lung bases above the liver on 41 x 5 mm: a few hundred ml each, never litres or a speck
                assert all(100.0 < ml < 2500.0 for ml in lungs.values()), lungs
    assert any(d.startswith("PREVIEW") for d in descriptions) and any(d.startswith("FULL") for d in descriptions)
    assert all("isonode-ct-chest" in d for d in descriptions)
    # the rendered view goes out with the preview only (output.rendered_view defaults to [preview])
    (view_id,) = orthanc.instances_by_class().get(VIEW, [])
    view_path = tmp_path / "view.dcm"
    view_path.write_bytes(orthanc.get_bytes(f"/instances/{view_id}/file"))
    assert dciodvfy_errors(view_path) == []
    view = pydicom.dcmread(view_path)
    assert view.SeriesDescription.startswith("PREVIEW") and view.StudyInstanceUID == source.study_instance_uid
    assert int(view.NumberOfFrames) == 4 and view.pixel_array.shape == (4, 512, 512, 3)

    # the preview was handed to the outbox, and reached Orthanc, before the full result
    outbox = Outbox(Database(node.data_dir / "isonode.db"), node.data_dir / "results")
    delivered = sorted(outbox.list(state="done"), key=lambda d: d.delivered_at)
    assert [d.priority for d in delivered][:3] == [0, 0, 0] and delivered[-1].priority == 1
    done = {e["mode"]: e for e in node.log_events("job.done")}
    assert set(done) == {"preview", "full"}
    for event in done.values():
        assert set(event["stages"]) >= {"read_s", "segment_s", "mesh_s", "encode_s", "write_s", "total_s"}
        assert event["backends"]["inference"].startswith(("ort-cpu-", "openvino-"))


@pytest.mark.slow
def test_results_wait_while_the_pacs_is_down_and_arrive_once_it_is_up(node_factory, orthanc_factory):
    orthanc_port = free_port()
    node = node_factory(extra=_destination("ORTHANC", orthanc_port)).start()
    assert storescu(node.port, *_series_files()).returncode == 0
    node.wait_for(lambda s: s["jobs"]["done"] == 1, timeout=120, what="the preview job")
    status = node.wait_for(lambda s: s["outbox"]["states"]["pending"] == 3, what="deliveries waiting")
    assert status["outbox"]["states"]["done"] == 0
    node.wait_for(lambda s: "outbox.retry" in node.log_text(), what="a failed delivery attempt")

    orthanc = orthanc_factory(dicom_port=orthanc_port).start()
    wait_until(lambda: len(_results_in(orthanc)[SURFACE_SEG]) == 1 and len(_results_in(orthanc)[SEG]) == 1,
          timeout=60, what="results delivered after Orthanc came up")
    assert node.wait_for(lambda s: s["outbox"]["states"]["done"] == 3, what="deliveries done")


class _SlowScp:
    """A PACS that takes its time answering each C-STORE, so a node can be killed mid-delivery."""

    def __init__(self, delay_s: float) -> None:
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.delay_s = delay_s
        self.received: dict[str, int] = {}
        self.first_request = threading.Event()
        ae = AE(ae_title="SLOWPACS")
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(SURFACE_SEG)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:  # noqa: ANN001
        self.first_request.set()
        time.sleep(self.delay_s)
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received[uid] = self.received.get(uid, 0) + 1
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.mark.slow
def test_kill9_during_processing_and_during_delivery_loses_no_result(node_factory):
    pacs = _SlowScp(delay_s=3.0)
    try:
        node = node_factory(extra=_destination("SLOWPACS", pacs.port)).start()
        assert storescu(node.port, *_series_files()).returncode == 0
        node.wait_for(lambda s: s["jobs"]["running"] == 1, poll=0.05, what="the job running")
        node.kill9()  # during processing: the job is re-queued at start and runs again
        node.start()
        assert pacs.first_request.wait(120), "no delivery started"
        node.kill9()  # during delivery: the PACS holds the request, the node has no answer yet
        node.start()
        status = node.wait_for(lambda s: s["outbox"]["states"]["done"] == 3, timeout=120, what="deliveries done")
        assert status["jobs"]["done"] == 1 and status["jobs"]["failed"] == 0
        # at least once: the object interrupted mid-delivery may arrive twice, none is missing
        assert len(pacs.received) == 3 and all(n >= 1 for n in pacs.received.values())  # surfaces, SEG, view
        assert np.sum(list(pacs.received.values())) <= 4
    finally:
        pacs.stop()
