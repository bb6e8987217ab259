"""The durable outbox: delivery to real peers, retries and backoff, aborts, failures, expiry, priority, crashes."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, free_port, require_tool, wait_until
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset

from appliance.outbox import (
    PRIORITY_FULL,
    PRIORITY_PREVIEW,
    Destination,
    Outbox,
    OutboxFile,
    OutboxSender,
)
from dicom_node.database import Database

PATIENT_NAME = "Outbox^Testpatient"
PATIENT_ID = "PID-OUTBOX-0001"
FAST = dict(poll_interval_s=0.05, backoff_base_s=0.1, backoff_cap_s=0.4, acse_timeout_s=5.0, dimse_timeout_s=5.0)


def write_sc(path: Path, value: int = 0) -> OutboxFile:
    """A tiny Secondary Capture image, Explicit VR Little Endian, as the node writes its results."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(64, dtype=np.uint8) + value).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return OutboxFile(path.name, str(ds.SOPClassUID), str(ds.SOPInstanceUID))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def outbox(tmp_path: Path, results: Path) -> Outbox:
    return Outbox(Database(tmp_path / "node.sqlite"), results)


@pytest.fixture
def make_files(results: Path) -> Callable[..., list[OutboxFile]]:
    def make(n: int, prefix: str = "f") -> list[OutboxFile]:
        return [write_sc(results / f"{prefix}{i}.dcm", i) for i in range(n)]
    return make


@pytest.fixture
def senders() -> Iterator[Callable[..., OutboxSender]]:
    started: list[OutboxSender] = []

    def start(outbox: Outbox, **kwargs) -> OutboxSender:
        sender = OutboxSender(outbox, **{**FAST, **kwargs}).start()
        started.append(sender)
        return sender
    yield start
    for s in started:
        s.stop(timeout=2.0)


@dataclass
class StoreScp:
    """DCMTK storescp writing what it receives to `out_dir`."""

    port: int
    out_dir: Path
    proc: subprocess.Popen | None = None

    def start(self) -> StoreScp:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([require_tool("storescp"), "-od", str(self.out_dir), "-aet", "PACS",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        echo = require_tool("echoscu")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "storescp exited at start"
            if subprocess.run([echo, "-aec", "PACS", "127.0.0.1", str(self.port)], capture_output=True,
                              timeout=10).returncode == 0:
                return self
            time.sleep(0.05)
        raise TimeoutError("storescp did not start listening")

    def received(self) -> dict[str, Path]:
        return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in self.out_dir.iterdir()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreScp]]:
    scps: list[StoreScp] = []

    def make(port: int | None = None, *, start: bool = True) -> StoreScp:
        scp = StoreScp(port or free_port(), tmp_path / f"pacs{len(scps)}")
        scps.append(scp)
        return scp.start() if start else scp
    yield make
    for scp in scps:
        scp.stop()


@dataclass
class FakePacs:
    """A pynetdicom SCP whose C-STORE behaviour the test switches: ok, abort, a status, or hang."""

    behaviour: str = "ok"
    status: int = 0x0000
    delay_s: float = 0.0
    received: list[str] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    server: object = None

    def handle(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        self.entered.set()
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.behaviour == "abort":
            event.assoc.abort()
            time.sleep(0.2)  # the A-ABORT leaves before anything we return
            return 0x0000
        if self.behaviour == "hang":
            self.release.wait(30)
        return self.status if self.behaviour == "status" else 0x0000

    def destination(self, name: str = "fake") -> Destination:
        return Destination(name, "PACS", "127.0.0.1", self.port)


@pytest.fixture
def fake_pacs() -> Iterator[FakePacs]:
    pacs = FakePacs(port=free_port())
    ae = AE(ae_title="PACS")
    ae.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    pacs.server = ae.start_server(("127.0.0.1", pacs.port), block=False,
                                  evt_handlers=[(evt.EVT_C_STORE, pacs.handle)])
    yield pacs
    pacs.release.set()
    pacs.server.shutdown()


def dest_for(scp: StoreScp, name: str = "pacs") -> Destination:
    return Destination(name, "PACS", "127.0.0.1", scp.port)


def states(outbox: Outbox, ids: list[int]) -> list[str]:
    return [outbox.get(i).state for i in ids]


def all_done(outbox: Outbox, ids: list[int]) -> Callable[[], bool]:
    return lambda: states(outbox, ids) == ["done"] * len(ids)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict]:
    return [dict(r.fields) for r in caplog.records if r.getMessage() == name and hasattr(r, "fields")]


def test_files_reach_storescp_as_the_same_data_sets_and_rows_become_done(
        outbox, make_files, results, storescp_factory, senders, caplog):
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    scp = storescp_factory()
    files = make_files(3)
    ids = outbox.enqueue(destination=dest_for(scp), files=files, job_id=7)
    senders(outbox)
    wait_until(all_done(outbox, ids), what="delivery to storescp")

    received = scp.received()
    assert set(received) == {f.sop_instance_uid for f in files}
    for f in files:
        sent, got = results / f.relpath, received[f.sop_instance_uid]
        (_, sent_at), (_, got_at) = split_dataset(sent), split_dataset(got)
        assert sent.read_bytes()[sent_at:] == got.read_bytes()[got_at:]  # the data set, byte for byte
    rows = [outbox.get(i) for i in ids]
    assert all(r.last_status == 0 and r.attempts == 0 and r.delivered_at and r.job_id == 7 for r in rows)
    assert outbox.counts() == {"pending": 0, "done": 3, "failed": 0}
    assert outbox.counts_by_destination() == {"pacs": {"pending": 0, "done": 3, "failed": 0}}
    # the batch's line follows the association's release, a moment after the rows changed state
    wait_until(lambda: sum(e["done"] for e in events(caplog, "outbox.delivered")) == 3, what="outbox.delivered")
    assert all(e["seconds"] >= 0 and e["destination"] == "pacs" for e in events(caplog, "outbox.delivered"))
    log_text = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert PATIENT_NAME not in log_text and PATIENT_ID not in log_text


def test_destination_down_at_first_is_delivered_after_backoff_with_attempts_counted(
        outbox, make_files, storescp_factory, senders, caplog):
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    scp = storescp_factory(start=False)  # nothing listens on its port yet
    files = make_files(4)
    ids = outbox.enqueue(destination=dest_for(scp), files=files)
    senders(outbox)
    wait_until(lambda: all(outbox.get(i).attempts >= 2 for i in ids), what="two refused attempts")
    assert states(outbox, ids) == ["pending"] * 4
    assert outbox.get(ids[0]).last_error.startswith("could not connect")
    retry = events(caplog, "outbox.retry")[0]
    assert retry["count"] == 4 and retry["next_attempt_in_s"] == pytest.approx(0.1)

    scp.start()
    wait_until(all_done(outbox, ids), what="delivery once the destination is up")
    assert set(scp.received()) == {f.sop_instance_uid for f in files}
    assert all(outbox.get(i).attempts >= 2 for i in ids)


def test_a_hanging_destination_does_not_delay_another_destination(
        outbox, make_files, storescp_factory, senders):
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepts TCP connections (backlog) but never answers an A-ASSOCIATE-RQ
    try:
        hung = Destination("hung", "PACS", "127.0.0.1", hang.getsockname()[1])
        good = storescp_factory()
        hung_ids = outbox.enqueue(destination=hung, files=make_files(2, "h"))
        good_ids = outbox.enqueue(destination=dest_for(good, "good"), files=make_files(2, "g"))
        t0 = time.monotonic()
        senders(outbox, acse_timeout_s=3.0)
        wait_until(all_done(outbox, good_ids), timeout=2.5, what="the good destination")
        assert time.monotonic() - t0 < 2.5
        assert states(outbox, hung_ids) == ["pending", "pending"]
    finally:
        hang.close()


def test_an_abort_after_the_c_store_request_is_not_a_delivery(outbox, make_files, fake_pacs, senders):
    fake_pacs.behaviour = "abort"
    ids = outbox.enqueue(destination=fake_pacs.destination(), files=make_files(2))
    senders(outbox, backoff_base_s=0.3, backoff_cap_s=0.3)
    wait_until(lambda: outbox.get(ids[0]).attempts >= 1 and outbox.get(ids[1]).attempts >= 1,
               what="aborted attempts")
    for i in ids:
        row = outbox.get(i)
        assert row.state == "pending" and row.delivered_at is None
        assert "aborted" in row.last_error and row.status_failures == 0
    assert len(fake_pacs.received) >= 2  # the peer did get the requests

    fake_pacs.behaviour = "ok"
    wait_until(all_done(outbox, ids), what="delivery to the now well-behaved peer")


def test_failure_status_is_retried_then_failed_and_operator_retry_brings_it_back(
        outbox, make_files, fake_pacs, senders, caplog):
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    fake_pacs.behaviour, fake_pacs.status = "status", 0xA700
    [row_id] = outbox.enqueue(destination=fake_pacs.destination(), files=make_files(1))
    senders(outbox, max_status_failures=3)
    wait_until(lambda: outbox.get(row_id).state == "failed", what="failed after max status failures")
    row = outbox.get(row_id)
    assert (row.attempts, row.status_failures, row.last_status) == (3, 3, 0xA700)
    assert "0xA700" in row.last_error and len(fake_pacs.received) == 3
    [failed] = events(caplog, "outbox.failed")
    assert failed["status"] == "0xA700" and failed["id"] == row_id

    fake_pacs.behaviour = "ok"
    assert outbox.retry(row_id) is True
    assert outbox.retry(row_id) is False  # only a failed row can be retried
    wait_until(lambda: outbox.get(row_id).state == "done", what="delivery after operator retry")
    assert outbox.get(row_id).attempts == 0 and len(fake_pacs.received) == 4


def test_warning_statuses_count_as_delivered(outbox, make_files, fake_pacs, senders):
    fake_pacs.behaviour, fake_pacs.status = "status", 0xB000
    [row_id] = outbox.enqueue(destination=fake_pacs.destination(), files=make_files(1))
    senders(outbox)
    wait_until(lambda: outbox.get(row_id).state == "done", what="warning delivery")
    assert outbox.get(row_id).last_status == 0xB000


def test_rows_pending_longer_than_max_age_expire_as_failed(outbox, make_files, senders, caplog):
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    down = Destination("down", "PACS", "127.0.0.1", free_port())
    ids = outbox.enqueue(destination=down, files=make_files(2))
    senders(outbox, max_age_s=0.5)
    wait_until(lambda: states(outbox, ids) == ["failed", "failed"], what="expiry")
    row = outbox.get(ids[0])
    assert row.last_error.startswith("expired: pending") and "could not connect" in row.last_error
    assert sum(e["count"] for e in events(caplog, "outbox.expired")) == 2

    assert outbox.retry(ids[0])  # a retried row gets a fresh age, so it is pending again
    assert outbox.get(ids[0]).state == "pending"


def test_preview_rows_leave_before_full_rows_queued_earlier(outbox, make_files, fake_pacs, senders):
    dest = fake_pacs.destination()
    full = outbox.enqueue(destination=dest, files=make_files(5, "full"), priority=PRIORITY_FULL)
    preview = outbox.enqueue(destination=dest, files=make_files(2, "prev"), priority=PRIORITY_PREVIEW)
    senders(outbox)
    wait_until(all_done(outbox, full + preview), what="delivery")
    uids = [outbox.get(i).sop_instance_uid for i in preview + full]
    assert fake_pacs.received == uids


def test_a_preview_queued_during_a_batch_of_full_results_does_not_wait_for_the_batch(
        outbox, make_files, fake_pacs, senders):
    fake_pacs.delay_s = 0.03
    dest = fake_pacs.destination()
    full = outbox.enqueue(destination=dest, files=make_files(30, "full"))
    senders(outbox, poll_interval_s=0.5)  # the wake-up, not the poll, must bring the preview forward
    wait_until(lambda: len(fake_pacs.received) >= 3, what="the batch to start")
    [preview] = outbox.enqueue(destination=dest, files=make_files(1, "prev"), priority=PRIORITY_PREVIEW)
    queued_at = len(fake_pacs.received)
    wait_until(lambda: outbox.get(preview).state == "done", what="the preview")
    position = fake_pacs.received.index(outbox.get(preview).sop_instance_uid)
    assert position <= queued_at + 2 < 30
    wait_until(all_done(outbox, full), what="the rest of the batch")


def test_missing_or_unreadable_file_fails_with_reason_and_sender_keeps_working(
        outbox, make_files, results, storescp_factory, senders):
    scp = storescp_factory()
    good = make_files(2)
    (results / "garbage.dcm").write_bytes(b"not DICOM at all")
    ghost = OutboxFile("gone.dcm", SecondaryCaptureImageStorage, generate_uid())
    garbage = OutboxFile("garbage.dcm", SecondaryCaptureImageStorage, generate_uid())
    ids = outbox.enqueue(destination=dest_for(scp), files=[good[0], ghost, garbage, good[1]])
    senders(outbox)
    wait_until(lambda: "pending" not in states(outbox, ids), what="all rows settled")
    assert states(outbox, ids) == ["done", "failed", "failed", "done"]
    assert outbox.get(ids[1]).last_error == "file missing: gone.dcm"
    assert outbox.get(ids[2]).last_error.startswith("file unreadable: garbage.dcm")
    assert [d.id for d in outbox.list(state="failed")] == [ids[2], ids[1]]

    later = outbox.enqueue(destination=dest_for(scp), files=make_files(1, "later"))
    wait_until(all_done(outbox, later), what="a later delivery")


CRASHING_SENDER = """
import sys, time
from pathlib import Path
from appliance.outbox import Outbox, OutboxSender
from dicom_node.database import Database
OutboxSender(Outbox(Database(Path(sys.argv[1])), Path(sys.argv[2])), poll_interval_s=0.05).start()
time.sleep(120)
"""


def test_rows_in_flight_when_the_sender_is_killed_stay_pending_and_are_sent_by_the_next_one(
        tmp_path, results, make_files, fake_pacs, senders):
    db_path = tmp_path / "node.sqlite"
    outbox = Outbox(Database(db_path), results)
    files = make_files(2)
    ids = outbox.enqueue(destination=fake_pacs.destination(), files=files)
    fake_pacs.behaviour = "hang"  # the first C-STORE is received but never answered
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_SENDER, str(db_path), str(results)], cwd=REPO)
    try:
        assert fake_pacs.entered.wait(30), "the sender subprocess never sent"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [(r.state, r.attempts) for r in map(outbox.get, ids)] == [("pending", 0), ("pending", 0)]

    fake_pacs.behaviour = "ok"
    fake_pacs.release.set()
    fresh = Outbox(Database(db_path), results)  # as after a restart
    senders(fresh)
    wait_until(all_done(fresh, ids), what="delivery after restart")
    assert fake_pacs.received.count(files[0].sop_instance_uid) == 2  # at-least-once: sent again, same UID


def test_enqueue_in_commits_or_rolls_back_with_the_callers_transaction(outbox, make_files):
    dest = Destination("pacs", "PACS", "127.0.0.1", 104)
    files = make_files(2)
    with pytest.raises(RuntimeError), outbox.db.transaction() as conn:
        Outbox.enqueue_in(conn, destination=dest, files=files, job_id=1, priority=0, now=time.time())
        raise RuntimeError("the job's completion failed")
    assert outbox.counts()["pending"] == 0
    with outbox.db.transaction() as conn:
        ids = Outbox.enqueue_in(conn, destination=dest, files=files, job_id=1, priority=0, now=time.time())
    row = outbox.get(ids[0])
    assert (row.state, row.target, row.destination, row.priority, row.job_id) == ("pending", dest, "pacs", 0, 1)
    with pytest.raises(ValueError), outbox.db.transaction() as conn:
        Outbox.enqueue_in(conn, destination=dest, files=[OutboxFile("../etc/passwd", "1.2", "1.2.3")],
                          job_id=None, priority=1, now=time.time())
