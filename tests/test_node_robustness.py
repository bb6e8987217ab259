"""Bad input gets a clear failure status and a log line; the node keeps serving; kill -9 loses nothing."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import NODE_AE, echoscu, require_tool, send_raw_c_store, store_responses, storescu
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGLSLossless
from pynetdicom import AE
from pynetdicom.dsutils import encode

from compiler.phantom import make_phantom, write_ct_series


@pytest.fixture(scope="module")
def phantom_slices(tmp_path_factory) -> list[Path]:
    ph = make_phantom((8, 64, 64), (2.0, 2.0, 2.0), seed=1)
    return write_ct_series(ph.hu, tmp_path_factory.mktemp("phantom8"), spacing=(2.0, 2.0, 2.0))


def _refusals(node) -> dict[str, dict]:
    return {e["sop_instance"]: e for e in node.log_events("store.refused")}


def _mutate(src: Path, dst: Path, change) -> Path:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    change(ds)
    ds.save_as(dst, enforce_file_format=False)
    return dst


def _truncate_jpeg_ls(ds):
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2 // 2 * 2]])


MALFORMED = {
    "missing_series_uid": (lambda ds: (delattr(ds, "SeriesInstanceUID")), 0xC220, "SeriesInstanceUID"),
    "empty_study_uid": (lambda ds: setattr(ds, "StudyInstanceUID", ""), 0xC220, "StudyInstanceUID"),
    "invalid_uid_characters": (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.3/../../etc"), 0xC220,
                               "not a valid UID"),
    "short_pixel_data": (lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]), 0xC230,
                         "pixel data"),
    "truncated_jpeg_ls_codestream": (_truncate_jpeg_ls, 0xC230, "pixel data"),
    "impossible_bits_allocated": (lambda ds: setattr(ds, "BitsAllocated", 12), 0xC230, "pixel data"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_instance_sent_with_storescu_gets_failure_and_node_keeps_serving(case, node, phantom_slices,
                                                                                     tmp_path):
    change, expected_status, reason_word = MALFORMED[case]
    bad = _mutate(phantom_slices[0], tmp_path / f"{case}.dcm", change)
    result = storescu(node.port, bad)
    responses = store_responses(result.stdout + result.stderr)
    assert len(responses) == 1 and responses[0][1].startswith("(Error"), result.stdout + result.stderr
    refusal = _refusals(node)[str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)]
    assert refusal["status"] == f"0x{expected_status:04X}"
    assert reason_word in refusal["reason"]
    # Nothing was stored for it, and the node still serves.
    assert node.status()["instances"] == 0
    assert echoscu(node.port).returncode == 0
    good = storescu(node.port, phantom_slices[1])
    assert store_responses(good.stdout + good.stderr)[0][1] == "(Success)"


def test_log_lines_never_carry_patient_name_or_id(node, phantom_slices, tmp_path):
    bad = _mutate(phantom_slices[0], tmp_path / "bad.dcm", lambda ds: delattr(ds, "SeriesInstanceUID"))
    storescu(node.port, bad)
    storescu(node.port, *phantom_slices)
    node.wait_for(lambda s: s["jobs"]["done"] == 1, what="phantom series processed")
    log = node.log_text()
    assert "PHANTOM^ISONODE" not in log and '"PHANTOM"' not in log
    assert "PHANTOM" not in log.replace("PHANTOM^ISONODE", "")


def _raw_c_store(port: int, sop_class: str, sop_instance: str, payload: bytes, ts: str) -> int:
    """Send a C-STORE whose data set bytes are exactly `payload` (what no well-behaved tool would send)."""
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        status = send_raw_c_store(assoc, sop_class, sop_instance, payload, timeout=60)
        assert status is not None, "the node aborted instead of answering"
        return status
    finally:
        assoc.release()


def _dataset_bytes(path: Path) -> tuple[pydicom.Dataset, bytes]:
    ds = pydicom.dcmread(path)
    ts = ds.file_meta.TransferSyntaxUID
    return ds, encode(ds, ts.is_implicit_VR, ts.is_little_endian)


def test_garbage_data_set_bytes_get_cannot_understand(node, phantom_slices):
    ds, _ = _dataset_bytes(phantom_slices[0])
    garbage = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    status = _raw_c_store(node.port, ds.SOPClassUID, "1.2.3.4.5", garbage, ds.file_meta.TransferSyntaxUID)
    # pydicom reads some garbage as a (nonsense) data set, which then lacks its UIDs: either way "cannot understand"
    assert status in (0xC210, 0xC220)
    assert _refusals(node)["1.2.3.4.5"]["status"] == f"0x{status:04X}"
    assert echoscu(node.port).returncode == 0


def test_truncated_data_set_bytes_get_cannot_understand(node, phantom_slices):
    ds, payload = _dataset_bytes(phantom_slices[0])
    status = _raw_c_store(node.port, ds.SOPClassUID, ds.SOPInstanceUID, payload[: len(payload) // 3],
                          ds.file_meta.TransferSyntaxUID)
    assert status & 0xF000 == 0xC000
    assert node.status()["instances"] == 0


def test_sop_class_mismatch_gets_a900(node, phantom_slices):
    ds, payload = _dataset_bytes(phantom_slices[0])
    secondary_capture = "1.2.840.10008.5.1.4.1.1.7"
    status = _raw_c_store(node.port, secondary_capture, ds.SOPInstanceUID, payload, ds.file_meta.TransferSyntaxUID)
    assert status == 0xA900


def test_junk_on_the_socket_does_not_kill_the_node(node):
    for junk in (b"\x00" * 10, b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00\x00\x00\xff\xff\xff\xff" + b"x" * 100):
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                s.recv(1024)
    assert echoscu(node.port).returncode == 0


def test_disk_below_free_space_floor_gets_out_of_resources(node_factory, phantom_slices):
    node = node_factory(min_free_mb=1 << 40).start()
    result = storescu(node.port, phantom_slices[0])
    responses = store_responses(result.stdout + result.stderr)
    assert responses[0][1].startswith("(Refused: OutOfResources"), result.stdout
    assert _refusals(node)[str(pydicom.dcmread(phantom_slices[0], stop_before_pixels=True).SOPInstanceUID)][
        "status"] == "0xA700"
    assert node.status()["instances"] == 0


def test_unlisted_peer_is_rejected_at_association(node_factory, phantom_slices, tmp_path):
    node = node_factory()
    node.config_path.write_text(node.config_path.read_text().replace(
        "node:\n", "node:\n  allowed_peers: [{ae_title: CT_SCANNER_1, address: 127.0.0.1}]\n")
        + "query_retrieve: {allowed_peers: [{ae_title: PACS, address: 127.0.0.1}]}\n")
    node.start()
    assert echoscu(node.port, aet="INTRUDER").returncode != 0
    assert echoscu(node.port, aet="CT_SCANNER_1").returncode == 0
    assert echoscu(node.port, aet="PACS").returncode == 0  # may query and retrieve
    assert node.log_events("association.rejected")[0]["calling_ae"] == "INTRUDER"


def test_a_peer_allowed_only_to_query_may_not_store(node_factory, phantom_slices):
    node = node_factory()
    node.config_path.write_text(node.config_path.read_text().replace(
        "node:\n", "node:\n  allowed_peers: [{ae_title: CT_SCANNER_1, address: 127.0.0.1}]\n"))
    node.start()  # query_retrieve keeps its default: loopback may query and retrieve
    result = storescu(node.port, phantom_slices[0], aet="WORKSTATION")
    assert "(Success)" not in result.stdout + result.stderr
    (refused,) = node.log_events("store.refused")
    assert refused["status"] == "0x0124" and refused["calling_ae"] == "WORKSTATION"
    assert "(Success)" in (r := storescu(node.port, phantom_slices[0], aet="CT_SCANNER_1")).stdout + r.stderr


# -- kill -9 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_300(tmp_path_factory) -> list[Path]:
    ph = make_phantom((300, 128, 128), (1.0, 2.0, 2.0), seed=3)
    return write_ct_series(ph.hu, tmp_path_factory.mktemp("phantom300"), spacing=(1.0, 2.0, 2.0))


def test_kill_9_mid_transfer_loses_no_acknowledged_instance_and_work_resumes(node_factory, phantom_300, tmp_path):
    node = node_factory(completion_timeout_s=1.0).start()
    out_path = tmp_path / "storescu.out"
    with out_path.open("w") as out:
        sender = subprocess.Popen(
            [require_tool("storescu"), "-v", "-R", "-xe", "-aec", NODE_AE, "-aet", "SCANNER", "127.0.0.1",
             str(node.port), *map(str, phantom_300)],
            stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while out_path.read_text().count("Received Store Response (Success)") < 100:
            assert sender.poll() is None, "storescu finished before the node was killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        node.kill9()
        sender.wait(timeout=60)
    acked = [Path(f) for f, r in store_responses(out_path.read_text()) if r == "(Success)"]
    assert 100 <= len(acked) < len(phantom_300)

    # Restart on the same data directory: every acknowledged instance is there, byte-for-byte the pixels sent.
    node.log_path = tmp_path / "restart.log"
    node.start()
    stored = {p.stem: p for p in (node.data_dir / "spool").glob("*/*/*.dcm")}
    for f in acked:
        sent = pydicom.dcmread(f)
        assert sent.SOPInstanceUID in stored, f"acknowledged instance {f.name} lost"
        assert pydicom.dcmread(stored[sent.SOPInstanceUID]).PixelData == sent.PixelData
    assert not list((node.data_dir / "spool").glob("*/*/*.tmp"))

    # The interrupted series completes and is processed after the restart ...
    status = node.wait_for(lambda s: s["jobs"]["done"] == 1, what="the interrupted series to be processed")
    assert status["instances"] >= len(acked)
    # ... and the scanner's retry of the rest re-opens it as a new version that covers the whole series.
    rest = [f for f in phantom_300 if f not in set(acked)]
    result = storescu(node.port, *rest)
    assert all(r == "(Success)" for _, r in store_responses(result.stdout + result.stderr))
    node.wait_for(lambda s: s["jobs"]["done"] == 2, what="the completed series to be processed")
    assert node.log_events("job.done")[-1]["shape"] == [300, 128, 128]


def test_one_address_cannot_hold_every_association_slot(node_factory):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node = node_factory()
    node.config_path.write_text(node.config_path.read_text().replace(
        "node:\n", "node:\n  max_associations_per_peer: 2\n"))
    node.start()

    def associate(source: str):  # noqa: ANN202 - pynetdicom Association
        ae = AE(ae_title="HOGGER")
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", node.port, ae_title="ISONODE", bind_address=(source, 0))

    held = [associate("127.0.0.1") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = associate("127.0.0.1")
        assert third.is_rejected
        other_host = associate("127.0.0.2")
        assert other_host.is_established
        other_host.release()
    finally:
        for a in held:
            a.release()
    again = associate("127.0.0.1")  # slots come back as associations end
    assert again.is_established
    again.release()
    [event] = [e for e in node.log_events("association.rejected") if "max_associations_per_peer" in e["reason"]]
    assert event["address"] == "127.0.0.1"
