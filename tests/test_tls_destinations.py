"""DICOM TLS towards destinations: the outbox delivers a real series' results to DCMTK's `storescp +tls`
verified against the configured CA, never to a destination whose certificate that CA did not sign (retried
with a reason naming TLS), C-MOVE's sub-association goes over TLS too (presenting our certificate when the
destination requires one), and unusable TLS files fail that destination's deliveries, not the node."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from conftest import NODE_AE, REPO, free_port, make_test_pki, require_tool, shared_case, storescu, wait_until
from test_outbox import FAST, events, write_sc

from appliance.outbox import Destination, Outbox, OutboxSender
from dicom_node.database import Database
from dicom_node.tls import ClientTls

CASE = "dcmqa_ge_head_gantry_tilt"  # 28 slices
STORE_ONLY = "\nrouting: {default_modalities: []}\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA; a destination's and the node's certificates it signed (the destination's names 127.0.0.1 only
    as a DNS name, as a site might get it wrong); a stranger's self-signed one."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), ("dest", "node"))


class TlsStoreScp:
    """DCMTK storescp speaking TLS only, with `key`/`cert`, writing what it receives to `folder`."""

    def __init__(self, folder: Path, key: Path, cert: Path, *peer: str, aet: str = "PACS") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.proc = subprocess.Popen([require_tool("storescp"), "-aet", aet, "-od", str(folder), "+tls", str(key),
                                      str(cert), *(peer or ("-ic",)), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "storescp exited at start"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError("storescp did not start listening")

    def received(self) -> dict[str, Path]:
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in self.folder.iterdir()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def tls_storescp(tmp_path: Path):  # noqa: ANN201 - a factory
    started: list[TlsStoreScp] = []

    def start(key: Path, cert: Path, *peer: str, aet: str = "PACS") -> TlsStoreScp:
        started.append(TlsStoreScp(tmp_path / f"received{len(started)}", key, cert, *peer, aet=aet))
        return started[-1]

    yield start
    for scp in started:
        scp.stop()


def _destination(name: str, port: int, **tls: object) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in tls.items())
    return f"  - {{name: {name}, ae_title: {name}, host: 127.0.0.1, port: {port}, tls: {{{fields}}}}}\n"


def _series() -> list[Path]:
    return sorted((shared_case(CASE) / "ct_dicom").glob("*.dcm"))


def test_results_go_over_tls_to_a_destination_the_ca_signed_and_never_to_one_it_did_not(
        node_factory, pki, tls_storescp):
    trusted = tls_storescp(pki["dest_key"], pki["dest_pem"], aet="TRUSTED")
    stranger = tls_storescp(pki["stranger_key"], pki["stranger_pem"], aet="STRANGER")
    node = node_factory(extra="destinations:\n" + _destination("TRUSTED", trusted.port, ca_certificates=pki["ca_pem"])
                        + _destination("STRANGER", stranger.port, ca_certificates=pki["ca_pem"])
                        + "outbox: {retry_base_s: 0.2, retry_max_s: 0.5}\n").start()
    assert storescu(node.port, *_series()).returncode == 0

    outbox = Outbox(Database(node.data_dir / "isonode.db"), node.data_dir / "results")
    wait_until(lambda: outbox.counts_by_destination().get("TRUSTED", {}).get("done", 0) > 0
               and not outbox.list(state="pending", destination="TRUSTED")
               and all(d.attempts >= 2 for d in outbox.list(destination="STRANGER")),
               timeout=120, what="TRUSTED delivered, STRANGER retried")
    delivered = outbox.list(state="done", destination="TRUSTED")
    assert set(trusted.received()) == {d.sop_instance_uid for d in delivered}
    assert stranger.received() == {}
    untrusted = outbox.list(destination="STRANGER")
    assert untrusted and {d.state for d in untrusted} == {"pending"}  # retried until it expires, not delivered
    assert all("TLS handshake failed" in d.last_error and "not accepted" in d.last_error for d in untrusted)
    retries = [e for e in node.log_events("outbox.retry") if e["destination"] == "STRANGER"]
    assert retries and all(e["reason"].startswith("TLS handshake failed") for e in retries)


def test_movescu_to_a_tls_destination_sends_over_tls_presenting_our_certificate(node_factory, pki, tls_storescp):
    files = _series()[:5]
    dest = tls_storescp(pki["dest_key"], pki["dest_pem"], "-rc", "+cf", str(pki["ca_pem"]), aet="MOVEDEST")
    node = node_factory(routing=STORE_ONLY, extra="destinations:\n" + _destination(
        "MOVEDEST", dest.port, ca_certificates=pki["ca_pem"], certificate=pki["node_pem"],
        private_key=pki["node_key"])).start()
    assert storescu(node.port, *files).returncode == 0
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    result = subprocess.run([require_tool("movescu"), "-v", "-S", "-aec", NODE_AE, "-aem", "MOVEDEST", "-k",
                             "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}", "-k",
                             f"SeriesInstanceUID={series_uid}", "127.0.0.1", str(node.port)],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert "Final Move Response (Success)" in output, output
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert set(dest.received()) == sent


def test_a_move_to_a_destination_whose_certificate_the_ca_did_not_sign_is_refused_naming_tls(
        node_factory, pki, tls_storescp):
    files = _series()[:2]
    dest = tls_storescp(pki["stranger_key"], pki["stranger_pem"], aet="MOVEDEST")
    node = node_factory(routing=STORE_ONLY, extra="destinations:\n" + _destination(
        "MOVEDEST", dest.port, ca_certificates=pki["ca_pem"])).start()
    assert storescu(node.port, *files).returncode == 0
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    result = subprocess.run([require_tool("movescu"), "-v", "-S", "-aec", NODE_AE, "-aem", "MOVEDEST", "-k",
                             "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1",
                             str(node.port)], capture_output=True, text=True, timeout=120)
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in result.stdout + result.stderr
    (failed,) = node.log_events("move.tls_failed")
    assert failed["move_destination"] == "MOVEDEST" and "not accepted" in failed["reason"]
    assert dest.received() == {}


def _sender_outbox(tmp_path: Path, tls: ClientTls | None) -> Outbox:
    return Outbox(Database(tmp_path / "node.sqlite"), tmp_path / "results", tls_for=lambda name: tls)


def test_unusable_tls_files_fail_that_destinations_deliveries_with_the_reason_and_one_log_line(
        tmp_path, pki, caplog):
    outbox = _sender_outbox(tmp_path, ClientTls(ca_certificates=tmp_path / "missing-ca.pem"))
    files = [write_sc(tmp_path / "results" / f"f{i}.dcm", i) for i in range(3)]
    ids = outbox.enqueue(destination=Destination("PACS", "PACS", "127.0.0.1", free_port()), files=files)
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    sender = OutboxSender(outbox, **FAST).start()
    try:
        wait_until(lambda: all(outbox.get(i).state == "failed" for i in ids), what="rows failed")
    finally:
        sender.stop(timeout=2.0)
    for i in ids:
        error = outbox.get(i).last_error
        assert "TLS settings of destination 'PACS' cannot be used" in error and "missing-ca.pem" in error
    (logged,) = events(caplog, "outbox.tls_unusable")
    assert logged["count"] == 3 and "missing-ca.pem" in logged["reason"]
    assert events(caplog, "outbox.failed") == []


def test_a_stored_row_finds_its_tls_by_destination_name_and_an_unconfigured_name_goes_plain(
        tmp_path, pki, tls_storescp):
    from appliance.config import parse_config
    from appliance.node import make_outbox

    scp = tls_storescp(pki["dest_key"], pki["dest_pem"])
    config = parse_config(f"storage: {{data_dir: {tmp_path}}}\ndestinations:\n"
                          + _destination("PACS", scp.port, ca_certificates=pki["ca_pem"]))
    outbox = make_outbox(Database(config.database_path), config)  # as after a restart: rows hold no TLS
    (configured,) = outbox.enqueue(destination=Destination("PACS", "PACS", "127.0.0.1", scp.port),
                                   files=[write_sc(config.results_dir / "a.dcm", 1)])
    (gone,) = outbox.enqueue(destination=Destination("GONE", "PACS", "127.0.0.1", scp.port),
                             files=[write_sc(config.results_dir / "b.dcm", 2)])
    sender = OutboxSender(outbox, **FAST).start()
    try:
        wait_until(lambda: outbox.get(configured).state == "done" and outbox.get(gone).attempts > 0,
                   what="both rows tried")
    finally:
        sender.stop(timeout=2.0)
    assert set(scp.received()) == {outbox.get(configured).sop_instance_uid}
    assert outbox.get(gone).state == "pending" and "TLS" not in outbox.get(gone).last_error  # plain TCP, as before


@pytest.mark.parametrize("verify_hostname", [False, True])
def test_verify_hostname_decides_whether_the_certificate_must_name_the_address_dialled(
        tmp_path, pki, tls_storescp, verify_hostname):
    scp = tls_storescp(pki["dest_key"], pki["dest_pem"])  # signed by the CA, names pacs.example, not 127.0.0.1
    outbox = _sender_outbox(tmp_path, ClientTls(pki["ca_pem"], verify_hostname=verify_hostname))
    (row,) = outbox.enqueue(destination=Destination("PACS", "PACS", "127.0.0.1", scp.port),
                            files=[write_sc(tmp_path / "results" / "f.dcm")])
    sender = OutboxSender(outbox, **FAST).start()
    try:
        wait_until(lambda: outbox.get(row).state == "done" or outbox.get(row).attempts > 0, what="an attempt")
    finally:
        sender.stop(timeout=2.0)
    if verify_hostname:
        assert outbox.get(row).state == "pending" and "mismatch" in outbox.get(row).last_error
        assert scp.received() == {}
    else:
        assert outbox.get(row).state == "done" and len(scp.received()) == 1


def test_destination_tls_is_checked_at_the_door_naming_the_key(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("destinations:\n  - {name: PACS, ae_title: PACS, host: 10.0.0.5, port: 2762,\n"
                    "     tls: {ca_certificates: ca.pem, certificate: node.pem}}\n")
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "config", "check", str(site)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "destinations.0.tls: certificate and private_key go together" in result.stderr
    site.write_text("destinations:\n  - {name: PACS, ae_title: PACS, host: 10.0.0.5, port: 2762,\n"
                    "     tls: {ca_certificates: ca.pem, verify_host: true}}\n")
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "config", "check", str(site)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "destinations.0.tls.verify_host: unknown key" in result.stderr
