"""Forwarding the audit trail to a syslog collector (an ATNA Audit Record Repository): each record as the
DICOM audit message XML of PS3.15 A.5.1, in an RFC 5424 syslog message, octet-counted over TCP (RFC 6587)
or TLS (RFC 5425).

The database is the record; forwarding is a copy. A bounded queue and one sender thread keep the node's
threads from ever waiting on the collector; while it is unreachable, messages wait (the oldest are
dropped, and counted, once the queue is full) and go out when it answers again.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from dicom_node.audit import AuditRecord
from dicom_node.logfmt import log_event

logger = logging.getLogger(__name__)

PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice), as IHE ATNA sends
MSGID = "IHE+RFC-3881"
ROLES = {"Source": ("110153", "Source Role ID"), "Destination": ("110152", "Destination Role ID"),
         "Application": ("110150", "Application")}
# ParticipantObjectTypeCode, ...TypeCodeRole, and the ID type code (scheme, code, meaning) per object kind
OBJECTS = {"patient": ("1", "1", ("RFC-3881", "2", "Patient Number")),
           "study": ("2", "3", ("DCM", "110180", "Study Instance UID")),
           "series": ("2", "3", ("DCM", "112002", "Series Instance UID")),
           "query": ("2", "24", ("DCM", "110181", "SOP Class UID"))}


def _code(parent: ET.Element, tag: str, scheme: str, code: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning})


def audit_xml(rec: AuditRecord, audit_source_id: str) -> str:
    """The record as a DICOM audit message (PS3.15 A.5.1)."""
    kind = rec.kind
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": kind.action, "EventOutcomeIndicator": str(rec.outcome),
        "EventDateTime": datetime.fromtimestamp(rec.time, timezone.utc).isoformat(timespec="milliseconds")})
    _code(ident, "EventID", "DCM", kind.code, kind.meaning)
    if kind.type_code:
        _code(ident, "EventTypeCode", "DCM", kind.type_code, kind.type_meaning)
    for p in rec.participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": str(p.is_requestor).lower()}
        if p.address:
            host = p.address.rsplit(":", 1)[0] if p.address.count(":") == 1 else p.address
            attrs |= {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "2"}
        active = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role in ROLES:
            _code(active, "RoleIDCode", "DCM", *ROLES[p.role])
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source_id})
    for o in rec.objects:
        type_code, role, (scheme, code, meaning) = OBJECTS[o.kind]
        obj = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": o.id, "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role})
        _code(obj, "ParticipantObjectIDTypeCode", scheme, code, meaning)
        if o.name:
            ET.SubElement(obj, "ParticipantObjectName").text = o.name
        for key, value in o.detail.items():
            values = value.items() if isinstance(value, dict) else [(key, value)]
            for k, v in values:
                ET.SubElement(obj, "ParticipantObjectDetail", {"type": str(k), "value": str(v)})
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


def syslog_frame(rec: AuditRecord, audit_source_id: str, hostname: str, app_name: str = "isonode") -> bytes:
    """One RFC 5424 message, octet-counted (RFC 6587 3.4.1): 'LENGTH SP MESSAGE'."""
    stamp = datetime.fromtimestamp(rec.time, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    message = (f"<{PRI}>1 {stamp} {hostname or '-'} {app_name} {os.getpid()} {MSGID} - "
               f"{audit_xml(rec, audit_source_id)}").encode()
    return f"{len(message)} ".encode() + message


class SyslogForwarder:
    """Call it with a record (AuditTrail's `forward`); a thread sends what is queued, reconnecting."""

    def __init__(self, host: str, port: int, audit_source_id: str, *, tls_context: ssl.SSLContext | None = None,
                 max_queued: int = 10_000, retry_s: float = 2.0) -> None:
        self.host, self.port = host, port
        self.audit_source_id = audit_source_id
        self.tls_context = tls_context
        self.retry_s = retry_s
        self.hostname = socket.gethostname()
        self.dropped = 0
        self._queue: queue.Queue[bytes] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)

    def __call__(self, rec: AuditRecord) -> None:
        frame = syslog_frame(rec, self.audit_source_id, self.hostname)
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # the oldest copy goes; the database keeps the record
                    self.dropped += 1
                except queue.Empty:
                    pass

    def start(self) -> SyslogForwarder:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _run(self) -> None:
        sock: socket.socket | None = None
        pending: bytes | None = None
        while not self._stop.is_set() or pending is not None or not self._queue.empty():
            if pending is None:
                try:
                    pending = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
            try:
                if sock is None:
                    sock = self._connect()
                sock.sendall(pending)
                pending = None
            except (OSError, ssl.SSLError) as exc:
                log_event(logger, "audit.syslog_unreachable", level=logging.WARNING, host=self.host, port=self.port,
                          reason=type(exc).__name__, queued=self._queue.qsize() + 1, dropped=self.dropped)
                if sock is not None:
                    sock.close()
                sock = None
                if self._stop.wait(self.retry_s):
                    break
        if sock is not None:
            sock.close()
