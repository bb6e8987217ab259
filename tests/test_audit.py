"""The audit trail (PS3.15 A.5 / IHE ATNA events): append-only in the database; a real node records the
associations it accepts and refuses, the instances received per series with their patient, queries and
retrieves with their keys, logins to the page, its own start; `isonode audit` lists them, and reading the
trail is itself audited. The operational log still names no patient."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import httpx
import pydicom
import pytest
from conftest import NODE_AE, echoscu, free_port, require_tool, shared_case, storescu

from dicom_node.audit import AuditTrail, Participant, ParticipantObject
from dicom_node.database import Database


def test_the_trail_refuses_updates_and_deletes(tmp_path):
    db = Database(tmp_path / "db.sqlite")
    trail = AuditTrail(db)
    trail.record("query", participants=[Participant("PACS", "10.0.0.5", True, "Source")],
                 objects=[ParticipantObject("query", "STUDY", detail={"keys": {"PatientName": "DOE*"}})])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), db.transaction() as conn:
        conn.execute("UPDATE audit_events SET outcome = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), db.transaction() as conn:
        conn.execute("DELETE FROM audit_events")
    [(_, rec)] = trail.list()
    doc = rec.as_json()
    assert doc["event_id"] == {"code": "110112", "scheme": "DCM", "meaning": "Query"}
    assert doc["objects"][0]["detail"]["keys"] == {"PatientName": "DOE*"}


def test_an_unknown_event_name_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown audit event"):
        AuditTrail(Database(tmp_path / "db.sqlite")).record("coffee_break")


def _audit(node, *args: str) -> list[dict]:
    return json.loads(node.run_cli("audit", "--json", *args))


def test_a_node_audits_associations_instances_queries_retrieves_and_logins(node_factory, tmp_path):
    web_port = free_port()
    node = node_factory(web_port=web_port)
    node.extra_env["ISONODE_WEB_TOKEN"] = "audit-token-1234"
    node.config_path.write_text(node.config_path.read_text().replace(
        "node:\n", "node:\n  allowed_peers: [{ae_title: CT1, address: 127.0.0.1}]\n", 1)
        + "query_retrieve: {allowed_peers: [{ae_title: CT1, address: 127.0.0.1}]}\n")
    node.start()
    files = sorted((shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom").glob("*.dcm"))[:3]
    assert storescu(node.port, *files, aet="CT1").returncode == 0
    assert echoscu(node.port, aet="INTRUDER").returncode != 0
    find = subprocess.run([require_tool("findscu"), "-S", "-aet", "CT1", "-aec", NODE_AE, "127.0.0.1",
                           str(node.port), "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=CRLM*",
                           "-k", "StudyInstanceUID"], capture_output=True, text=True, timeout=60)
    assert find.returncode == 0
    get = subprocess.run([require_tool("getscu"), "-S", "-aet", "CT1", "-aec", NODE_AE, "-od", str(tmp_path),
                          "127.0.0.1", str(node.port), "-k", "QueryRetrieveLevel=STUDY", "-k",
                          f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}"],
                         capture_output=True, text=True, timeout=60)
    assert get.returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{web_port}/login", data={"token": "wrong-token"})
            httpx.post(f"http://127.0.0.1:{web_port}/login", data={"token": "audit-token-1234"})
            break
        except httpx.ConnectError:
            time.sleep(0.2)
    time.sleep(0.5)  # the association's audit record is written as it closes

    events = _audit(node)
    kinds = [e["event"] for e in events]
    for kind in ("configuration_loaded", "association_accepted", "association_refused", "instances_received",
                 "query", "retrieve", "web_login"):
        assert kind in kinds, kinds
    assert all({"time", "event", "outcome", "event_id", "action", "participants"} <= set(e) for e in events)
    [received] = [e for e in events if e["event"] == "instances_received"]
    assert received["event_id"]["code"] == "110104" and received["action"] == "C"
    assert {"CT1"} <= {p["user_id"] for p in received["participants"]}
    patient = next(o for o in received["objects"] if o["kind"] == "patient")
    assert patient["id"] == "CRLM-CT-1004"  # the trail names the patient, as ATNA does
    assert next(o for o in received["objects"] if o["kind"] == "series")["detail"]["instances"] == 3
    refused = next(e for e in events if e["event"] == "association_refused")
    assert refused["outcome"] == 4 and refused["participants"][0]["user_id"] == "INTRUDER"
    query = next(e for e in events if e["event"] == "query")
    assert query["objects"][0]["detail"]["keys"]["PatientName"] == "CRLM*"
    retrieve = next(e for e in events if e["event"] == "retrieve")
    assert retrieve["outcome"] == 0 and retrieve["detail"]["service"] == "C-GET" and retrieve["detail"]["sent"] == 3
    logins = [e["outcome"] for e in events if e["event"] == "web_login"]
    assert logins == [4, 0]

    later = _audit(node, "--since", str(time.time() + 3600))
    assert later == []
    assert [e["event"] for e in _audit(node)].count("audit_log_used") >= 2  # each reading is recorded
    assert "CRLM-CT-1004" not in node.log_text()  # the operational log still names no patient


def test_a_record_becomes_a_dicom_audit_message_in_an_octet_counted_rfc5424_frame():
    import xml.etree.ElementTree as ET

    from dicom_node.audit import AuditRecord
    from dicom_node.audit_syslog import syslog_frame

    rec = AuditRecord(1_800_000_000.0, "instances_received", 0,
                      (Participant("CT1", "10.0.0.7", True, "Source"), Participant("ISONODE", "", False,
                                                                                     "Destination")),
                      (ParticipantObject("patient", "P123", "DOE^JANE"), ParticipantObject("study", "1.2.3"),
                       ParticipantObject("series", "1.2.3.4", detail={"instances": 41})))
    frame = syslog_frame(rec, "ISONODE", "node1")
    length, message = frame.split(b" ", 1)
    assert int(length) == len(message)
    header, xml = message.decode().split(" - ", 1)
    assert header.startswith("<85>1 2027-01-15T08:00:00.000Z node1 isonode ")
    root = ET.fromstring(xml.split("?>", 1)[1])
    ident = root.find("EventIdentification")
    assert ident.get("EventActionCode") == "C" and ident.get("EventOutcomeIndicator") == "0"
    assert ident.find("EventID").get("csd-code") == "110104"
    source = root.find("ActiveParticipant")
    assert source.get("UserID") == "CT1" and source.get("NetworkAccessPointID") == "10.0.0.7"
    assert source.find("RoleIDCode").get("csd-code") == "110153"
    patient = root.find("ParticipantObjectIdentification")
    assert patient.get("ParticipantObjectID") == "P123" and patient.find("ParticipantObjectName").text == "DOE^JANE"
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "ISONODE"


def test_the_node_forwards_its_audit_records_to_a_syslog_collector(node_factory):
    import socket
    import threading

    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)

    def collect() -> None:
        conn, _ = server.accept()
        conn.settimeout(30)
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received.append(chunk)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    port = server.getsockname()[1]
    node = node_factory(extra=f"audit:\n  syslog: {{host: 127.0.0.1, port: {port}, transport: tcp}}\n").start()
    assert echoscu(node.port).returncode == 0
    deadline = time.monotonic() + 20
    while b"110114" not in b"".join(received) and time.monotonic() < deadline:
        time.sleep(0.1)
    node.stop()
    server.close()
    stream = b"".join(received)
    assert b"<AuditMessage>" in stream and b'csd-code="110114"' in stream  # the accepted association
    assert b'csd-code="110120"' in stream  # Application Start
