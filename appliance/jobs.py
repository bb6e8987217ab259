"""Durable job queue in the node's SQLite database.

A job is claimed with a lease. The worker renews the lease while it works; if the process dies, the lease
expires and another claim takes the job again. Each claim counts as an attempt, so a job that kills its
worker every time (a poison series) ends `failed` instead of looping forever.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicom_node.clock import Clock
from dicom_node.database import Database

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_version INTEGER NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_error TEXT,
    result TEXT,
    UNIQUE (kind, series_uid, series_version, mode)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE TABLE IF NOT EXISTS job_progress (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    stages TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_interruptions (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    count INTEGER NOT NULL
)
"""

JOB_STATES = ("queued", "running", "done", "failed")
MAX_INTERRUPTIONS = 20  # node crashes during one job that do not count as attempts
PROCESS_SERIES = "process_series"

# The next job to run: queued and due, or running with an expired lease. Previews go first, across
# series (an ER preview must not wait behind another study's full run), and a series version's full job
# waits while its preview job is still queued or running, so the preview reaches the PACS first.
CLAIMABLE = """
SELECT * FROM jobs WHERE ((state = 'queued' AND not_before <= ?) OR (state = 'running' AND lease_expires_at < ?))
  AND NOT (mode != 'preview' AND EXISTS (
      SELECT 1 FROM jobs AS p WHERE p.kind = jobs.kind AND p.series_uid = jobs.series_uid
        AND p.series_version = jobs.series_version AND p.mode = 'preview' AND p.state IN ('queued', 'running')))
ORDER BY CASE mode WHEN 'preview' THEN 0 ELSE 1 END, id LIMIT 1
"""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    series_uid: str
    series_version: int
    mode: str
    state: str
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: float | None
    last_error: str | None
    result: dict[str, Any] | None


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        series_uid=row["series_uid"],
        series_version=row["series_version"],
        mode=row["mode"],
        state=row["state"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        last_error=row["last_error"],
        result=json.loads(row["result"]) if row["result"] else None,
    )


class LeaseLostError(RuntimeError):
    """The job's lease expired and the job may now belong to another worker."""


class JobQueue:
    """`clock` times leases and backoff: the node passes its steady clock, so a wall-clock step neither
    expires every lease nor holds a retry back."""

    def __init__(self, db: Database, *, max_attempts: int = 3, retry_backoff_s: float = 10.0,
                 clock: Clock = time.time) -> None:
        self.db = db
        self.clock = clock
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        db.ensure_schema("jobs", SCHEMA_VERSION, SCHEMA)

    @staticmethod
    def enqueue_in(conn: sqlite3.Connection, *, kind: str, series_uid: str, series_version: int, mode: str,
                   max_attempts: int, now: float) -> int | None:
        """Add a job inside the caller's transaction (so completion and enqueue commit together)."""
        cur = conn.execute(
            "INSERT INTO jobs (kind, series_uid, series_version, mode, state, max_attempts, not_before,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)"
            " ON CONFLICT (kind, series_uid, series_version, mode) DO NOTHING",
            (kind, series_uid, series_version, mode, max_attempts, now, now, now),
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    def enqueue(self, *, kind: str, series_uid: str, series_version: int, mode: str = "full") -> int | None:
        now = self.clock()
        with self.db.transaction() as conn:
            return self.enqueue_in(conn, kind=kind, series_uid=series_uid, series_version=series_version,
                                   mode=mode, max_attempts=self.max_attempts, now=now)

    def claim(self, owner: str, lease_s: float, now: float | None = None) -> Job | None:
        """Take the oldest runnable job (queued and due, or running with an expired lease)."""
        now = self.clock() if now is None else now
        with self.db.transaction() as conn:
            while True:
                row = conn.execute(CLAIMABLE, (now, now)).fetchone()
                if row is None:
                    return None
                if row["attempts"] >= row["max_attempts"]:
                    conn.execute(
                        "UPDATE jobs SET state = 'failed', lease_owner = NULL, lease_expires_at = NULL,"
                        " updated_at = ?, last_error = COALESCE(last_error, ?) WHERE id = ?",
                        (now, f"gave up after {row['attempts']} attempts (worker lost its lease)", row["id"]),
                    )
                    continue
                conn.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?,"
                    " lease_expires_at = ?, updated_at = ? WHERE id = ?",
                    (owner, now + lease_s, now, row["id"]),
                )
                return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def _update_owned(self, job_id: int, owner: str, sql: str, params: tuple[Any, ...],
                      also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        with self.db.transaction() as conn:
            cur = conn.execute(sql + " WHERE id = ? AND state = 'running' AND lease_owner = ?",
                               (*params, job_id, owner))
            if cur.rowcount != 1:
                raise LeaseLostError(f"job {job_id} is no longer leased by {owner}")
            if also is not None:
                also(conn)

    def renew(self, job_id: int, owner: str, lease_s: float) -> None:
        now = self.clock()
        self._update_owned(job_id, owner, "UPDATE jobs SET lease_expires_at = ?, updated_at = ?",
                           (now + lease_s, now))

    def report_stages(self, job_id: int, owner: str, stages: list[dict[str, Any]]) -> None:
        """Record the running attempt's stages (name, started_at, seconds) for the progress display."""
        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO job_progress (job_id, attempt, stages) SELECT id, attempts, ? FROM jobs"
                         " WHERE id = ? ON CONFLICT (job_id) DO UPDATE SET attempt = excluded.attempt,"
                         " stages = excluded.stages", (json.dumps(stages), job_id))

        self._update_owned(job_id, owner, "UPDATE jobs SET updated_at = ?", (self.clock(),), upsert)

    def complete(self, job_id: int, owner: str, result: dict[str, Any],
                 also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Mark the job done; `also` runs in the same transaction (the outbox enqueues the job's deliveries
        there, so a crash leaves either a running job or a done job with all its deliveries)."""
        self._update_owned(
            job_id, owner,
            "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = ?,"
            " result = ?, last_error = NULL",
            (self.clock(), json.dumps(result)), also,
        )

    def fail(self, job_id: int, owner: str, error: str, *, retryable: bool) -> str:
        """Record a failure; a retryable one goes back to the queue with backoff until attempts run out."""
        now = self.clock()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?",
                               (job_id, owner)).fetchone()
            if row is None:
                raise LeaseLostError(f"job {job_id} is no longer leased by {owner}")
            state = "queued" if retryable and row["attempts"] < row["max_attempts"] else "failed"
            backoff = self.retry_backoff_s * (2 ** max(row["attempts"] - 1, 0))
            conn.execute(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires_at = NULL, not_before = ?,"
                " updated_at = ?, last_error = ? WHERE id = ?",
                (state, now + backoff, now, error[:2000], job_id),
            )
            return state

    def release(self, job_id: int, owner: str) -> None:
        """Give an interrupted job back without counting the attempt (clean shutdown)."""
        now = self.clock()
        self._update_owned(
            job_id, owner,
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), lease_owner = NULL,"
            " lease_expires_at = NULL, not_before = ?, updated_at = ?",
            (now, now),
        )

    def done_result_dirs(self) -> list[str]:
        """Result folders (relative to the results directory) of the jobs that finished."""
        rows = self.db.connection.execute(
            "SELECT DISTINCT json_extract(result, '$.result_dir') AS d FROM jobs WHERE state = 'done'")
        return [r["d"] for r in rows if r["d"]]

    def requeue_running(self) -> int:
        """At start-up of the only node on this database: every running job was orphaned by a crash (a
        kill -9, a power cut) and goes back to the queue with its attempt given back, so crashes do not use
        up a job's retries; past MAX_INTERRUPTIONS crashes during one job they count again, so a series
        that takes the node down every time still ends `failed` instead of crash-looping it."""
        now = self.clock()
        with self.db.transaction() as conn:
            running = [r["id"] for r in conn.execute("SELECT id FROM jobs WHERE state = 'running'")]
            for job_id in running:
                conn.execute("INSERT INTO job_interruptions (job_id, count) VALUES (?, 1)"
                             " ON CONFLICT (job_id) DO UPDATE SET count = count + 1", (job_id,))
                (count,) = conn.execute("SELECT count FROM job_interruptions WHERE job_id = ?", (job_id,)).fetchone()
                conn.execute(
                    "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - ?, 0), lease_owner = NULL,"
                    " lease_expires_at = NULL, not_before = ?, updated_at = ? WHERE id = ?",
                    (int(count <= MAX_INTERRUPTIONS), now, now, job_id))
            return len(running)

    def postpone(self, job_id: int, owner: str, delay_s: float, reason: str) -> None:
        """Give the job back for later without using up its attempt: what stopped it (a full disk) is
        the node's state, not the series', and passes."""
        now = self.clock()
        self._update_owned(
            job_id, owner,
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), lease_owner = NULL,"
            " lease_expires_at = NULL, not_before = ?, updated_at = ?, last_error = ?",
            (now + delay_s, now, reason))

    def retry(self, job_id: int) -> bool:
        """Operator action: put a failed job back in the queue with fresh attempts, due at once (0, not
        'now': the CLI's clock may be ahead of the running node's after a wall-clock step)."""
        now = self.clock()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, not_before = 0, updated_at = ?"
                " WHERE id = ? AND state = 'failed'",
                (now, job_id),
            )
            return cur.rowcount == 1

    def get(self, job_id: int) -> Job | None:
        row = self.db.connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list(self, *, state: str | None = None, limit: int = 100) -> list[Job]:
        sql, params = "SELECT * FROM jobs", ()
        if state is not None:
            sql, params = sql + " WHERE state = ?", (state,)
        rows = self.db.connection.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for row in self.db.connection.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts
