"""What the physician said about a result: accepted, or a segment flagged as wrong with a short reason.

Stored durably in the node's database with the series and the model version that made the result, listed
by `isonode feedback list`, and exported for the model toolchain (`compiler.feedback` reads the export as
the list of series and segments to review).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Literal

from dicom_node.database import Database

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    series_uid TEXT NOT NULL,
    series_version INTEGER NOT NULL,
    mode TEXT NOT NULL,
    result_series_uid TEXT,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'flag')),
    segment TEXT,
    reason TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_job ON feedback (job_id)
"""
EXPORT_FORMAT = "isonode-feedback/1"
MAX_REASON_CHARS = 500
Verdict = Literal["accept", "flag"]


class FeedbackError(ValueError):
    """Feedback that cannot be stored, phrased for the person who gave it."""


@dataclass(frozen=True)
class Feedback:
    id: int
    job_id: int
    series_uid: str
    series_version: int
    mode: str
    result_series_uid: str | None
    model_name: str
    model_version: str
    verdict: str
    segment: str | None
    reason: str
    source: str
    created_at: float


def _feedback(row: sqlite3.Row) -> Feedback:
    return Feedback(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row has no items()


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("feedback", SCHEMA_VERSION, SCHEMA)

    def add(self, job_id: int, verdict: str, segment: str | None, reason: str, *, source: str) -> Feedback:
        """Store feedback on a finished job's result; the segment must be one the result holds."""
        reason = " ".join(reason.split())
        if verdict not in ("accept", "flag"):
            raise FeedbackError("verdict must be 'accept' or 'flag'")
        if len(reason) > MAX_REASON_CHARS:
            raise FeedbackError(f"reason: at most {MAX_REASON_CHARS} characters")
        if verdict == "flag" and not segment:
            raise FeedbackError("flag: name the segment that is wrong")
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "done" or not row["result"]:
                raise FeedbackError(f"job {job_id} has no result to give feedback on")
            result = json.loads(row["result"])
            display = result.get("display") or {}
            names = {s["name"] for s in display.get("segments", [])} or set(result.get("segments", {}))
            if segment is not None and segment not in names:
                raise FeedbackError(f"segment {segment!r} is not in this result")
            model = display.get("model") or {}
            cur = conn.execute(
                "INSERT INTO feedback (job_id, series_uid, series_version, mode, result_series_uid, model_name,"
                " model_version, verdict, segment, reason, source, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, row["series_uid"], row["series_version"], row["mode"], result.get("result_series"),
                 model.get("name", ""), model.get("version", ""), verdict, segment, reason, source, time.time()))
            return _feedback(conn.execute("SELECT * FROM feedback WHERE id = ?", (cur.lastrowid,)).fetchone())

    def list(self, *, job_id: int | None = None, since: float | None = None) -> list[Feedback]:
        sql, params = "SELECT * FROM feedback WHERE 1 = 1", []
        if job_id is not None:
            sql, params = sql + " AND job_id = ?", [*params, job_id]
        if since is not None:
            sql, params = sql + " AND created_at >= ?", [*params, since]
        return [_feedback(r) for r in self.db.connection.execute(sql + " ORDER BY id", params)]


def export_document(items: list[Feedback]) -> dict:
    """The export the model toolchain reads (compiler.feedback): every item, flagged and accepted."""
    return {"format": EXPORT_FORMAT, "exported_at": time.time(), "feedback": [asdict(f) for f in items]}
