"""The audit trail: one append-only record per security-relevant event, in the shape of the DICOM audit
messages of PS3.15 A.5 (the IHE ATNA convention): what happened (event ID, type, action), whether it
worked (outcome), who took part (AE title, address, user) and which objects (patient, study, series,
query). Kept in the node's database, where triggers refuse UPDATE and DELETE, and optionally forwarded
to a syslog collector as the DICOM audit XML (dicom_node.audit_syslog).

The trail may name the patient, as ATNA does, so it is read only by `isonode audit` on the node (and
each reading is itself audited: Audit Log Used); the operational log never names patients.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from dicom_node.database import Database

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events (time);
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
"""

# EventOutcomeIndicator (PS3.15 A.5.1): success, minor failure, serious failure, major failure.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


@dataclass(frozen=True)
class EventKind:
    """A PS3.15 A.5.3 message: Event ID (DCM code), an optional Event Type Code, the Event Action Code."""

    code: str
    meaning: str
    action: str  # C create, R read, U update, D delete, E execute
    type_code: str = ""
    type_meaning: str = ""


EVENTS: dict[str, EventKind] = {
    "application_start": EventKind("110100", "Application Activity", "E", "110120", "Application Start"),
    "application_stop": EventKind("110100", "Application Activity", "E", "110121", "Application Stop"),
    "configuration_loaded": EventKind("110113", "Security Alert", "E", "110129", "Security Configuration"),
    "association_accepted": EventKind("110114", "User Authentication", "E", "110126", "Node Authentication"),
    "association_refused": EventKind("110113", "Security Alert", "E", "110126", "Node Authentication"),
    "instances_received": EventKind("110104", "DICOM Instances Transferred", "C"),
    "query": EventKind("110112", "Query", "E"),
    "retrieve": EventKind("110104", "DICOM Instances Transferred", "R"),
    "results_sent": EventKind("110104", "DICOM Instances Transferred", "R"),
    "web_login": EventKind("110114", "User Authentication", "E", "110122", "Login"),
    "audit_log_used": EventKind("110101", "Audit Log Used", "R"),
}


@dataclass(frozen=True)
class Participant:
    """An active participant (PS3.15 A.5.1): an AE title, a network address, or a user of the web page."""

    user_id: str
    address: str = ""
    is_requestor: bool = False
    role: str = ""  # e.g. "Source", "Destination", "Application" (DCM 110153, 110152, 110150)


@dataclass(frozen=True)
class ParticipantObject:
    """A participant object (PS3.15 A.5.2): a patient, a study, a series, or a query."""

    kind: str  # "patient", "study", "series", "query"
    id: str
    name: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    time: float
    event: str
    outcome: int
    participants: tuple[Participant, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> EventKind:
        return EVENTS[self.event]

    def as_json(self, record_id: int | None = None) -> dict[str, Any]:
        kind = self.kind
        return {
            "id": record_id,
            "time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds"),
            "event": self.event,
            "outcome": self.outcome,
            "event_id": {"code": kind.code, "scheme": "DCM", "meaning": kind.meaning},
            "event_type": {"code": kind.type_code, "scheme": "DCM", "meaning": kind.type_meaning}
            if kind.type_code else None,
            "action": kind.action,
            "participants": [asdict(p) for p in self.participants],
            "objects": [asdict(o) for o in self.objects],
            "detail": self.detail,
        }


def _record_from_row(row: sqlite3.Row) -> AuditRecord:
    body = json.loads(row["record"])
    return AuditRecord(
        time=row["time"], event=row["event"], outcome=row["outcome"],
        participants=tuple(Participant(**p) for p in body.get("participants", [])),
        objects=tuple(ParticipantObject(**o) for o in body.get("objects", [])),
        detail=body.get("detail", {}))


class AuditTrail:
    """Append-only audit records in the node's database. `record` never raises: an audit failure is
    logged (without the record's contents) and the operation it describes goes on."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time,
                 forward: Callable[[AuditRecord], None] | None = None) -> None:
        self.db = db
        self.clock = clock
        self.forward = forward
        db.ensure_schema("audit", SCHEMA_VERSION, SCHEMA)

    def record(self, event: str, *, outcome: int = SUCCESS, participants: Iterable[Participant] = (),
               objects: Iterable[ParticipantObject] = (), **detail: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")  # a programming error, not an input one
        rec = AuditRecord(self.clock(), event, outcome, tuple(participants), tuple(objects), detail)
        body = {"participants": [asdict(p) for p in rec.participants],
                "objects": [asdict(o) for o in rec.objects], "detail": rec.detail}
        try:
            with self.db.transaction() as conn:
                conn.execute("INSERT INTO audit_events (time, event, outcome, record) VALUES (?, ?, ?, ?)",
                             (rec.time, rec.event, rec.outcome, json.dumps(body, default=str)))
        except Exception:
            logger.exception("audit.not_recorded", extra={"fields": {"audit_event": event}})
            return
        if self.forward is not None:
            try:
                self.forward(rec)
            except Exception:
                logger.exception("audit.not_forwarded", extra={"fields": {"audit_event": event}})

    def list(self, *, since: float | None = None, limit: int | None = None) -> list[tuple[int, AuditRecord]]:
        sql, params = "SELECT * FROM audit_events", []
        if since is not None:
            sql, params = sql + " WHERE time >= ?", [since]
        sql += " ORDER BY id"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, limit]
        return [(row["id"], _record_from_row(row)) for row in self.db.connection.execute(sql, params)]


def patient_and_study(conn: sqlite3.Connection, series_uid: str) -> tuple[ParticipantObject, ...]:
    """The patient and study of a catalogued series, as audit participant objects (empty if unknown)."""
    row = conn.execute(
        "SELECT st.patient_id, st.patient_name, st.study_uid FROM catalog_series AS cs"
        " JOIN catalog_studies AS st ON st.study_uid = cs.study_uid WHERE cs.series_uid = ?",
        (series_uid,)).fetchone()
    if row is None:
        return ()
    return (ParticipantObject("patient", row["patient_id"], row["patient_name"]),
            ParticipantObject("study", row["study_uid"]))
